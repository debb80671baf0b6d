"""The work queue's guarantees, on a real event loop; the controller's behaviour when
leadership is lost (in-flight reconciles cancelled at once) and at a clean stop (drained, with
a bound); a watch is ready only once its initial list arrived."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest

from haku.controller.fencing import Fence
from haku.controller.lease import LostLeadership
from haku.controller.runtime import Controller, Result, Watcher, WorkQueue, key_of


async def test_a_key_is_never_worked_on_twice_at_once() -> None:
    q = WorkQueue()
    q.add(("ns", "a"))
    q.add(("ns", "a"))  # deduplicated while waiting
    assert len(q) == 1
    key = await q.get()
    assert key == ("ns", "a")
    q.add(("ns", "a"))  # arrives while in progress: held back, not handed out
    assert q._ready.empty()
    q.done(("ns", "a"))
    assert await asyncio.wait_for(q.get(), 1) == ("ns", "a")


async def test_failures_back_off_exponentially_and_success_resets() -> None:
    q = WorkQueue(base_delay=1.0, max_delay=5.0)
    delays = [q.add_rate_limited(("ns", "a")) for _ in range(5)]
    assert [round(d) for d in delays] == [1, 2, 4, 5, 5]
    assert q.failures(("ns", "a")) == 5
    q.forget(("ns", "a"))
    assert q.failures(("ns", "a")) == 0
    q.shutdown(1)


async def test_add_after_keeps_the_earliest_wakeup() -> None:
    q = WorkQueue()
    q.add_after(("ns", "a"), 0.05)
    q.add_after(("ns", "a"), 10)
    assert await asyncio.wait_for(q.get(), 1) == ("ns", "a")


async def test_controller_retries_failures_and_honours_requeue() -> None:
    seen: list[str] = []

    async def reconcile(key: tuple[str, str]) -> Result:
        seen.append(key[1])
        if key[1] == "flaky" and seen.count("flaky") < 3:
            raise RuntimeError("not yet")
        if key[1] == "again" and seen.count("again") < 2:
            return Result(requeue_after=0.05)
        return Result()

    c = Controller("test", reconcile, workers=2, resync_every=3600)
    c.queue.base_delay = 0.01
    workers = [asyncio.create_task(c._worker(i)) for i in range(2)]
    c.observe("ADDED", [("ns", "flaky"), ("ns", "again"), ("ns", "ok")], parent=True)
    for _ in range(100):
        if seen.count("flaky") == 3 and seen.count("again") == 2:
            break
        await asyncio.sleep(0.02)
    c.queue.shutdown(2)
    await asyncio.gather(*workers)
    assert seen.count("flaky") == 3 and seen.count("again") == 2 and seen.count("ok") == 1
    assert c.known == {("ns", "flaky"), ("ns", "again"), ("ns", "ok")}
    c.observe("DELETED", [("ns", "ok")], parent=True)
    assert ("ns", "ok") not in c.known


def test_status_only_updates_do_not_requeue() -> None:
    from types import SimpleNamespace

    from haku.controller.runtime import SpecChanges

    def obj(generation: int, deleting: bool = False) -> SimpleNamespace:
        return SimpleNamespace(metadata=SimpleNamespace(
            namespace="ns", name="t", generation=generation, finalizers=["f"],
            deletionTimestamp="now" if deleting else None))

    changes = SpecChanges()
    assert changes("ADDED", obj(1)) == [("ns", "t")]
    assert changes("MODIFIED", obj(1)) == []  # e.g. the controller's own status write
    assert changes("MODIFIED", obj(2)) == [("ns", "t")]  # the spec changed
    assert changes("MODIFIED", obj(2, deleting=True)) == [("ns", "t")]
    assert changes("DELETED", obj(2, deleting=True)) == [("ns", "t")]
    assert changes("ADDED", obj(2)) == [("ns", "t")]  # after a watch restart: always


# ------------------------------------------------------------- leadership and shutdown


class Reconciles:
    """Reconciles that block until released, recording how each ended."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, key: tuple[str, str]) -> Result:
        self.started.append(key[1])
        try:
            if key[1] == "fenced-write":
                await asyncio.sleep(0.05)
                raise LostLeadership("not the leader")  # what a fenced request raises
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(key[1])
            raise
        self.finished.append(key[1])
        return Result()

    async def until_started(self, n: int) -> None:
        for _ in range(200):
            if len(self.started) >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"only {self.started} started")


def controller(r: Reconciles, fence: Fence | None = None, workers: int = 3,
               drain_timeout: float = 30.0) -> Controller:
    return Controller("test", r, workers=workers, resync_every=3600, fence=fence,
                      drain_timeout=drain_timeout)


async def test_a_fenced_write_cancels_every_reconcile_in_flight_at_once() -> None:
    r = Reconciles()
    c = controller(r)
    run = asyncio.create_task(c.run(None, [], []))  # type: ignore[arg-type]
    c.observe("ADDED", [("ns", "a"), ("ns", "b")])
    await r.until_started(2)
    c.observe("ADDED", [("ns", "fenced-write"), ("ns", "later")])
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(LostLeadership):
        await asyncio.wait_for(run, 5)
    assert loop.time() - began < 1.0  # not the 30 s drain
    assert sorted(r.cancelled) == ["a", "b"] and r.finished == []
    assert "later" not in r.started


