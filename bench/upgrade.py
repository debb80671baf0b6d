"""Benchmark: a tenant upgrade one minor up under load; prints one JSON document.

On the full local cluster, with the operator as its own process (``haku operator run``), for
each run: a 2-replica NodePort tenant on the previous release
(``haku.dev.versions.PREVIOUS_KUBERNETES_VERSION``) with CoreDNS and kube-proxy, a dev worker
joined on that release's kubelet, then ``spec.kubernetes.version`` raised to the current one
while a client (``haku.dev.client_loop``) sends 5 requests a second through the tenant's
endpoint. Reported per run: seconds from the patch to each upgrade phase
(``status.kubernetesResources.version.upgrade.phase``) and to ``Completed``, the client's
requests and failed requests, and the seconds the worker's Node was seen NotReady (1 s polls).

Both releases are built and imported first if not cached (``haku dev images``; cold: about
9 minutes each). Run as root: ``.venv/bin/python bench/upgrade.py [--runs 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from lightkube import AsyncClient
from lightkube.codecs import from_dict
from lightkube.types import PatchType

from common import NodeReadyPolls, log, operator_cluster
from haku.api.resources import TenantControlPlane
from haku.dev import releases, samples, worker
from haku.dev.client_loop import ClientLoop
from haku.dev.cluster import DevCluster
from haku.dev.versions import KUBERNETES_VERSION, PREVIOUS_KUBERNETES_VERSION
from haku.tenant import access

NAMESPACE = "bench-upgrade"
OLD, NEW = PREVIOUS_KUBERNETES_VERSION, KUBERNETES_VERSION


def version_of(obj: dict[str, Any]) -> dict[str, Any]:
    return ((obj.get("status") or {}).get("kubernetesResources") or {}).get("version") or {}


async def wait_ready(client: AsyncClient, name: str, timeout: float = 300) -> None:
    started = time.monotonic()
    while True:
        obj = (await client.get(TenantControlPlane, name, namespace=NAMESPACE)).to_dict()
        ready = [c for c in (obj.get("status") or {}).get("conditions") or []
                 if c["type"] == "Ready" and c["status"] == "True"]
        if ready and version_of(obj).get("status") == "Ready":
            return
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{name} not Ready after {timeout}s: {obj.get('status')}")
        await asyncio.sleep(0.5)


async def one_run(cluster: DevCluster, client: AsyncClient, index: int) -> dict[str, Any]:
    name = f"upgrade-{index}"
    doc = samples.tenant_control_plane(name, NAMESPACE, "dev-etcd", OLD, replicas=2,
                                       service_type="NodePort", port=None, addons=True)
    await client.apply(from_dict(doc), force=True)
    await wait_ready(client, name)
    tenant = await access.load(client, NAMESPACE, name)
    join = await access.create_join_command(tenant, timedelta(minutes=30))
    result = await asyncio.to_thread(worker.add, cluster.layout, f"{NAMESPACE}/{name}", join,
                                     printer=log)
    node = result.worker.node_name

    async def kubeconfig() -> dict[str, Any]:
        return tenant.kubeconfig

    loop = ClientLoop(kubeconfig, rate=5.0, prefix=f"bench-{index}")
    stop = asyncio.Event()
    t = tenant.client()
    node_polls = NodeReadyPolls(t, node)
    running = asyncio.create_task(loop.run(stop))
    watching = asyncio.create_task(node_polls.run(stop))
    phases: dict[str, float] = {}
    try:
        await asyncio.sleep(5)
        started = time.monotonic()
        await client.patch(TenantControlPlane, name, {"spec": {"kubernetes": {"version": NEW}}},
                           namespace=NAMESPACE, patch_type=PatchType.MERGE)
        while "Completed" not in phases:
            version = version_of(
                (await client.get(TenantControlPlane, name, namespace=NAMESPACE)).to_dict())
            phase = (version.get("upgrade") or {}).get("phase")
            if version.get("upgrade", {}).get("to") == NEW and phase and phase not in phases:
                phases[phase] = round(time.monotonic() - started, 2)
                log(f"  {name}: {phase} at {phases[phase]}s")
            if time.monotonic() - started > 600:
                raise TimeoutError(f"{name} not upgraded after 600s: {version}")
            await asyncio.sleep(0.2)
        await asyncio.sleep(5)
    finally:
        stop.set()
        await asyncio.gather(running, watching)
        await t.close()
    await asyncio.to_thread(worker.remove, cluster.layout, result.worker.name,
                            tenant_kubeconfig=tenant.kubeconfig, printer=log)
    await client.delete(TenantControlPlane, name, namespace=NAMESPACE)
    summary = loop.summary()
    return {"from": OLD, "to": NEW, "replicas": 2, "phase_reached_at_s": phases,
            "upgrade_s": phases["Completed"], "client": summary,
            "node_not_ready_polls": node_polls.not_ready}


async def bench(runs: int) -> dict[str, Any]:
    def images(cluster: DevCluster) -> None:
        releases.ensure(cluster.layout, [OLD, NEW], log)

    results = []
    async with operator_cluster(Path("/var/lib/haku/bench-upgrade"), NAMESPACE,
                                images) as (cluster, client):
        for i in range(runs):
            results.append(await one_run(cluster, client, i))
    return {"benchmark": "upgrade", "runs": results,
            "failed_requests_total": sum(r["client"]["failed"] for r in results),
            "requests_total": sum(r["client"]["requests"] for r in results)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(bench(args.runs)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
