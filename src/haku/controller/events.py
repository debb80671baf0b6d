"""Kubernetes Events (core/v1) for what Haku does to an object: `kubectl describe` shows them."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from datetime import UTC, datetime
from typing import Any

from lightkube import AsyncClient
from lightkube.codecs import from_dict

log = logging.getLogger("haku.events")


class EventRecorder:
    def __init__(self, client: AsyncClient, component: str = "haku",
                 instance: str | None = None) -> None:
        self.client, self.component = client, component
        self.instance = instance or socket.gethostname()
        self._pending: set[asyncio.Task[None]] = set()
        # Events are written a few at a time: a burst (a thousand new tenants) must not
        # open a connection each, nor crowd out the reconciles' own requests.
        self._writing = asyncio.Semaphore(2)

    def emit(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """Record an Event about ``obj`` without waiting for the write."""
        task = asyncio.get_running_loop().create_task(self._create(obj, kind, reason, message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _create(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                         "namespace": meta.get("namespace") or "default"},
            "involvedObject": {"apiVersion": obj.get("apiVersion", "haku.dev/v1alpha1"),
                               "kind": obj.get("kind", "TenantControlPlane"),
                               "name": meta["name"], "namespace": meta.get("namespace"),
                               "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "type": kind, "reason": reason[:128], "message": message[:1024],
            "source": {"component": self.component},
            "reportingComponent": self.component, "reportingInstance": self.instance,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            async with self._writing:
                await self.client.create(from_dict(event))
        except Exception as e:  # an Event is best effort: never fail a reconcile for it
            log.warning("could not record event %s on %s: %s", reason, meta["name"], e)

    async def flush(self) -> None:
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