async def test_abort_cancels_reconciles_in_flight_even_during_a_drain() -> None:
    r = Reconciles()
    c = controller(r)
    run = asyncio.create_task(c.run(None, [], []))  # type: ignore[arg-type]
    c.observe("ADDED", [("ns", "a"), ("ns", "b")])
    await r.until_started(2)
    run.cancel()  # a clean stop: they may finish ...
    await asyncio.sleep(0.1)
    assert not run.done() and r.cancelled == []
    c.abort()  # ... until the Lease is lost meanwhile
    await asyncio.wait_for(asyncio.gather(run, return_exceptions=True), 1)
    assert sorted(r.cancelled) == ["a", "b"]


async def test_abort_while_running_raises_lost_leadership() -> None:
    r = Reconciles()
    c = controller(r)
    run = asyncio.create_task(c.run(None, [], []))  # type: ignore[arg-type]
    c.observe("ADDED", [("ns", "a")])
    await r.until_started(1)
    c.abort()
    with pytest.raises(LostLeadership):
        await asyncio.wait_for(run, 1)
    assert r.cancelled == ["a"]


async def test_no_reconcile_starts_without_the_lease() -> None:
    r = Reconciles()
    clock = [0.0]
    fence = Fence(5.0, lambda: clock[0])
    fence.renewed(0.0)
    c = controller(r, fence=fence, workers=1)
    run = asyncio.create_task(c.run(None, [], []))  # type: ignore[arg-type]
    c.observe("ADDED", [("ns", "a")])
    await r.until_started(1)
    clock[0] = 5.0  # the Lease was not renewed in time
    c.observe("ADDED", [("ns", "b")])
    r.release.set()
    with pytest.raises(LostLeadership):
        await asyncio.wait_for(run, 1)
    assert r.started == ["a"] and r.finished == ["a"]


async def test_a_clean_stop_takes_no_new_key_and_lets_reconciles_in_flight_finish() -> None:
    r = Reconciles()
    c = controller(r, workers=2)
    run = asyncio.create_task(c.run(None, [], []))  # type: ignore[arg-type]
    c.observe("ADDED", [("ns", "a"), ("ns", "b"), ("ns", "queued")])
    await r.until_started(2)
    run.cancel()
    await asyncio.sleep(0.1)
    r.release.set()
    await asyncio.gather(run, return_exceptions=True)
    assert sorted(r.finished) == ["a", "b"] and r.cancelled == []
    assert "queued" not in r.started  # waiting keys are not handed out once stopping


async def test_the_drain_is_bounded() -> None:
    r = Reconciles()
    c = controller(r, drain_timeout=0.2)
    run = asyncio.create_task(c.run(None, [], []))  # type: ignore[arg-type]
    c.observe("ADDED", [("ns", "slow")])
    await r.until_started(1)
    run.cancel()
    began = asyncio.get_running_loop().time()
    await asyncio.gather(run, return_exceptions=True)
    assert 0.15 < asyncio.get_running_loop().time() - began < 1.0
    assert r.cancelled == ["slow"]


class ListThenWatch:
    """A client whose list answers once ``listed`` is set; the watch then blocks."""

    def __init__(self) -> None:
        self.listed = asyncio.Event()
        self.fail_list = True
        self.watched_from: list[str | None] = []

    def list(self, *_: Any, **__: Any) -> Any:
        client = self

        class Listing:
            resourceVersion = "41"

            async def __aiter__(self) -> AsyncIterator[Any]:
                await client.listed.wait()
                if client.fail_list:
                    client.fail_list = False
                    raise httpx2.ConnectError("connection refused")
                yield SimpleNamespace(metadata=SimpleNamespace(namespace="ns", name="t"))

        return Listing()

    async def watch(self, *_: Any, resource_version: str | None = None,
                    **__: Any) -> AsyncIterator[tuple[str, Any]]:
        self.watched_from.append(resource_version)
        await asyncio.Event().wait()
        yield "ADDED", None  # never reached


async def test_a_watch_is_ready_once_its_initial_list_arrived() -> None:
    client = ListThenWatch()
    ready = asyncio.Event()
    seen: list[tuple[str, list[tuple[str, str]]]] = []
    watcher = Watcher(object, lambda e, o: [key_of(o)])
    task = asyncio.create_task(watcher.run(
        client, lambda e, keys: seen.append((e, list(keys))), ready))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert not ready.is_set()  # the request has not been answered
    client.listed.set()  # the first list fails (connection refused): still not ready
    await asyncio.sleep(0.1)
    assert not ready.is_set() and client.watched_from == []
    await asyncio.wait_for(ready.wait(), 3)  # retried after its backoff: listed
    assert seen == [("ADDED", [("ns", "t")])]
    await asyncio.sleep(0.01)
    assert client.watched_from == ["41"]  # watching from the list's resourceVersion
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
