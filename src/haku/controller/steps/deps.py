"""What the steps share: the admin-cluster client, the operator's settings, the event
recorder, metrics, the open drivers, the leader fence, and small helpers for applying
Haku's objects.

Never a foreign object: before Haku first writes an object of a tenant (in this process), it
looks whether one of that name exists without an owner reference to the tenant; if so the
step fails with ``NameConflict`` and the object is left alone (a forced server-side apply
would take it over, and garbage collection would delete it with the tenant). Objects seen to
be the tenant's (or absent) are remembered, so this costs one read per object and process.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Secret

from haku.api.conditions import Condition
from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.controller.admin_network import AdminNetwork
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
    # Per tenant: its uid and the (kind, name) of objects known to be its own or absent.
    claimed: dict[tuple[str, str], tuple[str, set[tuple[str, str]]]] = field(
        default_factory=dict)
    # (kind, namespace, name) -> the resourceVersion our last write of it returned, until
    # the watch delivers that version (:meth:`echo`).
    written: dict[tuple[str, str, str], str] = field(default_factory=dict)
    # Per tenant being reconciled: watch events held back until it ends (:meth:`defer`).
    deferred: dict[tuple[str, str], list[tuple[tuple[str, str, str], str | None]]] = field(
        default_factory=dict)
    # (namespace, name) of Haku's Ingresses as the operator's watch delivers them; complete
    # once ``watches_listed()`` (every watch delivered its first list): :meth:`no_ingress`.
    ingresses: set[tuple[str, str]] = field(default_factory=set)
    watches_listed: Callable[[], bool] = lambda: False
    # The admin cluster's own ranges (tenants keep clear of them); made from client and config.
    admin_network: AdminNetwork = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.admin_network is None:
            self.admin_network = AdminNetwork(self.client, self.config)

    def no_ingress(self, namespace: str, name: str) -> bool:
        """True if surely no Ingress ``name`` of Haku's is there (no need to look)."""
        return self.watches_listed() and (namespace, name) not in self.ingresses

    def _known(self, ctx: Context) -> set[tuple[str, str]]:
        entry = self.claimed.get(ctx.key)
        if entry is None or entry[0] != ctx.spec.uid:  # a new tenant under an old name
            entry = (ctx.spec.uid, set())
            self.claimed[ctx.key] = entry
        return entry[1]

    async def claim(self, ctx: Context, resource: Any, name: str) -> Any:
        """The object ``name`` of ``resource`` in the tenant's namespace if it exists (None
        if not), after making sure it is the tenant's own; :class:`Fail` (NameConflict)
        otherwise. Read at most once per object and process."""
        uid = ctx.spec.uid
        known = self._known(ctx)
        if (resource.__name__, name) in known:
            return None
        try:
            current = await self.client.get(resource, name, namespace=ctx.spec.namespace)
        except ApiError as e:
            if e.status.code != 404:
                raise
            current = None
        if current is not None:
            owners = (current.metadata.ownerReferences if current.metadata else None) or []
            if not any(o.uid == uid for o in owners):
                raise Fail(Condition(
                    "", "False", "NameConflict",
                    f"{resource.__name__} {ctx.spec.namespace}/{name} already exists and is "
                    f"not this TenantControlPlane's (no owner reference to it): Haku leaves it "
                    f"alone; delete or rename it, or give this TenantControlPlane another "
                    f"name"), 60.0)
        known.add((resource.__name__, name))
        return current

    def forget(self, key: tuple[str, str]) -> None:
        self.claimed.pop(key, None)
        self.verified.pop(key, None)

    async def apply(self, manifest: dict[str, Any], owner: dict[str, Any] | None) -> Any:
        """Server-side apply with Haku's field manager (fenced like every write)."""
        if owner:
            manifest["metadata"]["ownerReferences"] = [owner]
        applied = await self.client.apply(from_dict(manifest), field_manager=FIELD_MANAGER,
                                          force=True)
        self.wrote(manifest["kind"], applied)
        return applied

    def wrote(self, kind: str, obj: Any) -> None:
        """Remember the version of ``obj`` (a ``kind``) that one of our writes returned."""
        meta = getattr(obj, "metadata", None)
        if meta is not None and meta.resourceVersion and meta.name:
            self.written[(kind, meta.namespace or "", meta.name)] = meta.resourceVersion

    def echo(self, kind: str, event: str, obj: Any) -> bool:
        """True if watch event ``event`` only delivers a version of ``obj`` that this
        operator wrote itself: the reconcile that wrote it knew that state already, so it
        need not run again (a new tenant's own Secrets, Service and Deployment would
        otherwise reconcile it once more). Another writer's change, a controller updating
        a status, or a delete is no echo."""
        meta = obj.metadata
        if event == "DELETED":
            self.written.pop((kind, meta.namespace or "", meta.name), None)
            return False
        return self._echo((kind, meta.namespace or "", meta.name), meta.resourceVersion)

    def _echo(self, what: tuple[str, str, str], version: str | None) -> bool:
        if version and self.written.get(what) == version:
            del self.written[what]
            return True
        return False

    def defer(self, key: tuple[str, str], kind: str, obj: Any) -> None:
        """An event about tenant ``key``'s ``obj`` while it is being reconciled: it may be
        the echo of a write whose answer is not in yet; :meth:`settle` decides."""
        meta = obj.metadata
        self.deferred.setdefault(key, []).append(
            ((kind, meta.namespace or "", meta.name), meta.resourceVersion))

    def settle(self, key: tuple[str, str]) -> bool:
        """At the end of tenant ``key``'s reconcile: True if an event :meth:`defer` held
        back was not the echo of one of its writes (so the tenant must be looked at again)."""
        news = False
        for what, version in self.deferred.pop(key, ()):
            news = not self._echo(what, version) or news
        return news

    async def apply_checked(self, ctx: Context, manifest: dict[str, Any], kind: str) -> Any:
        """Apply a rendered object (never over a foreign one: :meth:`claim`); the API server
        refusing it (400/422: an invalid nodePort, toleration, resource quantity, …) is
        :class:`Fail` with its message on ControlPlaneAvailable (InvalidSpec), retried with
        the requeue policy's backoff."""
        obj = from_dict(manifest)
        await self.claim(ctx, type(obj), manifest["metadata"]["name"])
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

    async def secret_data(self, ctx: Context, name: str) -> dict[str, bytes]:
        """The data of the tenant's Secret ``name`` ({} if absent); a foreign Secret of that
        name is :class:`Fail` (NameConflict), never read."""
        try:
            secret = await self.client.get(Secret, name, namespace=ctx.spec.namespace)
        except ApiError as e:
            if e.status.code == 404:
                self._known(ctx).add(("Secret", name))
                return {}
            raise
        if ("Secret", name) not in self._known(ctx):
            owners = (secret.metadata.ownerReferences if secret.metadata else None) or []
            if not any(o.uid == ctx.spec.uid for o in owners):
                await self.claim(ctx, Secret, name)  # raises NameConflict
            self._known(ctx).add(("Secret", name))
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    async def apply_secret(self, ctx: Context, name: str, data: dict[str, bytes],
                           annotations: dict[str, str] | None = None) -> None:
        spec: TenantControlPlaneSpec = ctx.spec
        metadata: dict[str, Any] = {"name": name, "namespace": spec.namespace,
                                    "labels": controlplane.labels(spec, "secret")}
        if annotations:
            metadata["annotations"] = annotations
        await self.claim(ctx, Secret, name)
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
    # True: the Condition informs but does not gate Ready (and is not set to Unknown while
    # an earlier step has not finished).
    informational: bool = False

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def cleanup(self, ctx: Context) -> None:
        return None
