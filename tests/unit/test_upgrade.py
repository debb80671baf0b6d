"""The version status and an upgrade's phases (haku.render.upgrade), pure."""

from __future__ import annotations

from typing import Any

import pytest

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.render.upgrade import (
    COMPLETED,
    CONTROL_PLANE,
    TENANT_OBJECTS,
    Rollout,
    tenant_objects_version,
    version_events,
    version_state,
)

OLD, NEW = "v1.36.3", "v1.37.2"
T0, T1, T2 = "2026-11-30T10:00:00Z", "2026-11-30T10:01:00Z", "2026-11-30T10:02:00Z"
ALL_READY = Rollout(2, 2, True)
ROLLING = Rollout(2, 2, False)  # old and new pods both serving


@pytest.mark.parametrize(("previous", "rollout", "ran_before", "want"), [
    (None, Rollout(0, 0, False), False, {"status": "Sleeping", "version": NEW}),
    (None, Rollout(2, 0, False), False, {"status": "Provisioning"}),
    ({"status": "Ready", "version": NEW}, Rollout(2, 0, False), True,
     {"status": "NotReady", "version": NEW}),
    ({"status": "Ready", "version": NEW}, ALL_READY, True, {"status": "Ready", "version": NEW}),
    # A scale-up or a restarted pod: the same version, not an upgrade.
    ({"status": "Ready", "version": NEW}, Rollout(3, 2, False), True,
     {"status": "Ready", "version": NEW}),
    # Up but not rolled out yet on first provisioning: Ready, no version confirmed.
    (None, Rollout(2, 1, False), False, {"status": "Ready"}),
    (None, None, False, {"status": "Provisioning"}),
    ({"status": "Ready", "version": NEW}, None, True, {"status": "NotReady", "version": NEW}),
])
def test_version_without_an_upgrade(previous: Any, rollout: Rollout | None, ran_before: bool,
                                    want: dict[str, Any]) -> None:
    assert version_state(previous, NEW, rollout, ran_before, T0) == want


def test_an_upgrade_goes_control_plane_first_then_the_tenant_objects() -> None:
    ran = {"status": "Ready", "version": OLD}
    # The spec moved on: pods roll; the running version stays what it was.
    s1 = version_state(ran, NEW, ROLLING, True, T0, observed=OLD, tenant_objects=OLD)
    assert s1["status"] == "Upgrading" and s1["version"] == OLD
    assert s1["upgrade"] == {"from": OLD, "to": NEW, "phase": CONTROL_PLANE, "startedAt": T0,
                             "completedAt": ""}
    # The objects inside the tenant keep the old version meanwhile.
    assert tenant_objects_version(s1, NEW, ROLLING, OLD) == OLD
    # Rolled out, but the API (a cached answer, a pod not yet gone) still says the old one.
    s2 = version_state(s1, NEW, ALL_READY, True, T1, observed=OLD, tenant_objects=OLD)
    assert s2["upgrade"]["phase"] == CONTROL_PLANE and s2["status"] == "Upgrading"
    assert tenant_objects_version(s2, NEW, ALL_READY, OLD) == OLD
    # Rolled out and /version answers the new one: the objects follow, in the same pass.
    assert tenant_objects_version(s2, NEW, ALL_READY, NEW) == NEW
    s3 = version_state(s2, NEW, ALL_READY, True, T1, observed=NEW, tenant_objects=None)
    assert s3["upgrade"]["phase"] == TENANT_OBJECTS and s3["status"] == "Upgrading"
    assert s3["version"] == OLD
    s4 = version_state(s3, NEW, ALL_READY, True, T2, observed=NEW, tenant_objects=NEW)
    assert s4 == {"status": "Ready", "version": NEW,
                  "upgrade": {"from": OLD, "to": NEW, "phase": COMPLETED, "startedAt": T0,
                              "completedAt": T2}}
    # Later passes keep the record and start nothing.
    assert version_state(s4, NEW, ALL_READY, True, T2, observed=NEW, tenant_objects=NEW) == s4
    assert version_events(s4, s4) == []


def test_events_name_each_phase_once() -> None:
    ran = {"status": "Ready", "version": OLD}
    s1 = version_state(ran, NEW, ROLLING, True, T0, observed=OLD)
    s2 = version_state(s1, NEW, ALL_READY, True, T1, observed=NEW)
    s3 = version_state(s2, NEW, ALL_READY, True, T2, observed=NEW, tenant_objects=NEW)
    assert [e.reason for e in version_events(ran, s1, 2)] == ["UpgradeStarted"]
    assert version_events(s1, s1, 2) == []
    assert [e.reason for e in version_events(s1, s2, 2)] == ["ControlPlaneUpgraded"]
    assert [e.reason for e in version_events(s2, s3, 2)] == ["Upgraded"]
    # A pass that saw every phase at once still tells all of them, in order.
    assert [e.reason for e in version_events(ran, s3, 2)] == [
        "UpgradeStarted", "ControlPlaneUpgraded", "Upgraded"]
    started = version_events(ran, s1, 2)[0]
    assert OLD in started.message and NEW in started.message and "maxUnavailable 0" in \
        started.message
    assert "three minors older" in version_events(s2, s3, 2)[0].message


