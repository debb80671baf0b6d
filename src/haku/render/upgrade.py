"""Kamaji's ``status.kubernetesResources.version`` and the phases of a version upgrade (pure).

An upgrade is a change of ``spec.kubernetes.version`` on a tenant that has run (the CRD allows
one minor up, or a patch). It goes control plane first, as upstream's upgrade order asks:

1. ``ControlPlane``: the Deployment rolls to the new images (``maxUnavailable: 0``: the ready
   replicas never drop), while the objects inside the tenant keep the version that runs.
2. ``TenantObjects``: every pod runs the new version and the API answers ``/version`` with
   it; the in-tenant objects that carry the version (kubeadm-config's ClusterConfiguration,
   kube-proxy's image when derived) are applied at the new version.
3. ``Completed``: they were applied; ``version.version`` is the version observed running and
   ``version.status`` is ``Ready`` again.

``version.upgrade`` records the last upgrade (from, to, phase, when it started and ended:
``completedAt`` is empty until then), so a reconcile resumes where the previous one stopped.
Kubelets are never touched: upstream's skew policy lets them run up to three minors older
than the API server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from haku.render.tenant_status import Event, phases_entered

CONTROL_PLANE, TENANT_OBJECTS, COMPLETED = "ControlPlane", "TenantObjects", "Completed"
PHASES = (CONTROL_PLANE, TENANT_OBJECTS, COMPLETED)


@dataclass(frozen=True)
class Rollout:
    """What the Deployment shows: ready pods, and whether every pod runs the current
    template (``rolled_out``)."""

    replicas: int
    ready: int
    rolled_out: bool


def running_version(previous: dict[str, Any] | None) -> str | None:
    """The version last confirmed running, from the previous ``version`` status."""
    return (previous or {}).get("version") or None


def upgrading(previous: dict[str, Any] | None, wanted: str) -> bool:
    """Whether the tenant ran another version than ``wanted`` and has not finished moving."""
    running = running_version(previous)
    return running is not None and running != wanted


def control_plane_upgraded(rollout: Rollout, observed: str | None, wanted: str) -> bool:
    """Every pod runs the current template and the API reports ``wanted``."""
    return rollout.rolled_out and rollout.ready == rollout.replicas and observed == wanted


def tenant_objects_version(previous: dict[str, Any] | None, wanted: str, rollout: Rollout,
                           observed: str | None) -> str:
    """The version the in-tenant objects carry: the one running until the control plane runs
    ``wanted`` (a kube-proxy must not be newer than its API server)."""
    if not upgrading(previous, wanted) or control_plane_upgraded(rollout, observed, wanted):
        return wanted
    return running_version(previous) or wanted


def version_state(previous: dict[str, Any] | None, wanted: str, rollout: Rollout | None,
                  ran_before: bool, now: str, observed: str | None = None,
                  tenant_objects: str | None = None) -> dict[str, Any]:
    """The new ``version`` status.

    ``rollout`` None: the Deployment was not read. ``observed``: what ``/version`` answered
    (None: not asked this pass). ``tenant_objects``: the version the in-tenant objects were
    applied at this pass (None: not applied). ``now``: an RFC 3339 time for the record."""
    previous = previous or {}
    running = running_version(previous)
    state: dict[str, Any] = {}
    if previous.get("upgrade"):
        state["upgrade"] = dict(previous["upgrade"])
    if rollout is None:
        state["status"] = "NotReady" if ran_before else "Provisioning"
    elif rollout.replicas == 0:
        state["status"] = "Sleeping"
    elif rollout.ready == 0:
        state["status"] = "NotReady" if ran_before else "Provisioning"
    else:
        state["status"] = "Ready"
    if running is None:
        # Never confirmed running: the first version is the one that comes up.
        if state["status"] == "Ready" and rollout is not None and rollout.rolled_out:
            state["version"] = observed or wanted
        elif state["status"] == "Sleeping":
            state["version"] = wanted
        return state
    state["version"] = running
    if running == wanted:
        return state
    upgrade = state.get("upgrade") or {}
    if rollout is not None and rollout.replicas == 0:
        # Asleep: nothing runs to upgrade; it wakes up at the new version (an upgrade it was
        # in the middle of ends here).
        state["version"] = wanted
        if upgrade and upgrade.get("phase") != COMPLETED:
            state["upgrade"] = {**upgrade, "phase": COMPLETED, "completedAt": now}
        return state
    if upgrade.get("to") != wanted or upgrade.get("phase") == COMPLETED:
        # Every key, always: the status is merged key by key over the previous one.
        upgrade = {"from": running, "to": wanted, "phase": CONTROL_PLANE, "startedAt": now,
                   "completedAt": ""}
    if upgrade["phase"] == CONTROL_PLANE and rollout is not None and \
            control_plane_upgraded(rollout, observed, wanted):
        upgrade = {**upgrade, "phase": TENANT_OBJECTS}
    if upgrade["phase"] == TENANT_OBJECTS and tenant_objects == wanted:
        state["upgrade"] = {**upgrade, "phase": COMPLETED, "completedAt": now}
        state["version"] = wanted
        return state
    state["upgrade"] = upgrade
    if state["status"] == "Ready":
        state["status"] = "Upgrading"
    return state


def version_events(before: dict[str, Any] | None, after: dict[str, Any],
                   replicas: int = 0) -> list[Event]:
    """Events for the upgrade phases entered between two ``version`` statuses."""
    old = (before or {}).get("upgrade") or {}
    new = after.get("upgrade") or {}
    if not new:
        return []
    same = old.get("to") == new.get("to") and old.get("startedAt") == new.get("startedAt")
    events = []
    for phase in phases_entered(PHASES, old.get("phase") if same else None, new["phase"]):
        if phase == CONTROL_PLANE:
            events.append(Event("Normal", "UpgradeStarted", (
                f"upgrading from {new['from']} to {new['to']}: rolling the control-plane pods "
                f"({replicas} ready replica(s) kept: maxUnavailable 0); the objects inside "
                f"the tenant stay at {new['from']} until every pod runs {new['to']}")))
        elif phase == TENANT_OBJECTS:
            events.append(Event("Normal", "ControlPlaneUpgraded", (
                f"every control-plane pod runs {new['to']} and /version answers it; "
                "updating kubeadm-config and kube-proxy in the tenant")))
        else:
            events.append(Event("Normal", "Upgraded", (
                f"{new['from']} -> {new['to']} done (started {new['startedAt']}); kubelets "
                "keep their version: upstream supports kubelets up to three minors older "
                "than the API server, upgrade them node by node")))
    return events
