"""``spec.writePermissions``: a write freeze the tenant's own API server enforces (pure).

A ValidatingAdmissionPolicy and its binding, applied inside the tenant: no network path from
the tenant to Haku is needed, and the freeze holds while the operator is away. It refuses the
blocked operations (CREATE, UPDATE, DELETE) on every resource, not on subresources (status,
scale, binding, eviction, a ServiceAccount's token), with these exceptions, each so that what
keeps a cluster alive is not what a freeze stops:

- ``coordination.k8s.io`` leases: node heartbeats and the controllers' leader election;
- events (core and ``events.k8s.io``): what components report;
- ``authentication.k8s.io`` and ``authorization.k8s.io``: token and access reviews, which
  store nothing;
- requests by kube-apiserver itself (``system:apiserver``: the ``kubernetes`` Service's
  endpoints, its identity leases) and by the operator (``kubernetes-super-admin``, which
  only Haku holds: it keeps the in-tenant objects, this policy among them, in place).

What stops while frozen, by design: new Nodes (a kubelet's Node create), a kubelet's
certificate renewal (a CSR), and every controller's writes to main resources (a Deployment
scaled, a ReplicaSet's pods). Status updates go on (they are subresources). The policy never
applies to admission policies and bindings themselves (Kubernetes exempts them), so lifting
the freeze always works.
"""

from __future__ import annotations

from typing import Any

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.render import migration, tenant_kubeconfigs
from haku.render.tenant_bootstrap import ADDON_LABEL, MANAGED_BY

NAME = "haku-write-permissions"
MESSAGE_START = "writes to this cluster are frozen"
GROUP = "write-permissions"
LABELS = {ADDON_LABEL: GROUP, **MANAGED_BY}  # as every object Haku applies in a tenant
EXEMPT_USERS = ("system:apiserver", tenant_kubeconfigs.SUPER_ADMIN.user)
EXEMPT_RESOURCES = (
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"]},
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"]},
    {"apiGroups": ["authentication.k8s.io", "authorization.k8s.io"], "resources": ["*"]},
)


def objects(spec: TenantControlPlaneSpec) -> list[dict[str, Any]]:
    """The policy and its binding; none when nothing is blocked."""
    blocked = spec.write_permissions.operations
    if not blocked:
        return []
    fields = ", ".join(f for f, on in (
        ("blockCreation", spec.write_permissions.block_creation),
        ("blockUpdate", spec.write_permissions.block_update),
        ("blockDeletion", spec.write_permissions.block_deletion)) if on)
    message = (f"{MESSAGE_START}: TenantControlPlane "
               f"{spec.namespace}/{spec.name} spec.writePermissions sets {fields}; reads work, "
               "and writes are accepted again once it is lifted")
    return freeze(NAME, blocked, message)


# A migration's freeze also holds status and other subresource writes: what the source
# accepts after the copy is lost. A ServiceAccount's token (a TokenRequest stores nothing)
# stays allowed, so that pods keep starting.
MIGRATION_NAME = migration.FREEZE_NAME
MIGRATION_MARK = "is moving its data from DataStore"  # in its message only
MIGRATION_EXEMPT = ({"apiGroups": [""], "resources": ["serviceaccounts/token"]},)


def migration_freeze(spec: TenantControlPlaneSpec, source: str, target: str
                     ) -> list[dict[str, Any]]:
    """The freeze of a DataStore migration: every write but the exempt ones, subresources
    included, while the tenant's data is copied from DataStore ``source`` to ``target``."""
    message = (f"{MESSAGE_START}: TenantControlPlane {spec.namespace}/{spec.name} "
               f"{MIGRATION_MARK} {source} to {target}; reads work, and writes are "
               "accepted again in a few seconds: retry")
    return freeze(MIGRATION_NAME, ("CREATE", "UPDATE", "DELETE"), message, subresources=True,
                  exempt=EXEMPT_RESOURCES + MIGRATION_EXEMPT)


def freeze(name: str, blocked: tuple[str, ...] | list[str], message: str,
           subresources: bool = False,
           exempt: tuple[dict[str, Any], ...] = EXEMPT_RESOURCES) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy ``name`` refusing ``blocked`` operations with ``message``
    (on main resources, and subresources too if asked), and its binding."""
    any_op = {"apiVersions": ["*"], "operations": ["*"], "scope": "*"}
    users = ", ".join(f"'{u}'" for u in EXEMPT_USERS)
    resources = ["*/*"] if subresources else ["*"]  # "*/*": resources and subresources
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": LABELS},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [{"apiGroups": ["*"], "apiVersions": ["*"],
                                   "operations": list(blocked), "resources": resources,
                                   "scope": "*"}],
                "excludeResourceRules": [{**rule, **any_op} for rule in exempt],
            },
            "matchConditions": [{"name": "not-exempt-user",
                                 "expression": f"!(request.userInfo.username in [{users}])"}],
            "validations": [{"expression": "false", "message": message,
                             "reason": "Forbidden"}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": LABELS},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }
    return [policy, binding]
