"""spec.writePermissions rendered as the tenant's ValidatingAdmissionPolicy (pure)."""

from __future__ import annotations

from typing import Any

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.render import write_permissions


def spec(permissions: dict[str, Any] | None) -> TenantControlPlaneSpec:
    body: dict[str, Any] = {"kubernetes": {"version": "v1.37.2"}}
    if permissions is not None:
        body["writePermissions"] = permissions
    return TenantControlPlaneSpec.parse({"metadata": {"name": "t", "namespace": "n",
                                                      "uid": "u"}, "spec": body})


def test_nothing_blocked_renders_nothing() -> None:
    assert write_permissions.objects(spec(None)) == []
    assert write_permissions.objects(spec({"blockCreation": False})) == []
    assert not spec({}).write_permissions.limited


def test_only_the_blocked_operations_are_refused_with_a_message_naming_the_fields() -> None:
    policy, binding = write_permissions.objects(spec({"blockCreation": True,
                                                      "blockDeletion": True}))
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rules == [{"apiGroups": ["*"], "apiVersions": ["*"],
                      "operations": ["CREATE", "DELETE"], "resources": ["*"], "scope": "*"}]
    message = policy["spec"]["validations"][0]["message"]
    assert "TenantControlPlane n/t spec.writePermissions sets blockCreation, blockDeletion" \
        in message
    assert binding["spec"] == {"policyName": write_permissions.NAME,
                               "validationActions": ["Deny"]}
    assert policy["spec"]["failurePolicy"] == "Fail"


def test_what_keeps_a_cluster_alive_stays_writable() -> None:
    policy, _ = write_permissions.objects(spec({"blockUpdate": True}))
    excluded = policy["spec"]["matchConstraints"]["excludeResourceRules"]
    as_pairs = {(g, r) for rule in excluded for g in rule["apiGroups"]
                for r in rule["resources"]}
    assert {("coordination.k8s.io", "leases"), ("", "events"), ("events.k8s.io", "events"),
            ("authentication.k8s.io", "*"), ("authorization.k8s.io", "*")} <= as_pairs
    # Subresources (status, scale, eviction, token) are not matched: "*" is main resources.
    assert all("/" not in r for rule in policy["spec"]["matchConstraints"]["resourceRules"]
               for r in rule["resources"])
    condition = policy["spec"]["matchConditions"][0]["expression"]
    assert "'system:apiserver'" in condition and "'kubernetes-super-admin'" in condition
    # The tenant admin (admin.conf) is not exempt.
    assert "kubernetes-admin'" not in condition.replace("kubernetes-super-admin'", "")
