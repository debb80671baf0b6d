"""Drift inside a tenant is coalesced: a burst of events is one repair, and a tenant is
repaired at most once per interval however fast someone edits Haku's objects there."""

from __future__ import annotations

import asyncio
import itertools

from haku.controller.tenant_watches import TenantWatches


async def test_a_burst_of_drift_is_one_repair_and_repairs_are_spaced() -> None:
    fired: list[tuple[tuple[str, str], float]] = []
    loop = asyncio.get_running_loop()
    watches = TenantWatches(lambda key: fired.append((key, loop.time())),
                            coalesce=0.05, min_interval=0.3)
    start = loop.time()
    for _ in range(100):
        watches.drifted(("ns", "a"))
    watches.drifted(("ns", "b"))
    await asyncio.sleep(0.15)
    assert sorted(k for k, _ in fired) == [("ns", "a"), ("ns", "b")]  # one each
    # An edit loop right after the repair: the next repair waits for min_interval.
    for _ in range(50):
        watches.drifted(("ns", "a"))
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.4)
    times = [t for k, t in fired if k == ("ns", "a")]
    # 51 events for "a", but only one repair per 0.3 s of loop time.
    assert 2 <= len(times) <= 1 + (times[-1] - times[0]) / 0.3 + 1e-9
    assert times[0] - start >= 0.05
    assert all(b - a >= 0.3 - 1e-3 for a, b in itertools.pairwise(times))


async def test_stopping_a_tenant_cancels_its_pending_repair() -> None:
    fired: list[tuple[str, str]] = []
    watches = TenantWatches(fired.append, coalesce=0.05, min_interval=0.1)
    watches.drifted(("ns", "a"))
    await watches.stop(("ns", "a"))
    await asyncio.sleep(0.1)
    assert fired == []
