"""Asking for a CA rotation and following it (``haku rotate-ca``; haku.render.ca_rotation)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from lightkube import AsyncClient
from lightkube.types import PatchType

from haku.api.resources import TenantControlPlane
from haku.render import ca_rotation as cr

Printer = Callable[[str], None]


def node_steps(namespace: str, name: str) -> list[str]:
    """What node owners do while the rotation waits for them (docs/ca-rotation.md)."""
    return [
        "On each node of the tenant (docs/ca-rotation.md has the commands):",
        f"  1. a bootstrap token: haku join-command {namespace}/{name} --ttl 1h",
        "  2. the new CA bundle from kube-public/cluster-info into /etc/kubernetes/pki/ca.crt",
        "     and a /etc/kubernetes/bootstrap-kubelet.conf holding it and the token",
        "  3. remove /etc/kubernetes/kubelet.conf and /var/lib/kubelet/pki/kubelet-client-*,",
        "     then restart the kubelet: it gets a client certificate from the new CA; the node",
        "     keeps its name and its pods",
        "The old CA is dropped once every Ready node has renewed.",
    ]


async def request(admin: AsyncClient, namespace: str, name: str,
                  value: str | None = None) -> str:
    """Set the rotation annotation (a new value: the time); returns it."""
    value = value or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    await admin.patch(TenantControlPlane, name,
                      {"metadata": {"annotations": {cr.ANNOTATION: value}}},
                      namespace=namespace, patch_type=PatchType.MERGE)
    return value


async def follow(admin: AsyncClient, namespace: str, name: str, value: str,
                 printer: Printer, timeout: float, until: str = cr.COMPLETED,
                 poll: float = 1.0) -> dict[str, Any]:
    """Print each phase of rotation ``value`` as it is entered, until phase ``until`` (or
    later) is reached; TimeoutError after ``timeout`` seconds."""
    order = list(cr.PHASES)
    started = time.monotonic()
    last: tuple[str, tuple[str, ...]] | None = None
    while True:
        obj = (await admin.get(TenantControlPlane, name,
                               namespace=namespace)).to_dict()  # type: ignore[no-untyped-call]
        rotation = cr.rotation_of(obj.get("status"))
        phase = rotation.get("phase", "") if rotation.get("requested") == value else ""
        pending = tuple(rotation.get("pendingNodes") or ()) if phase == cr.NODES_PENDING \
            else ()
        if phase and (phase, pending) != last:
            last = (phase, pending)
            line = f"{time.monotonic() - started:6.1f}s  {phase}"
            if phase == cr.TRUSTING:
                line += f": new CA {rotation.get('currentCA')} beside {rotation.get('previousCA')}"
            elif phase == cr.NODES_PENDING:
                line += f": nodes to renew: {', '.join(pending) or 'none'}"
            printer(line)
            if phase == cr.NODES_PENDING and pending:
                for step in node_steps(namespace, name):
                    printer(step)
        if phase in order and order.index(phase) >= order.index(until):
            return rotation
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{namespace}/{name}: rotation {value} not {until} after "
                               f"{timeout:.0f}s (phase {phase or 'not started'})")
        await asyncio.sleep(poll)
