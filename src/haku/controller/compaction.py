"""The operator compacts etcd DataStores, as kube-apiserver compacts an etcd it has alone.

Compaction is global to an etcd cluster, and etcd allows it to its administrator only. A
tenant's API server reaches nothing but its own prefix (and reads ``compact_rev_key``), so it
never compacts (``haku.render.kine.TENANT_COMPACTION_INTERVAL``: a year); the operator,
which holds each DataStore's administrator certificate, runs kube-apiserver's rounds for all
of them
(:meth:`haku.datastore.etcd.EtcdDriver.compact_round`): every :attr:`EtcdCompactor.interval`
(5 minutes, kube-apiserver's default) it writes ``compact_rev_key`` and compacts to the
revision of the round before, so between one and two intervals of history stay.

Why the key matters: a tenant API server's watch cache serves list continuations from
snapshots it keeps until ``compact_rev_key`` says their revision is gone (ListFromCacheSnapshot);
without it a continue token never expires (a Conformance test fails so), and with etcd's own
auto-compaction the key is never written. Rounds run while this replica leads; two operators
racing take turns through the key's version, as API servers do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient

from haku.controller.drivers import DriverCache
from haku.controller.fencing import Fence
from haku.controller.lease import LostLeadership
from haku.controller.resources import DataStore
from haku.datastore.etcd import CompactRound, EtcdDriver

log = logging.getLogger(__name__)

INTERVAL = 300.0  # kube-apiserver's --etcd-compaction-interval default
ROUND_TIMEOUT = 30.0


@dataclass
class EtcdCompactor:
    """Compaction rounds for every etcd DataStore, :attr:`interval` seconds apart."""

    client: AsyncClient
    drivers: DriverCache
    fence: Fence
    interval: float = INTERVAL
    # Per DataStore: what its last round saw (the next round's compare and target).
    last: dict[str, CompactRound] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> None:
        """A round every :attr:`interval` seconds on a fixed beat, until ``stop``; nothing
        when the interval is 0. A round that overran skips the beats it missed rather than
        catching up: rounds closer together would keep less history."""
        if self.interval <= 0:
            await stop.wait()
            return
        beat = time.monotonic()
        while True:
            now = time.monotonic()
            while beat <= now:
                beat += self.interval
            try:
                await asyncio.wait_for(stop.wait(), beat - now)
                return
            except TimeoutError:
                pass
            try:
                await self.round()
            except LostLeadership as e:  # not surely leading now: the next beat tries again
                log.info("no compaction round: %s", e)
            except (ApiError, httpx2.HTTPError) as e:  # listing DataStores failed
                log.warning("no compaction round: listing DataStores: %s", e)
            except Exception:  # never the operator's end: the next beat tries again
                log.exception("compaction round failed")

    async def round(self) -> dict[str, CompactRound]:
        """One round on every etcd DataStore; a DataStore that fails is logged and tried
        again next round (its last round forgotten: the next one starts afresh)."""
        self.fence.check()  # the leader only (a follower's round would only lose the turn)
        seen: set[str] = set()
        async for ds in self.client.list(DataStore):
            spec: Any = getattr(ds, "spec", None) or {}
            meta: Any = ds.metadata
            if spec.get("driver") != "etcd" or meta is None or meta.deletionTimestamp:
                continue
            name = str(meta.name)
            seen.add(name)
            try:
                async with self.drivers.lease(ds) as driver:
                    if not isinstance(driver, EtcdDriver):
                        continue
                    done = await asyncio.wait_for(
                        driver.compact_round(self.last.get(name, CompactRound())),
                        ROUND_TIMEOUT)
            except Exception as e:  # unreachable, its Secrets unreadable, …: logged, next
                log.warning("compacting DataStore %s: %s: %s", name, type(e).__name__, e)
                self.last.pop(name, None)
                continue
            self.last[name] = done
            if done.compacted:
                log.info("compacted DataStore %s to revision %d", name, done.compacted)
        for gone in set(self.last) - seen:
            del self.last[gone]
        return dict(self.last)
