"""Apply kubeadm's bootstrap objects and the addons inside a tenant; prune a removed addon.

Everything is a server-side apply with field manager ``haku`` (forced: these objects are
Haku's, and a drifted copy is put back). An addon that leaves the spec loses exactly the
objects Haku labelled for it, nothing else in the tenant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.core.resource import NamespacedResource
from lightkube.resources.apps_v1 import DaemonSet, Deployment
from lightkube.resources.core_v1 import ConfigMap, Service, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import (
    ClusterRole,
    ClusterRoleBinding,
    Role,
    RoleBinding,
)

from haku.render import konnectivity as konnectivity_render
from haku.render.tenant_bootstrap import (
    ADDON_LABEL,
    CORE,
    COREDNS,
    KONNECTIVITY,
    KUBE_PROXY,
    KUBE_SYSTEM,
    MANAGED_BY,
)

log = logging.getLogger(__name__)

ADDONS = (KUBE_PROXY, COREDNS, KONNECTIVITY)
STATUS_KEYS = {KUBE_PROXY: "kubeProxy", COREDNS: "coreDNS", KONNECTIVITY: "konnectivity"}
AGENT_KINDS = {"DaemonSet": DaemonSet, "Deployment": Deployment}
# Every kind an addon renders; workloads first so their pods go before their RBAC.
PRUNABLE = (Deployment, DaemonSet, Service, ConfigMap, RoleBinding, Role, ClusterRoleBinding,
            ClusterRole, ServiceAccount)


@dataclass
class BootstrapFailed(Exception):
    reason: str
    message: str

    def __str__(self) -> str:
        return self.message


def _describe(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj['kind']} {where}{meta['name']}"


async def apply_objects(client: AsyncClient, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        try:
            await client.apply(from_dict(obj), force=True)
        except ApiError as e:
            raise BootstrapFailed("ApplyFailed", f"{_describe(obj)}: {e.status.message}") from e


async def prune_addon(client: AsyncClient, addon: str) -> list[str]:
    """Delete what Haku installed for ``addon``; the names it deleted."""
    selector: dict[str, Any] = {ADDON_LABEL: addon, **MANAGED_BY}
    deleted = []
    kind: Any
    for kind in PRUNABLE:
        namespaced = issubclass(kind, NamespacedResource)
        listing = (client.list(kind, namespace="*", labels=selector) if namespaced
                   else client.list(kind, labels=selector))
        async for item in listing:
            name, ns = item.metadata.name, item.metadata.namespace
            try:
                if namespaced:
                    await client.delete(kind, name, namespace=ns)
                else:
                    await client.delete(kind, name)
            except ApiError as e:
                if e.status.code != 404:
                    raise BootstrapFailed("PruneFailed",
                                          f"{kind.__name__} {name}: {e.status.message}") from e
            deleted.append(f"{kind.__name__} {ns + '/' if ns else ''}{name}")
    return deleted


async def reconcile(client: AsyncClient, groups: dict[str, list[dict[str, Any]]],
                    installed: dict[str, bool]) -> list[str]:
    """Apply ``groups`` (core first); prune addons that are absent now but were installed.

    ``installed`` is the tenant's status.addons as {addon: enabled}, updated in place as each
    addon is applied or pruned, so that after a failure halfway it still tells what the
    tenant holds. Returns what was pruned.
    """
    await apply_objects(client, groups[CORE])
    pruned: list[str] = []
    for addon in ADDONS:
        objects = groups.get(addon) or []
        if objects:
            await apply_objects(client, objects)
            installed[addon] = True
        else:
            if installed.get(addon):
                pruned += await prune_addon(client, addon)
            installed[addon] = False
    return pruned


def installed_from_status(status: dict[str, Any]) -> dict[str, bool]:
    addons = status.get("addons") or {}
    return {a: bool((addons.get(k) or {}).get("enabled")) for a, k in STATUS_KEYS.items()}


def status_from_installed(installed: dict[str, bool]) -> dict[str, Any]:
    return {STATUS_KEYS[a]: {"enabled": on} for a, on in installed.items()}


async def remove_agent_kind(client: AsyncClient, mode: str) -> bool:
    """Delete the Konnectivity agents of the other kind than ``mode`` (after a switch between
    DaemonSet and Deployment), if Haku made them; True if something was deleted."""
    kind: Any
    for name, kind in AGENT_KINDS.items():
        if name == mode:
            continue
        try:
            current = await client.get(kind, konnectivity_render.AGENT, namespace=KUBE_SYSTEM)
        except ApiError as e:
            if e.status.code == 404:
                continue
            raise
        labels = current.metadata.labels or {}
        if labels.get(ADDON_LABEL) != KONNECTIVITY:
            continue  # not Haku's
        try:
            await client.delete(kind, konnectivity_render.AGENT, namespace=KUBE_SYSTEM)
        except ApiError as e:
            if e.status.code != 404:
                raise
        return True
    return False


@dataclass(frozen=True)
class Agents:
    """The Konnectivity agents as their workload reports them: how many should run, how many
    are ready (an agent is ready once connected to a server)."""

    mode: str
    desired: int
    ready: int


async def agents(client: AsyncClient, mode: str) -> Agents | None:
    """The agents' workload status, None if it is not there."""
    kind: Any = AGENT_KINDS.get(mode, DaemonSet)
    try:
        current = await client.get(kind, konnectivity_render.AGENT, namespace=KUBE_SYSTEM)
    except ApiError as e:
        if e.status.code == 404:
            return None
        raise
    status = current.status
    if mode == "Deployment":
        desired = (current.spec.replicas if current.spec else 0) or 0
        ready = (status.readyReplicas if status else 0) or 0
    else:
        desired = (status.desiredNumberScheduled if status else 0) or 0
        ready = (status.numberReady if status else 0) or 0
    return Agents(mode, int(desired), int(ready))