def test_a_second_upgrade_starts_a_new_record() -> None:
    done = {"status": "Ready", "version": NEW,
            "upgrade": {"from": OLD, "to": NEW, "phase": COMPLETED, "startedAt": T0,
                        "completedAt": T1}}
    nxt = version_state(done, "v1.37.3", ROLLING, True, T2, observed=NEW)
    assert nxt["upgrade"] == {"from": NEW, "to": "v1.37.3", "phase": CONTROL_PLANE,
                              "startedAt": T2, "completedAt": ""}
    assert [e.reason for e in version_events(done, nxt)] == ["UpgradeStarted"]


def test_an_upgrade_that_stops_serving_is_not_ready_and_resumes() -> None:
    s1 = version_state({"status": "Ready", "version": OLD}, NEW, ROLLING, True, T0,
                       observed=OLD)
    down = version_state(s1, NEW, Rollout(2, 0, False), True, T1)
    assert down["status"] == "NotReady" and down["upgrade"]["phase"] == CONTROL_PLANE
    assert down["upgrade"]["startedAt"] == T0  # the same upgrade, resumed later
    assert version_events(s1, down) == []


def test_a_sleeping_tenant_wakes_up_at_the_new_version() -> None:
    asleep = {"status": "Sleeping", "version": OLD}
    s = version_state(asleep, NEW, Rollout(0, 0, False), True, T0)
    assert s == {"status": "Sleeping", "version": NEW}


def test_the_in_tenant_objects_follow_only_after_the_control_plane() -> None:
    ran = {"status": "Ready", "version": OLD}
    assert tenant_objects_version(None, NEW, ROLLING, None) == NEW  # first provisioning
    assert tenant_objects_version(ran, OLD, ALL_READY, OLD) == OLD  # no upgrade
    assert tenant_objects_version(ran, NEW, ROLLING, NEW) == OLD  # pods still rolling
    assert tenant_objects_version(ran, NEW, Rollout(2, 1, True), NEW) == OLD  # one not ready
    assert tenant_objects_version(ran, NEW, ALL_READY, None) == OLD  # /version not seen
    assert tenant_objects_version(ran, NEW, ALL_READY, NEW) == NEW


def test_a_spec_at_another_version_moves_a_derived_kube_proxy_tag_only() -> None:
    def spec(proxy: dict[str, Any]) -> TenantControlPlaneSpec:
        return TenantControlPlaneSpec.parse({
            "metadata": {"name": "t", "namespace": "n", "uid": "u"},
            "spec": {"kubernetes": {"version": NEW}, "addons": {"kubeProxy": proxy}}})

    derived = spec({}).at_version(OLD)
    assert derived.version == OLD and derived.addons.kube_proxy is not None
    assert derived.addons.kube_proxy.image_tag == OLD
    pinned = spec({"imageTag": "v1.37.1"}).at_version(OLD)
    assert pinned.addons.kube_proxy is not None
    assert pinned.addons.kube_proxy.image_tag == "v1.37.1"
    same = spec({})
    assert same.at_version(NEW) is same


def test_kube_apiserver_answers_through_a_shutdown_delay_unless_the_user_sets_one() -> None:
    from haku.render import controlplane
    from haku.render.storage import TenantConnection

    def spec(extra: list[str]) -> TenantControlPlaneSpec:
        return TenantControlPlaneSpec.parse({
            "metadata": {"name": "t", "namespace": "n", "uid": "u"},
            "spec": {"kubernetes": {"version": NEW},
                     "controlPlane": {"deployment": {"extraArgs": {"apiServer": extra}}}}})

    storage = TenantConnection(driver="etcd", etcd_servers=("https://etcd:2379",),
                               etcd_prefix="/t/")
    args = controlplane.apiserver_args(spec([]), storage, "10.0.0.7")
    assert f"--shutdown-delay-duration={controlplane.SHUTDOWN_DELAY}" in args
    args = controlplane.apiserver_args(spec(["--shutdown-delay-duration=20s"]), storage,
                                       "10.0.0.7")
    assert [a for a in args if a.startswith("--shutdown-delay")] == [
        "--shutdown-delay-duration=20s"]
