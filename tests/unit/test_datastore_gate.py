"""A DataStore is changed by at most ``concurrency`` reconciles at once; one that finds no
free slot gives its worker back (Wait, DataStoreBusy) instead of queueing behind a slow or
black-holed server."""

from __future__ import annotations

import asyncio

import pytest

from haku.controller.drivers import DriverCache
from haku.controller.pipeline import Wait


async def test_a_full_datastore_sends_the_next_tenant_away_and_frees_up() -> None:
    cache = DriverCache(None, concurrency=2)  # type: ignore[arg-type]  (no API reads)
    release = asyncio.Event()
    inside = 0

    async def hold() -> None:
        nonlocal inside
        async with cache.gate("slow"):
            inside += 1
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    for _ in range(500):  # both take their slot (a few loop turns; bounded)
        if inside == 2:
            break
        await asyncio.sleep(0.01)
    assert inside == 2
    with pytest.raises(Wait) as busy:
        async with cache.gate("slow", wait=0.05):
            pass
    assert busy.value.condition.reason == "DataStoreBusy"
    async with cache.gate("other", wait=0.05):  # per DataStore: another is unaffected
        pass
    release.set()
    await asyncio.gather(*holders)
    async with cache.gate("slow", wait=0.05):  # slots came back
        pass
