"""Watches inside each bootstrapped tenant, so that deleting or editing what Haku installed
there (CoreDNS's ConfigMap, cluster-info, kube-proxy's DaemonSet, ...) is repaired in seconds
rather than at the next resync.

Per tenant: one watch per kind on objects labelled as Haku's. Workload status changes are
ignored (only a changed generation, i.e. a spec edit, counts); any change to a ConfigMap or
Service counts. Drift is coalesced per tenant: the events of ``coalesce`` seconds make one
repair, and a tenant is repaired at most once per ``min_interval`` seconds, so a tenant-side
edit loop (someone's controller fighting Haku over a ConfigMap) cannot drive the operator
into back-to-back full reconciles.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import httpx2
from lightkube import ALL_NS, AsyncClient, KubeConfig
from lightkube.resources.apps_v1 import DaemonSet, Deployment
from lightkube.resources.core_v1 import ConfigMap, Service

from haku.api.resources import FIELD_MANAGER
from haku.controller.runtime import Key, Watcher
from haku.render import konnectivity
from haku.render.tenant_bootstrap import ADDON_LABEL, MANAGED_BY

log = logging.getLogger(__name__)

WATCHED = (ConfigMap, Service, Deployment, DaemonSet)


def agents_ready(obj: Any) -> int | None:
    """The ready count of the Konnectivity agents' workload (None for any other object):
    its changes are news (KonnectivityConnected), unlike other status updates."""
    meta = obj.metadata
    if meta.name != konnectivity.AGENT or (meta.labels or {}).get(ADDON_LABEL) != \
            konnectivity.GROUP:
        return None
    status = getattr(obj, "status", None)
    if status is None:
        return 0
    ready = getattr(status, "numberReady", None) if isinstance(obj, DaemonSet) \
        else getattr(status, "readyReplicas", None)
    return int(ready or 0)


def drift_mapper(key: Key) -> Callable[[str, Any], list[Key]]:
    """Events that mean someone else changed or removed one of Haku's objects, or that the
    number of connected Konnectivity agents changed."""
    seen_state: dict[tuple[str, str, str], tuple[int | None, int | None]] = {}

    def mapper(event: str, obj: Any) -> list[Key]:
        meta = obj.metadata
        ident = (type(obj).__name__, meta.namespace or "", meta.name)
        seen = seen_state.get(ident)
        state = (meta.generation, agents_ready(obj))
        seen_state[ident] = state
        if event == "DELETED":
            seen_state.pop(ident, None)
            return [key]
        if event == "MODIFIED" and (meta.generation is None or seen is None
                                    or state != seen):
            return [key]
        return []  # ADDED (the initial listing, or our own apply) and status-only updates

    return mapper


def _fingerprint(kubeconfig: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(kubeconfig, sort_keys=True).encode()).hexdigest()


class TenantWatches:
    def __init__(self, on_drift: Callable[[Key], None], coalesce: float = 1.0,
                 min_interval: float = 5.0) -> None:
        self.on_drift = on_drift
        self.coalesce, self.min_interval = coalesce, min_interval
        self._tasks: dict[Key, tuple[str, asyncio.Task[None]]] = {}
        self._pending: dict[Key, asyncio.TimerHandle] = {}
        self._last: dict[Key, float] = {}  # loop time of each tenant's last repair

    def drifted(self, key: Key) -> None:
        """Ask for one repair of ``key``, coalesced with others (see the module doc)."""
        if key in self._pending:
            return
        loop = asyncio.get_running_loop()
        due = max(loop.time() + self.coalesce,
                  self._last.get(key, -math.inf) + self.min_interval)
        self._pending[key] = loop.call_at(due, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._pending.pop(key, None)
        self._last[key] = asyncio.get_running_loop().time()
        self.on_drift(key)

    def __contains__(self, key: Key) -> bool:
        return key in self._tasks

    def ensure(self, key: Key, kubeconfig: dict[str, Any]) -> None:
        """Watch the tenant ``key`` through ``kubeconfig`` (restarted if it changed)."""
        fp = _fingerprint(kubeconfig)
        current = self._tasks.get(key)
        if current and current[0] == fp and not current[1].done():
            return
        if current:
            current[1].cancel()
        self._tasks[key] = (fp, asyncio.create_task(self._watch(key, kubeconfig),
                                                    name=f"tenant-watch-{key[0]}/{key[1]}"))

    async def _watch(self, key: Key, kubeconfig: dict[str, Any]) -> None:
        client = AsyncClient(KubeConfig.from_dict(kubeconfig), field_manager=FIELD_MANAGER,
                             timeout=httpx2.Timeout(10.0, read=300.0), trust_env=False)
        mapper = drift_mapper(key)

        def on_keys(event: str, keys: Any) -> None:
            for k in keys:
                log.info("%s/%s: Haku's objects in the tenant changed (%s); repairing",
                         *k, event)
                self.drifted(k)

        try:
            await asyncio.gather(*(Watcher(kind, mapper, labels=MANAGED_BY,
                                           namespace=ALL_NS).run(client, on_keys)
                                   for kind in WATCHED))
        finally:
            await client.close()

    async def stop(self, key: Key) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            pending.cancel()
        self._last.pop(key, None)
        entry = self._tasks.pop(key, None)
        if entry:
            entry[1].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await entry[1]

    async def close(self) -> None:
        for key in list(self._tasks):
            await self.stop(key)
