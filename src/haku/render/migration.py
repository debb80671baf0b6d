"""Moving a tenant's data to another DataStore (pure): the phases, recorded in
``status.storage.migration``, and what each pass does next.

Changing ``spec.dataStore`` of a provisioned tenant starts a migration. Its phases:

==============  =================================================================  ==========
phase           what happens                                                       cancellable
==============  =================================================================  ==========
Provisioning    the tenant's space and user on the target (same logical names)     yes
Freezing        a ValidatingAdmissionPolicy in the tenant refuses writes           yes
Copying         the target is cleared, then a snapshot of the source is loaded     yes
Verifying       source and target compared (count and per-key checksums)           yes
Switching       status.storage points at the target: the Deployment rolls          no
Unfreezing      the policy is deleted through the new pods; writes are accepted    no
Cleaning        the source space and user are deleted                              no
Completed       the record stays, with its times
==============  =================================================================  ==========

Each phase is safe to run again (a copy starts over with a cleared target), so an operator
killed at any point resumes from the recorded phase. Setting ``spec.dataStore`` back (or to
a third DataStore) before Switching cancels: the policy goes, the target space is deleted,
the phase becomes Cancelled (and a move to the third DataStore starts from the source).
From Switching on the migration finishes first; a new ``spec.dataStore`` is a new move.

The freeze holds subresources (status) too; it lets through leases, events, token and access
reviews, and kube-apiserver's and the operator's own writes: those may change the source
after the copy and are not carried over (leases and events are renewed; the API server and
the operator write theirs again). Verification therefore ignores keys under
:data:`EXEMPT_PREFIXES`; any other change in the source after the copy means a write got
through (an API server replica that had not yet seen the policy), and the copy starts over.

The freeze counts as enforced only once every control-plane pod whose API server runs refuses
a dry-run write, asked directly at its pod IP (:func:`api_servers`): asked through the
Service, one answer speaks for one replica only, and a replica slow to see the policy would
take writes after the copy that no later check can carry over. A pod whose API server starts
later lists the policy before it admits anything (the admission plugin waits for its first
sync), so it needs no asking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from haku.render.controlplane import API_PORT_NAME

PHASES = ("Provisioning", "Freezing", "Copying", "Verifying", "Switching", "Unfreezing",
          "Cleaning", "Completed")
CANCELLABLE = frozenset(PHASES[:4])
IN_PROGRESS = frozenset(PHASES[:-1])
ENDED = frozenset({"Completed", "Cancelled"})
# Keys whose writes the freeze lets through (see the module): not compared.
EXEMPT_PREFIXES = (b"/leases/", b"/events/", b"/masterleases/")
COPY_ATTEMPTS = 3
FREEZE_NAME = "haku-migration-freeze"  # haku.render.write_permissions.MIGRATION_NAME
API_CONTAINER = "kube-apiserver"  # the container's name in haku.render.controlplane


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def freeze_key(key: bytes) -> bool:
    """Whether ``key`` holds the migration's own freeze (its ValidatingAdmissionPolicy or
    binding). Not copied: the pods that start on the target accept writes at once, while
    the old pods, still on the source, refuse them until they are gone."""
    return key.endswith(b"/" + FREEZE_NAME.encode()) and b"/validatingadmissionpolic" in key


def copied(key: bytes) -> bool:
    return not freeze_key(key)


def compared(key: bytes) -> bool:
    """Whether verification compares this key (writes to it are refused while frozen)."""
    return copied(key) and not key.startswith(EXEMPT_PREFIXES)


def migration_of(status: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(((status or {}).get("storage") or {}).get("migration") or {})


def in_progress(migration: Mapping[str, Any]) -> bool:
    return migration.get("phase") in IN_PROGRESS


def wanted_datastore(obj: Mapping[str, Any], default: str | None) -> str | None:
    return (obj.get("spec") or {}).get("dataStore") or default


def decide(wanted: str | None, pinned: str | None, migration: Mapping[str, Any]) -> str:
    """What this pass does: ``"none"``, ``"start"``, ``"cancel"`` or ``"continue"``."""
    if in_progress(migration):
        target = (migration.get("to") or {}).get("dataStoreName")
        if migration.get("phase") in CANCELLABLE and wanted != target:
            return "cancel"
        return "continue"
    if wanted and pinned and wanted != pinned:
        return "start"
    return "none"


def started(storage: Mapping[str, Any], target: str) -> dict[str, Any]:
    """A new migration's record: from the pinned ``storage`` to DataStore ``target``."""
    requested = storage.get("requested") or {}
    setup = storage.get("setup") or {}
    return {
        "phase": "Provisioning", "startedAt": now(), "attempts": 0,
        "from": {"dataStoreName": storage.get("dataStoreName"), "driver": storage.get("driver"),
                 "schema": requested.get("schema") or setup.get("schema"),
                 "user": requested.get("user") or setup.get("user")},
        "to": {"dataStoreName": target},
        # Fields of an earlier, ended migration that do not apply to this one.
        "frozenAt": None, "switchedAt": None, "unfrozenAt": None, "completedAt": None,
        "cancelledAt": None, "keys": None, "digest": None, "message": None,
    }


def writes_refused_seconds(migration: Mapping[str, Any]) -> float | None:
    """From the freeze to its lifting, as recorded (None until both are known)."""
    try:
        a = datetime.fromisoformat(str(migration["frozenAt"]).replace("Z", "+00:00"))
        b = datetime.fromisoformat(str(migration["unfrozenAt"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None
    return (b - a).total_seconds()


def describe(migration: Mapping[str, Any]) -> str:
    src = (migration.get("from") or {}).get("dataStoreName")
    dst = (migration.get("to") or {}).get("dataStoreName")
    return f"from DataStore {src} to {dst}"


def api_servers(pods: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(pod name, ``https://`` URL at its pod IP) of each pod (dicts, as the API gives them)
    whose API server container runs now, terminating pods included: they serve until they
    stop. The port is the container's port named ``API_PORT_NAME``."""
    found = []
    for pod in pods:
        status, spec = pod.get("status") or {}, pod.get("spec") or {}
        ip = status.get("podIP")
        running = any(c.get("name") == API_CONTAINER and (c.get("state") or {}).get("running")
                      for c in status.get("containerStatuses") or [])
        ports = [p.get("containerPort") for c in spec.get("containers") or []
                 if c.get("name") == API_CONTAINER for p in c.get("ports") or []
                 if p.get("name") == API_PORT_NAME]
        if not (ip and running and ports):
            continue
        host = f"[{ip}]" if ":" in ip else ip
        found.append((str((pod.get("metadata") or {}).get("name")), f"https://{host}:{ports[0]}"))
    return found
