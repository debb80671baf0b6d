"""Helpers for node-tier tests: a lightkube client and the cluster's own kubectl."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from lightkube import AsyncClient, KubeConfig
from lightkube.resources.core_v1 import Pod

from haku.api.resources import TenantControlPlane
from haku.dev import addons, releases
from haku.dev import worker as workers
from haku.dev.cluster import DevCluster
from haku.dev.worker_config import Timeouts
from haku.tenant import access
from haku.tenant.access import TenantAccess


def client(cluster: DevCluster) -> AsyncClient:
    return AsyncClient(KubeConfig.from_file(cluster.layout.admin_kubeconfig),
                       field_manager="haku-test")


def kubectl(cluster: DevCluster, *args: str, kubeconfig: Path | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    config = kubeconfig or cluster.layout.admin_kubeconfig
    return subprocess.run([str(cluster.layout.bin / "kubectl"), f"--kubeconfig={config}", *args],
                          capture_output=True, text=True, check=check, timeout=60)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.5)


def pod_ready(pod: Pod) -> bool:
    return pod.status is not None and pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


async def wait_tenant_ready(c: AsyncClient, namespace: str, name: str,
                            timeout: float = 180) -> TenantAccess:
    """TenantControlPlane ``namespace/name``'s admin access once it is Ready (which includes
    TenantBootstrapped); the assertion shows its status if it does not get there."""
    got: list[TenantAccess] = []

    async def ready() -> bool:
        try:
            tenant = await access.load(c, namespace, name)
        except LookupError:
            return False
        got[:] = [tenant]
        return (tenant.condition("Ready") or {}).get("status") == "True"

    try:
        await eventually(ready, timeout, f"{name} Ready")
    except AssertionError:
        obj = await c.get(TenantControlPlane, name, namespace=namespace)
        raise AssertionError(f"{name} not Ready: {obj.to_dict().get('status')}") from None
    return got[0]


async def add_worker(cluster: DevCluster, tenant: TenantAccess,
                     timeouts: Timeouts | None = None,
                     behind_nat: bool = False) -> workers.AddResult:
    """A dev worker joined to ``tenant`` with a fresh 30-minute join command; with
    ``behind_nat`` the admin side cannot open connections to it (``haku dev worker add
    --behind-nat``). It gets the addon images that are built already (see ensure_addons)."""
    join = await access.create_join_command(tenant, timedelta(minutes=30))
    return await asyncio.to_thread(workers.add, cluster.layout,
                                   f"{tenant.namespace}/{tenant.name}", join, timeouts=timeouts,
                                   printer=lambda line: print(line, flush=True),
                                   behind_nat=behind_nat)


async def ensure_addons(cluster: DevCluster,
                        names: tuple[str, ...] = addons.NAMES) -> addons.Report:
    """Konnectivity's and metrics-server's images on the admin node (proxy-server) and on
    every existing worker (proxy-agent, metrics-server), built first if not cached (cold:
    minutes). Workers added afterwards get them from ``add_worker`` without a build."""
    return await asyncio.to_thread(addons.ensure, cluster.layout, names,
                                   lambda line: print(line, flush=True))


async def ensure_kubernetes_images(cluster: DevCluster, *kubernetes_versions: str,
                                   ) -> releases.Report:
    """The images of each Kubernetes release (``haku dev images``): its control-plane images
    on the admin node, its kube-proxy on every worker; built first if not cached (cold: about
    9 minutes a release)."""
    return await asyncio.to_thread(releases.ensure, cluster.layout, kubernetes_versions,
                                   lambda line: print(line, flush=True))


def tcp_connect(address: str, port: int, timeout: float = 3.0) -> str | None:
    """None if a TCP connection from this host to ``address:port`` opens, else why not."""
    try:
        socket.create_connection((address, port), timeout).close()
    except OSError as e:
        return str(e) or type(e).__name__
    return None
