"""Benchmark: the operator's memory in-cluster, idle and with N tenants; prints one JSON document.

On a fresh full local cluster the operator is installed as ``make demo`` does (its own image,
``kubectl apply -k deploy/``, 2 replicas). Measured: the leader's resident memory (VmRSS of its
process on the node) after 20 s idle, then after N TenantControlPlanes (default 100) on the
etcd DataStore have been reconciled and 20 s have passed, and the time to reconcile them.
The tenants have ``replicas: 0`` (Kamaji's "Sleeping"): every object, certificate and datastore
tenant is made, but no control-plane pod runs (100 kube-apiservers do not fit on 2 cores).
The standby's RSS is reported too.

Run as root: ``.venv/bin/python bench/operator_in_cluster.py [--tenants 100]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Pod

from haku.api.resources import TenantControlPlane
from haku.dev import demo, samples
from haku.dev.cluster import DevCluster
from haku.dev.layout import Layout

NAMESPACE = "bench-rss"


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def rss_of_pod(uid: str) -> float:
    """VmRSS (MiB) of the operator process in the pod with ``uid`` (found by its cgroup)."""
    marker = uid.replace("-", "_")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            cgroup = (proc / "cgroup").read_text()
        except OSError:
            continue
        if b"haku\0operator\0run" in cmdline and (uid in cgroup or marker in cgroup):
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    raise LookupError(f"no operator process in pod {uid}")


async def pods(client: AsyncClient) -> dict[str, str]:
    """Operator pod name → UID."""
    return {p.metadata.name: p.metadata.uid
            async for p in client.list(Pod, namespace="haku-system",
                                       labels={"app.kubernetes.io/name": "haku"})
            if p.metadata and p.metadata.name and p.metadata.uid}


async def memory(client: AsyncClient) -> dict[str, float]:
    lease = await client.get(Lease, "haku-operator", namespace="haku-system")
    leader = (lease.spec.holderIdentity or "").rsplit("-", 1)[0]
    by_pod = {name: rss_of_pod(uid) for name, uid in (await pods(client)).items()}
    return {"leader_rss_mib": by_pod.pop(leader),
            "standby_rss_mib": next(iter(by_pod.values()), 0.0)}


async def reconciled(client: AsyncClient, names: set[str]) -> int:
    done = 0
    async for t in client.list(TenantControlPlane, namespace=NAMESPACE):
        obj: dict[str, Any] = t.to_dict()
        status = obj.get("status") or {}
        if obj["metadata"]["name"] in names and \
                status.get("observedGeneration") == obj["metadata"]["generation"] and \
                status.get("kubeconfig"):
            done += 1
    return done


async def bench(count: int) -> dict[str, Any]:
    cluster = DevCluster(Layout(state_dir=Path("/var/lib/haku/bench-in-cluster")), printer=log)
    cluster.down(purge=True)
    cluster.up()
    result: dict[str, Any] = {"benchmark": "operator_in_cluster", "tenants": count}
    try:
        await asyncio.to_thread(demo.deploy_operator, cluster, log)
        client = AsyncClient(KubeConfig.from_file(cluster.layout.admin_kubeconfig),
                             field_manager="bench", trust_env=False)
        try:
            for obj in samples.datastore_objects(cluster.layout):
                await client.apply(from_dict(obj), force=True)
            await client.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": NAMESPACE}}), force=True)
            await asyncio.sleep(20)
            result["idle"] = await memory(client)
            log(f"idle: {result['idle']}")
            names = {f"rss-{i:03d}" for i in range(count)}
            started = time.perf_counter()
            for name in sorted(names):
                await client.apply(from_dict(samples.tenant_control_plane(
                    name, NAMESPACE, "dev-etcd", cluster.versions.kubernetes, replicas=0)),
                    force=True)
            while (done := await reconciled(client, names)) < count:
                if time.perf_counter() - started > 900:
                    raise TimeoutError(f"only {done} of {count} reconciled after 900 s")
                await asyncio.sleep(1)
            result["reconcile_all_s"] = round(time.perf_counter() - started, 1)
            log(f"{count} tenants reconciled in {result['reconcile_all_s']}s")
            await asyncio.sleep(20)
            result[f"with_{count}_tenants"] = await memory(client)
        finally:
            await client.close()
    finally:
        cluster.down(purge=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(bench(args.tenants)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
