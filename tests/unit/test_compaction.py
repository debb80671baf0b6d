"""The operator's compaction loop (haku.controller.compaction) with in-process stand-ins for
the API server and the drivers; the rounds themselves run on the real etcd in
tests/datastore/test_compaction.py."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from haku.api.resources import DataStore
from haku.controller.compaction import EtcdCompactor
from haku.controller.fencing import Fence, LostLeadership
from haku.datastore import DataStoreError
from haku.datastore.etcd import CompactRound, EtcdDriver


class FakeEtcd(EtcdDriver):
    def __init__(self, name: str, fail: bool = False) -> None:  # no connection
        self.name, self.fail = name, fail
        self.rounds: list[CompactRound] = []

    async def compact_round(self, last: CompactRound) -> CompactRound:
        self.rounds.append(last)
        if self.fail:
            raise DataStoreError(f"{self.name}: unreachable")
        return CompactRound(version=last.version + 1, revision=last.revision + 10,
                            compacted=last.revision)


class FakeDrivers:
    def __init__(self, drivers: dict[str, Any]) -> None:
        self.drivers = drivers

    @contextlib.asynccontextmanager
    async def lease(self, datastore: Any) -> AsyncIterator[Any]:
        yield self.drivers[datastore.metadata.name]


class FakeClient:
    def __init__(self, stores: list[Any]) -> None:
        self.stores = stores

    async def list(self, kind: Any) -> AsyncIterator[Any]:
        assert kind is DataStore
        for s in self.stores:
            yield s


def store(name: str, driver: str = "etcd", deleting: bool = False) -> Any:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return DataStore.from_dict({"apiVersion": "haku.dev/v1alpha1", "kind": "DataStore",
                                "metadata": meta,
                                "spec": {"driver": driver, "endpoints": ["x:1"]}})


def compactor(stores: list[Any], drivers: dict[str, Any], fence: Fence | None = None,
              interval: float = 300.0) -> EtcdCompactor:
    return EtcdCompactor(FakeClient(stores), FakeDrivers(drivers),  # type: ignore[arg-type]
                         fence or Fence.always(), interval)


async def test_each_etcd_datastore_gets_rounds_that_carry_what_the_last_one_saw() -> None:
    a, b = FakeEtcd("a"), FakeEtcd("b")
    c = compactor([store("a"), store("b"), store("pg", "postgresql"),
                   store("gone", deleting=True)], {"a": a, "b": b})
    await c.round()
    await c.round()
    assert a.rounds == [CompactRound(), CompactRound(1, 10, 0)]
    assert b.rounds == a.rounds
    assert c.last["a"] == CompactRound(2, 20, 10)
    assert set(c.last) == {"a", "b"}  # no round for postgresql nor a DataStore being deleted


async def test_a_failing_datastore_starts_afresh_and_holds_up_no_other() -> None:
    bad, good = FakeEtcd("bad", fail=True), FakeEtcd("good")
    c = compactor([store("bad"), store("good")], {"bad": bad, "good": good})
    c.last["bad"] = CompactRound(5, 50, 40)
    await c.round()
    assert "bad" not in c.last and good.rounds == [CompactRound()]
    bad.fail = False
    await c.round()
    assert bad.rounds == [CompactRound(5, 50, 40), CompactRound()]  # afresh
    assert c.last == {"bad": CompactRound(1, 10, 0), "good": CompactRound(2, 20, 10)}


async def test_a_deleted_datastore_is_forgotten() -> None:
    a = FakeEtcd("a")
    stores = [store("a")]
    c = compactor(stores, {"a": a})
    await c.round()
    stores.clear()
    assert await c.round() == {}


async def test_only_the_leader_compacts() -> None:
    a = FakeEtcd("a")
    fence = Fence(renew_deadline=10.0)  # never renewed: not the leader
    c = compactor([store("a")], {"a": a}, fence=fence)
    with pytest.raises(LostLeadership):
        await c.round()
    assert a.rounds == []


async def test_run_keeps_its_beat_through_a_round_it_may_not_run_and_stops_on_stop() -> None:
    a = FakeEtcd("a")
    fence = Fence(renew_deadline=10.0)
    c = compactor([store("a")], {"a": a}, fence=fence, interval=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop))
    await asyncio.sleep(0.05)  # rounds refused (not leading): the loop goes on
    assert not task.done() and a.rounds == []
    fence.renewed(fence.clock())
    for _ in range(200):
        if a.rounds:
            break
        await asyncio.sleep(0.01)
    assert a.rounds, "no round after the fence opened"
    stop.set()
    await asyncio.wait_for(task, 1.0)


async def test_interval_zero_runs_no_round() -> None:
    a = FakeEtcd("a")
    c = compactor([store("a")], {"a": a}, interval=0)
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop))
    await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 1.0)
    assert a.rounds == []


async def test_a_round_that_overran_skips_the_beats_it_missed() -> None:
    """Rounds back to back would compact to a revision seen a moment before: no history."""
    starts: list[float] = []

    class Slow(FakeEtcd):
        async def compact_round(self, last: CompactRound) -> CompactRound:
            starts.append(asyncio.get_running_loop().time())
            if len(starts) == 1:
                await asyncio.sleep(0.35)  # three beats and a half
            return await super().compact_round(last)

    c = compactor([store("a")], {"a": Slow("a")}, interval=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop))
    for _ in range(300):
        if len(starts) >= 3:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 1.0)
    assert len(starts) >= 3
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.35 and min(gaps) >= 0.05, gaps
