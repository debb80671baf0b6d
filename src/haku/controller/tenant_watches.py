"""Watches inside each bootstrapped tenant, so that deleting or editing what Haku installed
there (CoreDNS's ConfigMap, cluster-info, kube-proxy's DaemonSet, ...) is repaired in seconds
rather than at the next resync.

Per tenant: one watch per kind on objects labelled as Haku's. Workload status changes are
ignored (only a changed generation, i.e. a spec edit, counts); any change to a ConfigMap or
Service counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx2
from lightkube import ALL_NS, AsyncClient, KubeConfig
from lightkube.resources.apps_v1 import DaemonSet, Deployment
from lightkube.resources.core_v1 import ConfigMap, Service

from haku.api.resources import FIELD_MANAGER
from haku.controller.runtime import Key, Watcher
from haku.render.tenant_bootstrap import MANAGED_BY

log = logging.getLogger(__name__)

WATCHED = (ConfigMap, Service, Deployment, DaemonSet)


def drift_mapper(key: Key) -> Callable[[str, Any], list[Key]]:
    """Events that mean someone else changed or removed one of Haku's objects."""
    generations: dict[tuple[str, str, str], int | None] = {}

    def mapper(event: str, obj: Any) -> list[Key]:
        meta = obj.metadata
        ident = (type(obj).__name__, meta.namespace or "", meta.name)
        seen = generations.get(ident)
        generations[ident] = meta.generation
        if event == "DELETED":
            generations.pop(ident, None)
            return [key]
        if event == "MODIFIED" and (meta.generation is None or meta.generation != seen):
            return [key]
        return []  # ADDED (the initial listing, or our own apply) and status-only updates

    return mapper


def _fingerprint(kubeconfig: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(kubeconfig, sort_keys=True).encode()).hexdigest()


class TenantWatches:
    def __init__(self, on_drift: Callable[[Key], None]) -> None:
        self.on_drift = on_drift
        self._tasks: dict[Key, tuple[str, asyncio.Task[None]]] = {}

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
                self.on_drift(k)

        try:
            await asyncio.gather(*(Watcher(kind, mapper, labels=MANAGED_BY,
                                           namespace=ALL_NS).run(client, on_keys)
                                   for kind in WATCHED))
        finally:
            await client.close()

    async def stop(self, key: Key) -> None:
        entry = self._tasks.pop(key, None)
        if entry:
            entry[1].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await entry[1]

    async def close(self) -> None:
        for key in list(self._tasks):
            await self.stop(key)
