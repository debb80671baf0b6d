"""Pure helpers for a TenantControlPlane's status: carrying the previous status over a
reconcile that stopped early, pinning where the tenant lives, and refusing a datastore space
or user that an older tenant already claims."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# Kamaji's status.kubernetesResources.version.status values that mean the tenant has been
# provisioned at least once (its pods ran): after that a failure is NotReady, not Provisioning.
PROVISIONED = frozenset({"Ready", "NotReady", "Upgrading", "Sleeping",
                         "CertificateAuthorityRotating", "Migrating", "WriteLimited"})


def merge_status(previous: dict[str, Any] | None, computed: dict[str, Any]) -> dict[str, Any]:
    """The status to apply: ``previous`` with what this reconcile ``computed`` written over
    it, key by key in nested objects (lists and scalars are replaced whole). A field this
    reconcile did not get to (a step failed before it) keeps its last known value, so a
    transient failure does not wipe the endpoint, the kubeconfig Secret name, the pinned
    storage or the installed addons."""
    out: dict[str, Any] = dict(previous or {})
    for key, value in computed.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            out[key] = merge_status(old, value)
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
    """Where a tenant lives: DataStore name, schema (space) and user. ``pinned`` when they
    come from ``status.storage`` (written at first provisioning), which then wins over the
    spec and ``--default-datastore``."""

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
        return Placement(storage["dataStoreName"], setup["schema"], setup["user"], True)
    return Placement(spec.get("dataStore") or default_datastore,
                     spec.get("dataStoreSchema") or uid,
                     spec.get("dataStoreUsername") or uid, False)


@dataclass(frozen=True)
class Claim:
    """What one TenantControlPlane claims in a DataStore (kept per tenant by the operator)."""

    namespace: str
    name: str
    uid: str
    created: str  # metadata.creationTimestamp, RFC 3339 (sorts as time)
    placement: Placement
    deleting: bool = False

    @classmethod
    def of(cls, obj: dict[str, Any], default_datastore: str | None) -> Claim:
        meta = obj.get("metadata") or {}
        return cls(meta.get("namespace") or "", meta.get("name") or "", meta.get("uid") or "",
                   str(meta.get("creationTimestamp") or ""),
                   placement(obj, default_datastore),
                   bool(meta.get("deletionTimestamp")))

    def older_than(self, other: Claim) -> bool:
        return (self.created, self.uid) < (other.created, other.uid)


@dataclass(frozen=True)
class Conflict:
    reason: str  # SchemaInUse | UserInUse
    message: str


def _same(claim: Claim, other: Claim,
          physical: Callable[[str, str], tuple[str, str]]) -> tuple[bool, bool]:
    mine = physical(claim.placement.schema, claim.placement.user)
    theirs = physical(other.placement.schema, other.placement.user)
    return mine[0] == theirs[0], mine[1] == theirs[1]


def _others(claim: Claim, others: Iterable[Claim]) -> list[Claim]:
    return [o for o in others if o.uid != claim.uid
            and o.placement.data_store == claim.placement.data_store]


def claim_conflict(
    claim: Claim, others: Iterable[Claim],
    physical: Callable[[str, str], tuple[str, str]] = lambda s, u: (s, u),
) -> Conflict | None:
    """Why ``claim`` must not use its schema or user: an *older* tenant (creationTimestamp,
    then uid) on the same DataStore claims the same one. ``physical`` maps (schema, user) to
    the names the backend stores, so two spellings of one name collide too."""
    for other in sorted(_others(claim, others), key=lambda o: (o.created, o.uid)):
        if not other.older_than(claim):
            continue
        schema, user = _same(claim, other, physical)
        where = f"DataStore {claim.placement.data_store}"
        if schema:
            return Conflict("SchemaInUse", (
                f"schema {claim.placement.schema!r} on {where} is already used by "
                f"TenantControlPlane {other.namespace}/{other.name}; set a different "
                "spec.dataStoreSchema (on a new object: it is immutable)"))
        if user:
            return Conflict("UserInUse", (
                f"user {claim.placement.user!r} on {where} is already used by "
                f"TenantControlPlane {other.namespace}/{other.name}; set a different "
                "spec.dataStoreUsername (on a new object: it is immutable)"))
    return None


def live_holders(
    claim: Claim, others: Iterable[Claim],
    physical: Callable[[str, str], tuple[str, str]] = lambda s, u: (s, u),
) -> list[Claim]:
    """Tenants not being deleted that hold ``claim``'s schema or user too, so the finalizer
    of ``claim`` must keep the datastore tenant. A sharer holds it when it was provisioned
    there (pinned) or is older; a newer unpinned sharer was refused and holds nothing."""
    return [o for o in shared_with(claim, others, physical)
            if not o.deleting and (o.placement.pinned or o.older_than(claim))]


def shared_with(
    claim: Claim, others: Iterable[Claim],
    physical: Callable[[str, str], tuple[str, str]] = lambda s, u: (s, u),
) -> list[Claim]:
    """Other tenants (of any age) on the same DataStore sharing ``claim``'s schema or user:
    deleting ``claim``'s datastore tenant would drop their data."""
    return [o for o in _others(claim, others) if any(_same(claim, o, physical))]
