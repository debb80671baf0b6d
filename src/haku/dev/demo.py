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
from haku.dev import samples
from haku.dev.cluster import OPERATOR, DevCluster
from haku.dev.processes import ProcessSpec

TENANT, NAMESPACE = "demo", "tenants"


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
            TENANT, NAMESPACE, samples.DATASTORE_NAMES["etcd"], cluster.versions.kubernetes)),
            force=True)
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


def run(cluster: DevCluster, out: Any = print, timeout: float = 180.0) -> Path:
    """Cluster up, operator running, sample DataStores and a TenantControlPlane Ready;
    returns the tenant's admin kubeconfig path."""
    cluster.up()
    out("operator: " + ("started" if start_operator(cluster) else "already running"))
    out(f"TenantControlPlane {NAMESPACE}/{TENANT} on DataStore dev-etcd:")
    return asyncio.run(_apply_and_wait(cluster, out, timeout))
