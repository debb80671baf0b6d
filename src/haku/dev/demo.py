"""``make demo``: the local admin cluster, the operator, and a ready tenant to use."""

from __future__ import annotations

import asyncio
import base64
import sys
import time
from pathlib import Path
from typing import Any

from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Secret

from haku.api import conditions
from haku.controller.operator import install_crds
from haku.controller.tenant import TenantControlPlane
from haku.dev import samples, worker
from haku.dev.cluster import OPERATOR, DevCluster
from haku.dev.processes import ProcessSpec

TENANT, NAMESPACE = "demo", "tenants"
PORT = 31443  # the demo tenant's NodePort, where its worker joins it


def start_operator(cluster: DevCluster) -> bool:
    """Run ``haku operator run`` as a recorded process of the dev cluster."""
    lay = cluster.layout
    spec = ProcessSpec(OPERATOR, [sys.executable, "-m", "haku", "operator", "run",
                                  f"--kubeconfig={lay.admin_kubeconfig}"])
    _, started = cluster.supervisor.start(spec)
    return started


async def _apply_and_wait(cluster: DevCluster, out: Any, timeout: float) -> Path:
    lay = cluster.layout
    client = AsyncClient(KubeConfig.from_file(lay.admin_kubeconfig), field_manager="haku-demo",
                         trust_env=False)
    try:
        await install_crds(client, "haku-system")
        for obj in samples.datastore_objects(lay):
            await client.apply(from_dict(obj), force=True)
        await client.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": NAMESPACE}}), force=True)
        await client.apply(from_dict(samples.tenant_control_plane(
            TENANT, NAMESPACE, samples.DATASTORE_NAMES["etcd"], cluster.versions.kubernetes,
            service_type="NodePort", port=PORT, addons=True)), force=True)
        started, last = time.monotonic(), ""
        while True:
            try:
                got = await client.get(TenantControlPlane, TENANT, namespace=NAMESPACE)
                obj = got.to_dict()  # type: ignore[no-untyped-call]
            except ApiError:
                obj = {}
            status = obj.get("status") or {}
            ready = conditions.find(status.get("conditions"), "Ready")
            line = (f"{ready['status']} ({ready['reason']}: {ready['message']})" if ready
                    else "waiting for the operator")
            if line != last:
                out(f"  {time.monotonic() - started:5.1f}s  Ready={line}")
                last = line
            if ready and ready["status"] == "True":
                break
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"tenant {NAMESPACE}/{TENANT} not Ready after {timeout:.0f}s: "
                                   f"{last}; see {lay.logs / (OPERATOR + '.log')}")
            await asyncio.sleep(0.5)
        secret = await client.get(Secret, status["kubeconfig"]["admin"]["secretName"],
                                  namespace=NAMESPACE)
        path = lay.state_dir / "tenants" / f"{TENANT}.kubeconfig"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(base64.b64decode((secret.data or {})["admin.conf"]))
        path.chmod(0o600)
        return path
    finally:
        await client.close()


def join_worker(cluster: DevCluster, out: Any = print) -> str:
    """A worker joined to the demo tenant (the one there already, if Ready); its Node name."""
    tenant = f"{NAMESPACE}/{TENANT}"
    for w in worker.list_workers(cluster.layout):
        if w.tenant == tenant and w.state == "ready":
            out(f"worker {w.name} (node {w.node_name}) already joined {tenant}")
            return w.node_name
    join = asyncio.run(worker.tenant_join(cluster.layout.admin_kubeconfig, tenant))
    result = worker.add(cluster.layout, tenant, join.join, versions=cluster.versions,
                        printer=out, avoid_nodes=join.nodes)
    return result.worker.node_name


def run(cluster: DevCluster, out: Any = print, timeout: float = 180.0) -> tuple[Path, str]:
    """Cluster up, operator running, sample DataStores, a TenantControlPlane Ready and a
    worker joined to it; returns the tenant's admin kubeconfig path and the worker's Node."""
    cluster.up()
    out("operator: " + ("started" if start_operator(cluster) else "already running"))
    out(f"TenantControlPlane {NAMESPACE}/{TENANT} on DataStore dev-etcd, NodePort {PORT}, "
        "with CoreDNS and kube-proxy:")
    kubeconfig = asyncio.run(_apply_and_wait(cluster, out, timeout))
    return kubeconfig, join_worker(cluster, out)
