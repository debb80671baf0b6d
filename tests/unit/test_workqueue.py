"""The work queue's guarantees, on a real event loop."""

from __future__ import annotations

import asyncio

from haku.controller.runtime import Controller, Result, WorkQueue


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
