"""Leader election when the API server cannot be reached at all (not just refusing): a failed
renewal, retried until the lease would run out, then LostLeadership; never a silent end."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from haku.controller.lease import LeaseElector, LostLeadership


class FlakyClient:
    """An in-memory Lease store whose calls fail with transport errors while ``down``."""

    def __init__(self) -> None:
        self.lease: Lease | None = None
        self.down = False
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise httpx2.ConnectError("connection refused")

    async def get(self, _kind: Any, name: str, namespace: str) -> Lease:
        self._check()
        if self.lease is None:
            from lightkube import ApiError
            raise ApiError(response=httpx2.Response(
                404, json={"code": 404, "message": "not found"},
                request=httpx2.Request("GET", "https://x")))
        return Lease(metadata=ObjectMeta(name=name, namespace=namespace),
                     spec=LeaseSpec(**self.lease.spec.to_dict()) if self.lease.spec else None)

    async def create(self, lease: Lease) -> Lease:
        self._check()
        self.lease = lease
        return lease

    async def replace(self, lease: Lease) -> Lease:
        self._check()
        self.lease = lease
        return lease


def elector(client: FlakyClient) -> LeaseElector:
    return LeaseElector(client, "ns", "lease", "me",  # type: ignore[arg-type]
                        lease_duration=1.0, renew_deadline=0.3, retry_period=0.05)


async def test_transport_errors_past_the_deadline_lose_leadership() -> None:
    client = FlakyClient()
    e = elector(client)
    await e.acquire()
    client.down = True
    with pytest.raises(LostLeadership):
        await asyncio.wait_for(e.hold(), 5)
    assert client.calls > 3  # it retried before giving up


async def test_a_short_outage_is_ridden_out() -> None:
    client = FlakyClient()
    e = elector(client)
    await e.acquire()
    hold = asyncio.create_task(e.hold())
    client.down = True
    await asyncio.sleep(0.15)  # shorter than the renew deadline
    client.down = False
    await asyncio.sleep(0.3)
    assert not hold.done()  # still leading, no exception
    hold.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hold


async def test_acquire_keeps_trying_through_transport_errors() -> None:
    client = FlakyClient()
    client.down = True
    e = elector(client)
    task = asyncio.create_task(e.acquire())
    await asyncio.sleep(0.2)
    assert not task.done() and e.reachable is False
    client.down = False
    await asyncio.wait_for(task, 2)
    assert e.reachable is True
    await e.release()  # with the API back, releasing works
    assert client.lease is not None and client.lease.spec.holderIdentity is None
