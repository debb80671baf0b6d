"""Status carried over a failed reconcile, and placement pinning (pure)."""

from __future__ import annotations

from typing import Any

from haku.render import tenant_status

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


def test_placement_uses_the_names_asked_for_not_the_stored_ones() -> None:
    # etcd stores a per-incarnation user ("u1.<tag>"); the name asked for stays "u1", so the
    # driver's mapping is applied once, never to its own output.
    storage = {"dataStoreName": "ds1", "setup": {"schema": "s1", "user": "u1.0a1b2c3d"},
               "requested": {"schema": "s1", "user": "u1"}}
    pinned = tenant_status.placement(tcp("a", "uid-a", "t1", {}, {"storage": storage}), None)
    assert pinned == tenant_status.Placement("ds1", "s1", "u1", True)


def test_none_removes_a_field_that_no_longer_applies() -> None:
    previous = {"kubernetesResources": {"service": {"port": 31443, "konnectivityPort": 31444,
                                                    "nodeAddress": "10.0.0.1"}},
                "addons": {"konnectivity": {"enabled": True, "agent": {"ready": 1}}}}
    computed = {"kubernetesResources": {"service": {"port": 31443, "konnectivityPort": None,
                                                    "nodeAddress": "10.0.0.1"}},
                "addons": {"konnectivity": {"enabled": False, "agent": None}}}
    merged = tenant_status.merge_status(previous, computed)
    assert merged == {"kubernetesResources": {"service": {"port": 31443,
                                                          "nodeAddress": "10.0.0.1"}},
                      "addons": {"konnectivity": {"enabled": False}}}
    # A field never there stays absent, however deep (a first status has no previous).
    assert tenant_status.merge_status({}, {"a": None}) == {}
    assert tenant_status.merge_status(None, {"s": {"port": 1, "k": None}}) == {"s": {"port": 1}}
    assert tenant_status.merge_status({"s": 3}, {"s": {"k": None}}) == {"s": {}}
