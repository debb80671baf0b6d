"""Pure helpers for a TenantControlPlane's status: carrying the previous status over a
reconcile that stopped early, and pinning where the tenant lives. (Which tenant owns a space
is recorded in the datastore itself: see haku.controller.steps.datastore.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Kamaji's status.kubernetesResources.version.status values that mean the tenant has been
# provisioned at least once (its pods ran): after that a failure is NotReady, not Provisioning.
PROVISIONED = frozenset({"Ready", "NotReady", "Upgrading", "Sleeping",
                         "CertificateAuthorityRotating", "Migrating", "WriteLimited"})


@dataclass(frozen=True)
class Event:
    """An Event a status change calls for (the controller records it)."""

    kind: str  # Normal or Warning
    reason: str
    message: str


def phases_entered(order: Sequence[str], seen: str | None, now: str) -> list[str]:
    """The phases of ``order`` after ``seen`` (None: from the first) up to ``now``: what a
    status change entered, each to be told once."""
    if now not in order:
        return []
    start = order.index(seen) + 1 if seen in order else 0
    return list(order[start:order.index(now) + 1])


def merge_status(previous: dict[str, Any] | None, computed: dict[str, Any]) -> dict[str, Any]:
    """The status to apply: ``previous`` with what this reconcile ``computed`` written over
    it, key by key in nested objects (lists and scalars are replaced whole). A field this
    reconcile did not get to (a step failed before it) keeps its last known value, so a
    transient failure does not wipe the endpoint, the kubeconfig Secret name, the pinned
    storage or the installed addons. ``None`` removes a field: what no longer applies (the
    Konnectivity port of a tenant without the addon) is not kept."""
    out: dict[str, Any] = dict(previous or {})
    for key, value in computed.items():
        old = out.get(key)
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            out[key] = merge_status(old if isinstance(old, dict) else {}, value)
        else:
            out[key] = value
    return out


def carried_version_status(previous: dict[str, Any] | None, replicas: int) -> str:
    """Kamaji's version.status for a reconcile that stopped before it could look at the
    Deployment: Provisioning if the tenant never ran, else NotReady (Sleeping stays Sleeping
    while replicas is 0)."""
    before = (((previous or {}).get("kubernetesResources") or {}).get("version")
              or {}).get("status")
    if before == "Sleeping" and replicas == 0:
        return "Sleeping"
    if before in PROVISIONED:
        return "NotReady"
    return "Provisioning"


@dataclass(frozen=True)
class Placement:
    """Where a tenant lives: DataStore name, schema (space) and user as asked for (the
    logical names drivers map to what they store). ``pinned`` when they come from
    ``status.storage`` (written at first provisioning), which then wins over the spec and
    ``--default-datastore``."""

    data_store: str | None
    schema: str
    user: str
    pinned: bool


def placement(obj: dict[str, Any], default_datastore: str | None) -> Placement:
    """The effective placement of TenantControlPlane ``obj`` (a dict as the API returns it)."""
    spec = obj.get("spec") or {}
    storage = (obj.get("status") or {}).get("storage") or {}
    setup = storage.get("setup") or {}
    uid = (obj.get("metadata") or {}).get("uid") or ""
    pinned = bool(storage.get("dataStoreName") and setup.get("schema") and setup.get("user"))
    if pinned:
        # The names asked for at provisioning; before Haku recorded them (status.storage
        # without "requested") the stored names, which equalled them then.
        requested = storage.get("requested") or {}
        return Placement(storage["dataStoreName"], requested.get("schema") or setup["schema"],
                         requested.get("user") or setup["user"], True)
    return Placement(spec.get("dataStore") or default_datastore,
                     spec.get("dataStoreSchema") or uid,
                     spec.get("dataStoreUsername") or uid, False)
