"""A DataStore migration's decisions and records (haku.render.migration) and its freeze."""

from __future__ import annotations

from typing import Any

import pytest

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.render import controlplane, write_permissions
from haku.render import migration as mg
from tests.unit.test_render_tenant import ETCD, tcp

STORAGE = {"driver": "etcd", "dataStoreName": "dev-etcd",
           "setup": {"schema": "phys", "user": "phys-user", "checksum": "c"},
           "requested": {"schema": "t-uid", "user": "t-uid"}, "owner": "t-uid"}


def test_a_new_datastore_starts_a_move_from_the_pinned_one() -> None:
    assert mg.decide("dev-etcd", "dev-etcd", {}) == "none"
    assert mg.decide(None, "dev-etcd", {}) == "none"  # the default, nothing said
    assert mg.decide("dev-postgres", None, {}) == "none"  # not provisioned yet: no move
    assert mg.decide("dev-postgres", "dev-etcd", {}) == "start"
    record = mg.started(STORAGE, "dev-postgres")
    assert record["phase"] == "Provisioning"
    assert record["from"] == {"dataStoreName": "dev-etcd", "driver": "etcd",
                              "schema": "t-uid", "user": "t-uid"}
    assert record["to"] == {"dataStoreName": "dev-postgres"}
    # Fields of an earlier move are removed (None removes in merge_status).
    assert record["completedAt"] is None and record["digest"] is None


@pytest.mark.parametrize("phase", ["Provisioning", "Freezing", "Copying", "Verifying"])
def test_setting_the_datastore_back_before_the_switch_cancels(phase: str) -> None:
    record = {**mg.started(STORAGE, "dev-postgres"), "phase": phase}
    assert mg.decide("dev-postgres", "dev-etcd", record) == "continue"
    assert mg.decide("dev-etcd", "dev-etcd", record) == "cancel"
    assert mg.decide("dev-mariadb", "dev-etcd", record) == "cancel"  # then a new move


@pytest.mark.parametrize("phase", ["Switching", "Unfreezing", "Cleaning"])
def test_from_the_switch_on_a_move_finishes_first(phase: str) -> None:
    record = {**mg.started(STORAGE, "dev-postgres"), "phase": phase}
    assert mg.decide("dev-etcd", "dev-postgres", record) == "continue"


def test_an_ended_move_leaves_room_for_the_next() -> None:
    done = {**mg.started(STORAGE, "dev-postgres"), "phase": "Completed"}
    assert mg.decide("dev-postgres", "dev-postgres", done) == "none"
    assert mg.decide("dev-mariadb", "dev-postgres", done) == "start"
    cancelled = {**done, "phase": "Cancelled"}
    assert mg.decide("dev-etcd", "dev-etcd", cancelled) == "none"


def test_verification_leaves_out_what_the_freeze_lets_through() -> None:
    assert not mg.compared(b"/leases/kube-node-lease/w1")
    assert not mg.compared(b"/events/default/x.1")
    assert not mg.compared(b"/masterleases/10.0.0.1")
    assert mg.compared(b"/configmaps/default/x")
    assert mg.compared(b"/minions/w1") and mg.compared(b"/pods/default/p")
    # The freeze itself is not copied: pods on the target start unfrozen.
    for key in (b"/validatingadmissionpolicies/haku-migration-freeze",
                b"/validatingadmissionpolicybindings/haku-migration-freeze"):
        assert not mg.copied(key) and not mg.compared(key)
    assert mg.copied(b"/validatingadmissionpolicies/haku-write-permissions")
    assert mg.copied(b"/configmaps/default/haku-migration-freeze")


def test_the_time_writes_were_refused_is_read_from_the_record() -> None:
    record = {"frozenAt": "2026-11-30T20:00:00Z", "unfrozenAt": "2026-11-30T20:00:07Z"}
    assert mg.writes_refused_seconds(record) == 7.0
    assert mg.writes_refused_seconds({"frozenAt": "2026-11-30T20:00:00Z"}) is None


def test_the_migration_freeze_refuses_status_writes_too_and_says_why() -> None:
    spec = TenantControlPlaneSpec.parse({
        "metadata": {"name": "t", "namespace": "n", "uid": "u"},
        "spec": {"controlPlane": {}, "kubernetes": {"version": "v1.37.2"}}})
    policy, binding = write_permissions.migration_freeze(spec, "dev-etcd", "dev-postgres")
    assert policy["metadata"]["name"] == binding["spec"]["policyName"] == \
        write_permissions.MIGRATION_NAME
    rule = policy["spec"]["matchConstraints"]["resourceRules"][0]
    assert rule["operations"] == ["CREATE", "UPDATE", "DELETE"]
    assert rule["resources"] == ["*/*"]  # resources and subresources: pods/status too
    excluded = policy["spec"]["matchConstraints"]["excludeResourceRules"]
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "apiVersions": ["*"],
            "operations": ["*"], "scope": "*"} in excluded
    assert any(r["resources"] == ["serviceaccounts/token"] for r in excluded)
    message = policy["spec"]["validations"][0]["message"]
    assert message.startswith(write_permissions.MESSAGE_START)
    assert write_permissions.MIGRATION_MARK in message and "dev-postgres" in message
    # spec.writePermissions' own freeze still leaves subresources alone.
    frozen = TenantControlPlaneSpec.parse({
        "metadata": {"name": "t", "namespace": "n", "uid": "u"},
        "spec": {"controlPlane": {}, "kubernetes": {"version": "v1.37.2"},
                 "writePermissions": {"blockCreation": True}}})
    own = write_permissions.objects(frozen)[0]
    assert own["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["*"]
    assert write_permissions.MIGRATION_MARK not in own["spec"]["validations"][0]["message"]


def _pod(name: str, ip: str | None, state: dict[str, Any], port: int = 6443,
         terminating: bool = False) -> dict[str, Any]:
    """A control-plane pod as the API gives it, its containers those the Deployment renders."""
    spec = tcp() if port == 6443 else tcp(networkProfile={"port": port})
    template = controlplane.deployment(spec, ETCD, "10.0.0.7", {}, "kine:x")["spec"]["template"]
    statuses = [{"name": c["name"], "state": state if c["name"] == "kube-apiserver"
                 else {"running": {}}} for c in template["spec"]["containers"]]
    meta: dict[str, Any] = {"name": name}
    if terminating:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {"metadata": meta, "spec": template["spec"],
            "status": {"podIP": ip, "containerStatuses": statuses}}


def test_the_freeze_asks_every_pod_whose_api_server_runs_at_its_own_address() -> None:
    running = {"running": {"startedAt": "2026-12-01T00:00:00Z"}}
    pods = [_pod("a", "10.246.0.5", running),
            _pod("b", "fd00::7", running, port=31443),
            _pod("leaving", "10.246.0.6", running, terminating=True),  # serves until it stops
            _pod("waiting", "10.246.0.8", {"waiting": {"reason": "ContainerCreating"}}),
            _pod("pending", None, {})]
    assert mg.api_servers(pods) == [("a", "https://10.246.0.5:6443"),
                                    ("b", "https://[fd00::7]:31443"),
                                    ("leaving", "https://10.246.0.6:6443")]
    assert mg.api_servers([]) == []
