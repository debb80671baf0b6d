"""Benchmark: TenantControlPlane apply → a worker's Node Ready, by phase; prints one JSON document.

On the full local cluster, with the operator as its own process (``haku operator run``), for
each run a NodePort tenant with CoreDNS and kube-proxy is applied on the etcd DataStore and a
dev worker joins it. Reported per run, in seconds from the apply: when each of the tenant's
Conditions first turned True (DataStoreReady … TenantBootstrapped, Ready), then the worker's
own steps (network, containerd, images, kubeadm discovery and kubelet files, TLS bootstrap,
kubeadm finished, Node Ready) and the total. Medians over the runs come last.

Run as root: ``.venv/bin/python bench/join.py [--runs 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.codecs import from_dict

from haku.api.resources import TenantControlPlane
from haku.controller.operator import install_crds
from haku.controller.tenant import CONDITION_TYPES
from haku.dev import samples, worker
from haku.dev.cluster import DevCluster
from haku.dev.layout import Layout
from haku.tenant import access

NAMESPACE = "bench-join"


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def conditions_until_ready(client: AsyncClient, name: str,
                                 started: float) -> dict[str, float]:
    """Seconds from ``started`` at which each Condition was first seen True (0.1 s polls)."""
    seen: dict[str, float] = {}
    while "Ready" not in seen:
        obj = (await client.get(TenantControlPlane, name, namespace=NAMESPACE)).to_dict()
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c["status"] == "True" and c["type"] not in seen:
                seen[c["type"]] = round(time.perf_counter() - started, 2)
        if time.perf_counter() - started > 300:
            raise TimeoutError(f"{name} not Ready after 300s: {obj.get('status')}")
        await asyncio.sleep(0.1)
    return {t: seen[t] for t in CONDITION_TYPES if t in seen}


async def one_run(cluster: DevCluster, client: AsyncClient, index: int) -> dict[str, Any]:
    name = f"join-{index}"
    started = time.perf_counter()
    await client.apply(from_dict(samples.tenant_control_plane(
        name, NAMESPACE, "dev-etcd", cluster.versions.kubernetes, service_type="NodePort",
        port=31450 + index, addons=True)), force=True)
    tenant_conditions = await conditions_until_ready(client, name, started)
    tenant = await access.load(client, NAMESPACE, name)
    join = await access.create_join_command(tenant, timedelta(minutes=30))
    token_at = round(time.perf_counter() - started, 2)
    result = await asyncio.to_thread(worker.add, cluster.layout, f"{NAMESPACE}/{name}", join,
                                     versions=cluster.versions, printer=log)
    total = round(time.perf_counter() - started, 2)
    worker_steps = {step: round(seconds, 2) for step, seconds in result.steps}
    await asyncio.to_thread(worker.remove, cluster.layout, result.worker.name,
                            tenant_kubeconfig=tenant.kubeconfig, printer=log)
    await client.delete(TenantControlPlane, name, namespace=NAMESPACE)
    log(f"  {name}: Ready at {tenant_conditions['Ready']}s, Node Ready at {total}s")
    return {"tenant_condition_true_at_s": tenant_conditions,
            "join_token_created_at_s": token_at,
            "worker_steps_s": worker_steps,
            "apply_to_node_ready_s": total}


async def bench(runs: int) -> dict[str, Any]:
    cluster = DevCluster(Layout(state_dir=Path("/var/lib/haku/bench-join")), printer=log)
    cluster.down(purge=True)
    cluster.up()
    lay = cluster.layout
    proc = subprocess.Popen(
        [sys.executable, "-m", "haku", "operator", "run", f"--kubeconfig={lay.admin_kubeconfig}",
         "--lease-duration=5"],
        stdout=(lay.logs / "bench-operator.log").open("wb"), stderr=subprocess.STDOUT)
    client = AsyncClient(KubeConfig.from_file(lay.admin_kubeconfig), field_manager="bench",
                         trust_env=False)
    results = []
    try:
        await install_crds(client, "haku-system")
        for obj in samples.datastore_objects(lay):
            await client.apply(from_dict(obj), force=True)
        await client.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": NAMESPACE}}), force=True)
        for i in range(runs):
            results.append(await one_run(cluster, client, i))
    finally:
        await client.close()
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        cluster.down(purge=True)
    totals = [r["apply_to_node_ready_s"] for r in results]
    ready = [r["tenant_condition_true_at_s"]["Ready"] for r in results]
    return {"benchmark": "join", "kubernetes": cluster.versions.kubernetes, "runs": results,
            "median_s": {"apply_to_tenant_ready": round(statistics.median(ready), 2),
                         "apply_to_node_ready": round(statistics.median(totals), 2),
                         "tenant_ready_to_node_ready": round(
                             statistics.median(t - r for t, r in zip(totals, ready,
                                                                     strict=True)), 2)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(bench(args.runs)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
