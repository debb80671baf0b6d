"""What the steps share: the admin-cluster client, the operator's settings, the event
recorder, metrics, the open drivers, the leader fence, and small helpers for applying
Haku's objects."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Secret

from haku.api.conditions import Condition
from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.controller.config import OperatorConfig
from haku.controller.drivers import DriverCache
from haku.controller.events import EventRecorder
from haku.controller.metrics import Metrics
from haku.controller.pipeline import Context, Fail, Fence, Unfenced
from haku.controller.resources import FIELD_MANAGER
from haku.controller.tenant_watches import TenantWatches
from haku.render import controlplane


def b64(data: dict[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode() for k, v in data.items()}


@dataclass
class Deps:
    client: AsyncClient
    config: OperatorConfig
    events: EventRecorder
    metrics: Metrics
    drivers: DriverCache
    fence: Fence = field(default_factory=Unfenced)
    # Set by the operator once its work queue exists: drift inside a tenant requeues it.
    watches: TenantWatches | None = None
    # time.monotonic() a tenant's datastore space was last confirmed (ensured or verified).
    verified: dict[tuple[str, str], float] = field(default_factory=dict)

    async def apply(self, manifest: dict[str, Any], owner: dict[str, Any] | None) -> Any:
        """Server-side apply with Haku's field manager (fenced like every write)."""
        if owner:
            manifest["metadata"]["ownerReferences"] = [owner]
        return await self.client.apply(from_dict(manifest), field_manager=FIELD_MANAGER,
                                       force=True)

    async def apply_checked(self, ctx: Context, manifest: dict[str, Any], kind: str) -> Any:
        """Apply a rendered object; the API server refusing it (400/422: an invalid nodePort,
        toleration, resource quantity, …) is :class:`Fail` with its message on
        ControlPlaneAvailable (InvalidSpec), retried with the requeue policy's backoff."""
        try:
            return await self.apply(manifest, ctx.owner)
        except ApiError as e:
            if e.status.code not in (400, 422):
                raise
            message = (e.status.message or str(e))[:4000]
            raise Fail(Condition(
                "ControlPlaneAvailable", "False", "InvalidSpec",
                f"the API server refused the {kind} rendered from this spec: {message}"),
                10.0) from e

    async def secret_data(self, namespace: str, name: str) -> dict[str, bytes]:
        try:
            secret = await self.client.get(Secret, name, namespace=namespace)
        except ApiError as e:
            if e.status.code == 404:
                return {}
            raise
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    async def apply_secret(self, ctx: Context, name: str, data: dict[str, bytes],
                           annotations: dict[str, str] | None = None) -> None:
        spec: TenantControlPlaneSpec = ctx.spec
        metadata: dict[str, Any] = {"name": name, "namespace": spec.namespace,
                                    "labels": controlplane.labels(spec, "secret")}
        if annotations:
            metadata["annotations"] = annotations
        await self.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                          "metadata": metadata, "data": b64(data)}, ctx.owner)

    async def delete_owned(self, resource: Any, ctx: Context, name: str) -> bool:
        """Delete ``name`` if it carries this tenant's label; True if it was there."""
        try:
            current = await self.client.get(resource, name, namespace=ctx.spec.namespace)
        except ApiError as e:
            if e.status.code == 404:
                return False
            raise
        labels = current.metadata.labels or {}
        if labels.get(controlplane.TENANT_LABEL) != ctx.spec.name:
            return False
        try:
            await self.client.delete(resource, name, namespace=ctx.spec.namespace)
        except ApiError as e:
            if e.status.code != 404:
                raise
        return True


class StepBase:
    """What every step shares: its name, the Condition it owns, the shared :class:`Deps`, and
    a cleanup that does nothing (objects a TenantControlPlane owns go with it)."""

    name: str = ""
    condition: str | None = None

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def cleanup(self, ctx: Context) -> None:
        return None
