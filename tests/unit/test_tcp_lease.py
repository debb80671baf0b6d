"""Leader election when the API server cannot be reached at all (not just refusing): a failed
renewal, retried until the lease would run out, then LostLeadership; never a silent end. And
expiry by observed time: only how long this candidate saw the Lease record unchanged, by its own
monotonic clock, decides; the holder's renewTime (another machine's clock) never does."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
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


# --------------------------------------------------------------- expiry by observed time


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LeaseStore:
    """An in-memory Lease with resourceVersions: a write carrying a stale one gets 409."""

    def __init__(self) -> None:
        self.lease: Lease | None = None
        self.version = 0
        self.writes = 0

    def _copy(self) -> Lease:
        assert self.lease is not None
        return Lease.from_dict(self.lease.to_dict())  # type: ignore[no-any-return]

    @staticmethod
    def _error(code: int) -> Exception:
        from lightkube import ApiError
        return ApiError(response=httpx2.Response(
            code, json={"code": code, "message": str(code)},
            request=httpx2.Request("GET", "https://x")))

    def put(self, holder: str | None, renew: datetime | None, duration: int = 10) -> None:
        """Someone else writes the Lease (``renew`` as their clock says)."""
        self.version += 1
        self.lease = Lease(metadata=ObjectMeta(name="lease", namespace="ns",
                                               resourceVersion=str(self.version)),
                           spec=LeaseSpec(holderIdentity=holder, renewTime=renew,
                                          acquireTime=renew, leaseDurationSeconds=duration))

    async def get(self, _kind: Any, name: str, namespace: str) -> Lease:
        if self.lease is None:
            raise self._error(404)
        return self._copy()

    async def create(self, lease: Lease) -> Lease:
        if self.lease is not None:
            raise self._error(409)
        self.version += 1
        lease.metadata.resourceVersion = str(self.version)
        self.lease, self.writes = lease, self.writes + 1
        return self._copy()

    async def replace(self, lease: Lease) -> Lease:
        assert self.lease is not None
        if lease.metadata.resourceVersion != self.lease.metadata.resourceVersion:
            raise self._error(409)
        self.version += 1
        lease.metadata.resourceVersion = str(self.version)
        self.lease, self.writes = lease, self.writes + 1
        return self._copy()


def candidate(store: LeaseStore, clock: Clock, identity: str = "me") -> LeaseElector:
    return LeaseElector(store, "ns", "lease", identity,  # type: ignore[arg-type]
                        lease_duration=10.0, renew_deadline=6.0, retry_period=0.01,
                        clock=clock)


FAR_PAST = datetime(2001, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(2099, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("renew", [FAR_PAST, FAR_FUTURE, None],
                         ids=["renewTime-far-past", "renewTime-far-future", "no-renewTime"])
async def test_expiry_counts_only_how_long_the_record_was_seen_unchanged(
        renew: datetime | None) -> None:
    store, clock = LeaseStore(), Clock()
    store.put("other", renew)
    me = candidate(store, clock)
    assert not await me._try()  # first sight: the lease is live, whatever renewTime says
    clock.now += 9.9
    assert not await me._try()  # unchanged for 9.9 s of our time: still the other's
    assert store.lease is not None and store.lease.spec.holderIdentity == "other"
    clock.now += 0.2
    assert await me._try()  # unchanged for 10.1 s > leaseDurationSeconds: taken
    assert store.lease.spec.holderIdentity == "me"
    assert store.lease.spec.leaseTransitions == 1
    assert me.fence.held


async def test_a_change_of_the_record_restarts_the_count() -> None:
    store, clock = LeaseStore(), Clock()
    store.put("other", FAR_PAST)
    me = candidate(store, clock)
    assert not await me._try()
    clock.now += 8
    store.put("other", FAR_PAST)  # renewed: only the resourceVersion tells (same renewTime)
    assert not await me._try()
    clock.now += 8  # 16 s since first seen, but only 8 s since the last change
    assert not await me._try()
    clock.now += 2.5
    assert await me._try()


async def test_a_holder_that_renews_is_never_taken_over_even_with_a_stale_clock() -> None:
    store, clock = LeaseStore(), Clock()
    store.put("other", FAR_PAST)
    me = candidate(store, clock)
    for _ in range(10):
        assert not await me._try()
        clock.now += 5
        store.put("other", FAR_PAST)  # its clock is decades behind; it still renews
    assert store.lease is not None and store.lease.spec.holderIdentity == "other"
    assert not me.fence.held


async def test_a_released_lease_is_taken_at_once() -> None:
    store, clock = LeaseStore(), Clock()
    store.put(None, None)
    me = candidate(store, clock)
    assert await me._try()


async def test_two_candidates_racing_for_an_expired_lease_cannot_both_win() -> None:
    store, clock = LeaseStore(), Clock()
    store.put("dead", FAR_FUTURE)
    a, b = candidate(store, clock, "a"), candidate(store, clock, "b")
    assert not await a._try() and not await b._try()
    clock.now += 11
    # Both read the same expired record; the second write carries a stale resourceVersion.
    real_replace = store.replace
    reads: list[Lease] = []

    async def replace_after_both_read(lease: Lease) -> Lease:
        reads.append(lease)
        if len(reads) == 1:
            await asyncio.sleep(0.05)
        return await real_replace(lease)

    store.replace = replace_after_both_read  # type: ignore[method-assign]
    won = await asyncio.gather(a._try(), b._try())
    assert sorted(won) == [False, True]
    assert store.lease is not None
    assert store.lease.spec.holderIdentity == ("a" if won[0] else "b")


async def test_the_fence_is_renewed_from_before_the_request_and_expires_locally() -> None:
    store, clock = LeaseStore(), Clock()
    me = candidate(store, clock)
    real_create = store.create

    async def slow_create(lease: Lease) -> Lease:
        clock.now += 2.0  # the request takes 2 s
        return await real_create(lease)

    store.create = slow_create  # type: ignore[method-assign]
    started = clock.now
    assert await me._try()
    assert me.fence.remaining() == pytest.approx(started + 6.0 - clock.now)  # 4 s, not 6
    clock.now = started + 5.9
    me.fence.check()
    clock.now = started + 6.0
    with pytest.raises(LostLeadership):
        me.fence.check()


async def test_hold_gives_up_at_once_when_another_holder_is_seen() -> None:
    store, clock = LeaseStore(), Clock()
    me = candidate(store, clock)
    await me.acquire()
    store.put("usurper", FAR_PAST)  # e.g. we were paused and it took over
    with pytest.raises(LostLeadership, match="usurper holds it now"):
        await asyncio.wait_for(me.hold(), 2)
    assert not me.fence.held
    with pytest.raises(LostLeadership):
        me.fence.check()
    writes = store.writes
    await me.release()  # not ours any more: left alone
    assert store.writes == writes and store.lease is not None
    assert store.lease.spec.holderIdentity == "usurper"


async def test_hold_after_a_pause_longer_than_the_deadline_does_not_renew() -> None:
    """Like SIGSTOP/SIGCONT: the local clock moved past the renew deadline while nothing ran;
    even though no one took the Lease, the holder must not carry on as if nothing happened."""
    store, clock = LeaseStore(), Clock()
    me = candidate(store, clock)
    await me.acquire()
    writes = store.writes
    clock.now += 6.5
    with pytest.raises(LostLeadership, match="not renewed within"):
        await asyncio.wait_for(me.hold(), 2)
    assert store.writes == writes


async def test_release_closes_the_fence_first() -> None:
    store, clock = LeaseStore(), Clock()
    me = candidate(store, clock)
    await me.acquire()
    assert me.fence.held
    await me.release()
    assert not me.fence.held
    assert store.lease is not None and store.lease.spec.holderIdentity is None


def test_the_renew_deadline_must_be_shorter_than_the_lease() -> None:
    with pytest.raises(ValueError, match="shorter than the lease"):
        LeaseElector(None, "ns", "lease", "me",  # type: ignore[arg-type]
                     lease_duration=5.0, renew_deadline=5.0)
