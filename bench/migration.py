"""Benchmark: a tenant's data moved between DataStores, every driver pair; prints one JSON
document.

On the full local cluster, with the operator as its own process (``haku operator run``): a
2-replica NodePort tenant with CoreDNS and kube-proxy on ``dev-etcd``, a dev worker joined,
``--objects`` ConfigMaps (default 1,000) created in it, then ``spec.dataStore`` changed six
times so that every ordered pair of drivers is moved once: etcd → PostgreSQL → MariaDB → etcd
→ MariaDB → PostgreSQL → etcd. During each move a client (``haku.dev.client_loop``) sends 20
requests a second through the tenant's endpoint (a list, a create, a delete, in turn).

Reported per move: seconds from the patch to each phase seen in
``status.storage.migration.phase`` and to ``Completed``; the seconds writes were refused as
the status records them (``unfrozenAt - frozenAt``, whole seconds) and as the client saw them
(first to last refused write, plus one request period); the client's failed reads (aim: none)
and other failures; and the 1 s polls that found the worker's Node NotReady.

Run as root: ``.venv/bin/python bench/migration.py [--objects 1000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from lightkube import AsyncClient
from lightkube.codecs import from_dict
from lightkube.types import PatchType

from common import NodeReadyPolls, log, operator_cluster
from haku.api.resources import TenantControlPlane
from haku.dev import samples, worker
from haku.dev.client_loop import ClientLoop
from haku.dev.cluster import DevCluster
from haku.dev.versions import KUBERNETES_VERSION
from haku.render import migration
from haku.tenant import access

NAMESPACE = "bench-migration"
NAME = "mover"
ROUTE = ["dev-postgres", "dev-mariadb", "dev-etcd", "dev-mariadb", "dev-postgres", "dev-etcd"]
RATE = 20.0


def record_of(obj: dict[str, Any]) -> dict[str, Any]:
    return migration.migration_of(obj.get("status"))


def ready(obj: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


async def wait_for(client: AsyncClient, check: Any, what: str, timeout: float = 600) -> None:
    started = time.monotonic()
    while True:
        obj = (await client.get(TenantControlPlane, NAME, namespace=NAMESPACE)).to_dict()
        if check(obj):
            return
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what} not after {timeout}s: {obj.get('status')}")
        await asyncio.sleep(0.5)


def fill(cluster: DevCluster, kubeconfig: Path, objects: int) -> None:
    items = [{"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": f"cm-{i:05d}", "namespace": "moved"},
              "data": {"i": str(i), "pad": "p" * (i % 1024)}} for i in range(objects)]
    kubectl = [str(cluster.layout.bin / "kubectl"), f"--kubeconfig={kubeconfig}"]
    subprocess.run([*kubectl, "create", "namespace", "moved"], check=True, capture_output=True)
    subprocess.run([*kubectl, "create", "namespace", "loop"], check=True, capture_output=True)
    subprocess.run([*kubectl, "create", "-f", "-"], check=True, capture_output=True, text=True,
                   input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


async def one_move(client: AsyncClient, tenant: access.TenantAccess, node: str, target: str,
                   index: int) -> dict[str, Any]:
    before = (await client.get(TenantControlPlane, NAME, namespace=NAMESPACE)).to_dict()
    source = before["status"]["storage"]["dataStoreName"]

    async def kubeconfig() -> dict[str, Any]:
        return tenant.kubeconfig

    loop = ClientLoop(kubeconfig, namespace="loop", rate=RATE, prefix=f"move-{index}")
    stop = asyncio.Event()
    t = tenant.client()
    node_polls = NodeReadyPolls(t, node)
    running = asyncio.create_task(loop.run(stop))
    watching = asyncio.create_task(node_polls.run(stop))
    phases: dict[str, float] = {}
    try:
        await asyncio.sleep(3)
        started = time.monotonic()
        await client.patch(TenantControlPlane, NAME, {"spec": {"dataStore": target}},
                           namespace=NAMESPACE, patch_type=PatchType.MERGE)
        while True:
            obj = (await client.get(TenantControlPlane, NAME, namespace=NAMESPACE)).to_dict()
            record = record_of(obj)
            phase = record.get("phase")
            if (record.get("to") or {}).get("dataStoreName") == target and phase and \
                    phase not in phases:
                phases[phase] = round(time.monotonic() - started, 2)
                log(f"  {source} -> {target}: {phase} at {phases[phase]}s")
            if phase == "Completed" and (record.get("to") or {}).get("dataStoreName") == target \
                    and ready(obj):
                break
            if time.monotonic() - started > 600:
                raise TimeoutError(f"not moved after 600s: {obj.get('status')}")
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)
    finally:
        stop.set()
        await asyncio.gather(running, watching)
        await t.close()
    refused = [r.at for r in loop.requests if r.error.startswith("403")]
    reads_failed = [r for r in loop.failures() if r.operation == "list"]
    other = [r for r in loop.failures() if not r.error.startswith("403")
             and r.operation != "list" and not r.error.startswith("404")]
    summary = loop.summary()
    return {
        "from": source, "to": target, "phase_reached_at_s": phases,
        "migration_s": phases.get("Completed"),
        "keys": record.get("keys"),
        "writes_refused_status_s": migration.writes_refused_seconds(record),
        "writes_refused_client_s": (round(refused[-1] - refused[0] + 1.0 / RATE, 2)
                                    if refused else 0.0),
        "writes_refused": len(refused), "reads_failed": len(reads_failed),
        "read_errors": sorted({r.error[:200] for r in reads_failed})[:5],
        "other_failures": [r.error for r in other][:10],
        "requests": summary["requests"], "node_not_ready_polls": node_polls.not_ready,
    }


async def bench(objects: int, count: int = len(ROUTE)) -> dict[str, Any]:
    moves = []
    async with operator_cluster(Path("/var/lib/haku/bench-migration"), NAMESPACE) as (
            cluster, client):
        doc = samples.tenant_control_plane(NAME, NAMESPACE, "dev-etcd", KUBERNETES_VERSION,
                                           replicas=2, service_type="NodePort", port=None,
                                           addons=True)
        await client.apply(from_dict(doc), force=True)
        await wait_for(client, ready, "Ready")
        tenant = await access.load(client, NAMESPACE, NAME)
        join = await access.create_join_command(tenant, timedelta(minutes=30))
        result = await asyncio.to_thread(worker.add, cluster.layout, f"{NAMESPACE}/{NAME}",
                                         join, printer=log)
        config = cluster.layout.state_dir / "bench-migration-tenant.kubeconfig"
        config.write_text(yaml.safe_dump(tenant.kubeconfig))
        t0 = time.monotonic()
        await asyncio.to_thread(fill, cluster, config, objects)
        log(f"  {objects} ConfigMaps in {time.monotonic() - t0:.1f}s")
        for i, target in enumerate(ROUTE[:count]):
            moves.append(await one_move(client, tenant, result.worker.node_name, target, i))
        await asyncio.to_thread(worker.remove, cluster.layout, result.worker.name,
                                tenant_kubeconfig=tenant.kubeconfig, printer=log)
        await client.delete(TenantControlPlane, NAME, namespace=NAMESPACE)
    refused = [m["writes_refused_client_s"] for m in moves]
    return {"benchmark": "migration", "objects": objects, "replicas": 2, "moves": moves,
            "max_writes_refused_client_s": max(refused),
            "reads_failed_total": sum(m["reads_failed"] for m in moves),
            "aim": "writes refused <= 10 s for a 1,000-object tenant, reads never refused"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--moves", type=int, default=len(ROUTE),
                        help="only the first N moves of the route (default: all six)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(bench(args.objects, args.moves)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
