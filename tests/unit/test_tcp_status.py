"""Status carried over a failed reconcile, placement pinning and datastore claims (pure)."""

from __future__ import annotations

from typing import Any

from haku.render import tenant_status
from haku.render.tenant_status import Claim

PROVISIONED: dict[str, Any] = {
    "controlPlaneEndpoint": "10.96.0.9:6443",
    "kubeconfig": {"admin": {"secretName": "t-admin-kubeconfig"}},
    "storage": {"driver": "etcd", "dataStoreName": "ds1",
                "setup": {"schema": "s1", "user": "u1"}},
    "addons": {"coreDNS": {"enabled": True}, "kubeProxy": {"enabled": False}},
    "kubernetesResources": {
        "version": {"status": "Ready", "version": "v1.37.2"},
        "deployment": {"name": "t", "replicas": 2, "readyReplicas": 2},
        "service": {"name": "t", "port": 6443}},
    "observedGeneration": 3,
}


def test_a_failed_reconcile_keeps_what_it_did_not_recompute() -> None:
    computed = {"conditions": [{"type": "Ready", "status": "False"}],
                "observedGeneration": 4,
                "kubernetesResources": {"version": {
                    "status": tenant_status.carried_version_status(PROVISIONED, 2)}}}
    merged = tenant_status.merge_status(PROVISIONED, computed)
    assert merged["controlPlaneEndpoint"] == "10.96.0.9:6443"
    assert merged["kubeconfig"] == {"admin": {"secretName": "t-admin-kubeconfig"}}
    assert merged["storage"] == PROVISIONED["storage"]
    assert merged["addons"] == PROVISIONED["addons"]  # still prunes removed addons later
    assert merged["kubernetesResources"]["deployment"]["readyReplicas"] == 2
    assert merged["kubernetesResources"]["version"] == {"status": "NotReady",
                                                        "version": "v1.37.2"}
    assert merged["observedGeneration"] == 4
    assert merged["conditions"] == computed["conditions"]
    assert PROVISIONED["kubernetesResources"]["version"]["status"] == "Ready"  # not mutated


def test_what_a_reconcile_computes_overwrites_and_lists_are_replaced() -> None:
    merged = tenant_status.merge_status(
        PROVISIONED, {"controlPlaneEndpoint": "192.0.2.1:31000",
                      "addons": {"coreDNS": {"enabled": False}},
                      "kubernetesResources": {"service": {"port": 31000}}})
    assert merged["controlPlaneEndpoint"] == "192.0.2.1:31000"
    assert merged["addons"] == {"coreDNS": {"enabled": False}, "kubeProxy": {"enabled": False}}
    assert merged["kubernetesResources"]["service"] == {"name": "t", "port": 31000}
    assert tenant_status.merge_status({"conditions": [1, 2]}, {"conditions": [3]}) == {
        "conditions": [3]}


def test_version_status_when_the_deployment_was_not_looked_at() -> None:
    assert tenant_status.carried_version_status(None, 2) == "Provisioning"
    assert tenant_status.carried_version_status({}, 2) == "Provisioning"
    never = {"kubernetesResources": {"version": {"status": "Provisioning"}}}
    assert tenant_status.carried_version_status(never, 2) == "Provisioning"
    for before in ("Ready", "Upgrading", "NotReady"):
        was = {"kubernetesResources": {"version": {"status": before}}}
        assert tenant_status.carried_version_status(was, 2) == "NotReady"
    asleep = {"kubernetesResources": {"version": {"status": "Sleeping"}}}
    assert tenant_status.carried_version_status(asleep, 0) == "Sleeping"
    assert tenant_status.carried_version_status(asleep, 2) == "NotReady"


