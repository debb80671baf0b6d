"""A small level-triggered controller runtime on asyncio and lightkube.

- :class:`WorkQueue`: keys to reconcile; a key is never handed to two workers at once (one
  added while in progress runs again afterwards), failures back off per key exponentially.
- :class:`Watcher`: one watch stream per kind, reconnecting with backoff; every event is mapped
  to the keys of the objects to reconcile (an owned Secret maps to its TenantControlPlane).
- :class:`Controller`: workers that take keys and run the reconcile function, plus a periodic
  resync of every known key, which is what makes it level-triggered: a missed event is repaired
  at the next resync at the latest. No reconcile starts unless its :class:`Fence` is open;
  losing leadership cancels the reconciles in flight at once (:meth:`Controller.abort`), while
  a clean stop lets them finish for up to ``drain_timeout``.

Reconcilers read what they need fresh from the API server; the watch streams only say *when*.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lightkube import ApiError, AsyncClient

from haku.controller import logs
from haku.controller.fencing import Fence, LostLeadership
from haku.controller.metrics import Metrics

log = logging.getLogger("haku.controller")

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects


@dataclass(frozen=True)
class Result:
    """What a reconcile asks for: nothing, or another look after ``requeue_after`` seconds."""

    requeue_after: float | None = None


class WorkQueue:
    """Keys in the order added, except that ``urgent`` ones (a new tenant's first look) go
    before every other waiting key (requeues and resyncs of the ones already there)."""

    def __init__(self, base_delay: float = 0.5, max_delay: float = 300.0) -> None:
        self.base_delay, self.max_delay = base_delay, max_delay
        # (0 urgent | 1 other, sequence, key); a key may be in it more than once (moved up
        # by an urgent add), only its first entry while dirty counts.
        self._ready: asyncio.PriorityQueue[tuple[int, int, Key | None]] = \
            asyncio.PriorityQueue()
        self._sequence = itertools.count()
        self._dirty: set[Key] = set()
        self._urgent: set[Key] = set()
        self._processing: set[Key] = set()
        self._failures: dict[Key, int] = {}
        self._timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}
        self._closed = False

    def _put(self, key: Key | None, priority: int) -> None:
        self._ready.put_nowait((priority, next(self._sequence), key))

    def add(self, key: Key, urgent: bool = False) -> None:
        if self._closed:
            return
        if key in self._dirty:
            if urgent and key not in self._urgent:
                self._urgent.add(key)
                if key not in self._processing:
                    self._put(key, 0)  # moved up; its older entry is skipped later
            return
        self._dirty.add(key)
        if urgent:
            self._urgent.add(key)
        if key not in self._processing:
            self._put(key, 0 if urgent else 1)

    def add_after(self, key: Key, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        current = self._timers.get(key)
        if current and current[0] <= due:
            return  # an earlier wake-up is already set
        if current:
            current[1].cancel()
        self._timers[key] = (due, loop.call_at(due, self._fire, key))

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: Key) -> float:
        """Requeue after a failure; returns the delay (doubling per consecutive failure)."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay: float = min(self.base_delay * 2.0 ** (failures - 1), self.max_delay)
        delay *= float(random.uniform(0.9, 1.1))  # noqa: S311  (jitter, not security)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Key) -> None:
        self._failures.pop(key, None)

    def failures(self, key: Key) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> Key | None:
        """The next key to work on; None once the queue is shut down (keys still waiting are
        not handed out then)."""
        while True:
            if self._closed:
                return None
            _, _, key = await self._ready.get()
            if key is None or self._closed:
                return None
            if key not in self._dirty or key in self._processing:
                continue  # an entry left behind when the key was moved up
            self._dirty.discard(key)
            self._urgent.discard(key)
            self._processing.add(key)
            return key

    def done(self, key: Key) -> None:
        self._processing.discard(key)
        if key in self._dirty and not self._closed:
            self._put(key, 0 if key in self._urgent else 1)

    def __len__(self) -> int:
        return len(self._dirty)

    def shutdown(self, workers: int) -> None:
        """Hand out no more keys; ``workers`` waiting in :meth:`get` get None."""
        if self._closed:
            return
        self._closed = True
        for _, timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for _ in range(workers):
            self._put(None, -1)


Mapper = Callable[[str, Any], Iterable[Key]]


@dataclass
class Watcher:
    """Watch ``resource`` (optionally label-selected) and map events to keys.

    As an informer does: list (every object found is an ``ADDED`` event), then watch from the
    list's resourceVersion. ``ready`` is set once the first list has succeeded and its objects
    were mapped, i.e. the stream really is connected and its initial state delivered."""

    resource: Any
    mapper: Mapper
    labels: dict[str, Any] | None = None
    namespace: str | None = None

    async def run(self, client: AsyncClient, on_keys: Callable[[str, Iterable[Key]], None],
                  ready: asyncio.Event | None = None) -> None:
        backoff = 0.5
        name = getattr(self.resource, "__name__", str(self.resource))
        while True:
            try:
                listing = client.list(self.resource, namespace=self.namespace,
                                      labels=self.labels)
                objects = [obj async for obj in listing]
                version = listing.resourceVersion
                for obj in objects:
                    on_keys("ADDED", self.mapper("ADDED", obj))
                if ready is not None:
                    ready.set()
                backoff = 0.5
                async for event, obj in client.watch(
                        self.resource, namespace=self.namespace, labels=self.labels,
                        server_timeout=240, resource_version=version):
                    backoff = 0.5
                    on_keys(event, self.mapper(event, obj))
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                if e.status.code == 410:  # the version is too old to watch from: list again
                    log.info("watch on %s expired (410 Gone); listing again", name)
                    continue
                log.warning("watch on %s failed (%s); restarting in %.1fs", name, e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception as e:  # the stream broke: start over, listing again
                log.warning("watch on %s broke (%s); restarting in %.1fs", name, e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)


def key_of(obj: Any) -> Key:
    meta = obj.metadata
    return (meta.namespace or "", meta.name)


class SpecChanges:
    """Maps parent events to keys, skipping updates that changed neither the spec (generation)
    nor the deletion state, such as the controller's own status writes."""

    def __init__(self) -> None:
        self.seen: dict[Key, tuple[int | None, bool, tuple[str, ...]]] = {}

    def __call__(self, event: str, obj: Any) -> list[Key]:
        key = key_of(obj)
        meta = obj.metadata
        state = (meta.generation, meta.deletionTimestamp is not None,
                 tuple(meta.finalizers or ()))
        if event == "DELETED":
            self.seen.pop(key, None)
            return [key]
        if event == "MODIFIED" and self.seen.get(key) == state:
            return []
        self.seen[key] = state
        return [key]


class Controller:
    """``key_field`` names the key in log lines (``tenant="ns/name"``); ``metrics`` gets the
    queue depth, each reconcile's total duration and failures by exception class.

    ``fence`` is checked before each reconcile starts (by default it is always open); a
    reconcile (or that check) raising :class:`LostLeadership` is not retried: every reconcile
    in flight is cancelled at once and :meth:`run` raises it. ``drain_timeout`` bounds how long
    in-flight reconciles may go on after a clean stop (:meth:`run` cancelled)."""

    def __init__(
        self,
        name: str,
        reconcile: Callable[[Key], Awaitable[Result]],
        workers: int = 4,
        resync_every: float = 300.0,
        metrics: Metrics | None = None,
        key_field: str = "key",
        fence: Fence | None = None,
        drain_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.reconcile = reconcile
        self.workers = workers
        self.resync_every = resync_every
        self.queue = WorkQueue()
        self.known: set[Key] = set()  # every parent key seen alive, for resync
        self.metrics = metrics or Metrics()
        self.metrics.add_queue(name, self.queue.__len__)
        self.key_field = key_field
        self.fence = fence if fence is not None else Fence.always()
        self.drain_timeout = drain_timeout
        self._watching: list[asyncio.Event] = []
        self._workers: list[asyncio.Task[None]] = []
        self._aborted = False
        self.in_flight: set[Key] = set()

    @property
    def started(self) -> bool:
        """True once every watch stream of :meth:`run` has delivered its initial list."""
        return bool(self._watching) and all(e.is_set() for e in self._watching)

    def observe(self, event: str, keys: Iterable[Key], parent: bool = False) -> None:
        for key in keys:
            if parent:
                if event == "DELETED":
                    self.known.discard(key)
                else:
                    self.known.add(key)
            self.queue.add(key)

    def abort(self) -> None:
        """Leadership is lost: take no more keys and cancel the reconciles in flight now."""
        self._aborted = True
        self.queue.shutdown(len(self._workers))
        for worker in self._workers:
            worker.cancel()

    async def _worker(self, index: int) -> None:
        while True:
            key = await self.queue.get()
            if key is None:
                return
            started = time.perf_counter()
            token = logs.FIELDS.set({"controller": self.name,
                                     self.key_field: "/".join(k for k in key if k)})
            self.in_flight.add(key)
            try:
                self.fence.check()  # no reconcile starts without the Lease
                result = await self.reconcile(key)
            except (asyncio.CancelledError, LostLeadership):
                raise
            except Exception as e:
                self.metrics.reconcile_errors.labels(self.name, type(e).__name__).inc()
                delay = self.queue.add_rate_limited(key)
                log.exception("%s %s/%s failed; retry in %.1fs", self.name, *key, delay)
            else:
                self.queue.forget(key)
                if result.requeue_after is not None:
                    self.queue.add_after(key, result.requeue_after)
            finally:
                self.in_flight.discard(key)
                self.metrics.reconcile_duration.labels(self.name, "total").observe(
                    time.perf_counter() - started)
                logs.FIELDS.reset(token)
                self.queue.done(key)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.resync_every)
            for key in sorted(self.known):
                self.queue.add(key)

    async def run(self, client: AsyncClient, parents: list[Watcher],
                  children: list[Watcher]) -> None:
        """Run until cancelled, or until leadership is lost (raises LostLeadership).

        Cancelled (a clean stop): no new key is taken, and the reconciles in flight get up to
        ``drain_timeout`` to finish before they are cancelled (each is idempotent, so one cut
        short is safe). After :meth:`abort`, or a reconcile raising LostLeadership, they are
        cancelled at once."""
        self._watching = [asyncio.Event() for _ in (*parents, *children)]
        ready = iter(self._watching)
        tasks = [asyncio.create_task(w.run(client, lambda e, k: self.observe(e, k, True),
                                           next(ready)))
                 for w in parents]
        tasks += [asyncio.create_task(w.run(client, self.observe, next(ready)))
                  for w in children]
        tasks.append(asyncio.create_task(self._resync()))
        self._workers = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]
        if self._aborted:  # aborted before it ran
            self.abort()
        try:
            done, _ = await asyncio.wait([*tasks, *self._workers],
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.cancelled() and self._aborted:  # abort() cancelled the workers
                    raise LostLeadership(f"controller {self.name}: aborted")
                task.result()  # what ended it: LostLeadership from a worker, or a bug
            raise RuntimeError(f"controller {self.name}: a task ended unexpectedly")
        except LostLeadership:
            self.abort()
            raise
        finally:
            for t in tasks:
                t.cancel()
            await self._finish_workers()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _finish_workers(self) -> None:
        self.queue.shutdown(len(self._workers))
        pending: set[asyncio.Task[None]] = {w for w in self._workers if not w.done()}
        try:
            if pending and not self._aborted:
                if self.in_flight:
                    log.info("%s: stopping; waiting up to %.0fs for %d reconcile(s) in flight",
                             self.name, self.drain_timeout, len(self.in_flight))
                _, pending = await asyncio.wait(pending, timeout=self.drain_timeout)
                if pending and self.in_flight:
                    log.warning("%s: cancelling %d reconcile(s) still running after %.0fs",
                                self.name, len(self.in_flight), self.drain_timeout)
        finally:
            for w in pending:
                w.cancel()
            # Abort() may cancel workers while the drain waits: wait for all of them.
            await asyncio.gather(*self._workers, return_exceptions=True)