def tcp(name: str, uid: str, created: str, spec: dict[str, Any] | None = None,
        status: dict[str, Any] | None = None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": uid,
                            "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-25T00:00:00Z"
    return {"metadata": meta, "spec": spec or {}, "status": status or {}}


def test_placement_is_pinned_by_status_storage_once_provisioned() -> None:
    fresh = tenant_status.placement(tcp("a", "uid-a", "t1"), "default-ds")
    assert fresh == tenant_status.Placement("default-ds", "uid-a", "uid-a", False)
    spec = tenant_status.placement(
        tcp("a", "uid-a", "t1", {"dataStore": "x", "dataStoreSchema": "s",
                                 "dataStoreUsername": "u"}), "default-ds")
    assert spec == tenant_status.Placement("x", "s", "u", False)
    # Pinned: neither a changed --default-datastore nor a spec added later moves it.
    pinned = tenant_status.placement(
        tcp("a", "uid-a", "t1", {"dataStore": "other", "dataStoreSchema": "late"},
            {"storage": PROVISIONED["storage"]}), "new-default")
    assert pinned == tenant_status.Placement("ds1", "s1", "u1", True)


def claim(name: str, uid: str, created: str, spec: dict[str, Any] | None = None,
          status: dict[str, Any] | None = None, deleting: bool = False) -> Claim:
    return Claim.of(tcp(name, uid, created, spec, status, deleting), "ds1")


def test_the_newer_tenant_claiming_a_used_schema_or_user_is_refused() -> None:
    old = claim("old", "uid-old", "2026-01-01T00:00:00Z", {"dataStoreSchema": "shared"})
    new = claim("new", "uid-new", "2026-02-01T00:00:00Z", {"dataStoreSchema": "shared"})
    other = claim("other", "uid-other", "2025-01-01T00:00:00Z", {"dataStore": "ds2",
                                                                "dataStoreSchema": "shared"})
    conflict = tenant_status.claim_conflict(new, [old, new, other])
    assert conflict is not None and conflict.reason == "SchemaInUse"
    assert "ns/old" in conflict.message and "'shared'" in conflict.message
    assert tenant_status.claim_conflict(old, [old, new, other]) is None  # older one goes on
    user = claim("u", "uid-u", "2026-03-01T00:00:00Z", {"dataStoreUsername": "uid-old"})
    conflict = tenant_status.claim_conflict(user, [old, user])
    assert conflict is not None and conflict.reason == "UserInUse"
    # Equal timestamps: the uid breaks the tie, so exactly one of the two is refused.
    a = claim("a", "uid-1", "2026-01-01T00:00:00Z", {"dataStoreSchema": "x"})
    b = claim("b", "uid-2", "2026-01-01T00:00:00Z", {"dataStoreSchema": "x"})
    assert tenant_status.claim_conflict(a, [a, b]) is None
    assert tenant_status.claim_conflict(b, [a, b]) is not None


def test_physical_names_collide_too() -> None:
    a = claim("a", "uid-1", "t1", {"dataStoreSchema": "My.DB"})
    b = claim("b", "uid-2", "t2", {"dataStoreSchema": "my_db"})
    assert tenant_status.claim_conflict(b, [a, b]) is None
    conflict = tenant_status.claim_conflict(
        b, [a, b], lambda s, u: (s.lower().replace(".", "_"), u))
    assert conflict is not None and conflict.reason == "SchemaInUse"


def test_the_finalizer_keeps_a_space_another_live_tenant_holds() -> None:
    owner = claim("owner", "uid-o", "t1", {"dataStoreSchema": "x"},
                  {"storage": {"dataStoreName": "ds1", "setup": {"schema": "x", "user": "o"}}})
    refused = claim("refused", "uid-r", "t2", {"dataStoreSchema": "x"})
    # The refused newer tenant holds nothing: deleting the owner drops the space.
    assert tenant_status.live_holders(owner, [owner, refused]) == []
    # Deleting the refused one must not drop the owner's data.
    assert tenant_status.live_holders(refused, [owner, refused]) == [owner]
    gone = claim("owner", "uid-o", "t1", {"dataStoreSchema": "x"}, deleting=True)
    assert tenant_status.live_holders(refused, [gone, refused]) == []
    assert tenant_status.shared_with(refused, [gone, refused]) == [gone]
