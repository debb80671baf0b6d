"""Benchmark: TenantControlPlane apply → a worker's Node Ready, by phase; prints one JSON document.

On the full local cluster, with the operator as its own process (``haku operator run``), for
each run a NodePort tenant with CoreDNS and kube-proxy is applied on the etcd DataStore and a
dev worker joins it. Reported per run, in seconds from the apply: when each of the tenant's
Conditions first turned True (DataStoreReady … TenantBootstrapped, Ready), then the worker's
own steps (network, containerd, images, kubeadm discovery and kubelet files, TLS bootstrap,
kubeadm finished, Node Ready) and the total. Medians over the runs come last, per variant.

Variants (``--variants``, run alternately): ``plain`` as above; ``konnectivity``: the tenant
has ``addons.konnectivity`` (its node port allocated, no networkProfile.port) and the worker
joins from behind NAT (``--behind-nat``); its run also reports when
``KonnectivityConnected`` turned True (the agent on the new node connected). The Konnectivity
images are built first if not cached (``haku dev addons``). ``loadbalancer``: the tenant's
Service is a LoadBalancer, whose address MetalLB assigns (``haku dev loadbalancer``, set up
first); the worker joins through that address. ``ingress`` and ``gateway``: the tenant
(ClusterIP Service) is behind the dev cluster's Traefik (``haku dev exposure up``, set up
first) by its host name ``join-<n>.bench.haku.test`` (in Haku's ``/etc/hosts`` block, removed
at the end), as an Ingress with TLS passthrough on :8443 or a TLSRoute on the Gateway's
:9443; the worker joins through the host name.

Run as root: ``.venv/bin/python bench/join.py [--runs 3] [--variants plain,konnectivity]``
(any of plain, konnectivity, loadbalancer, ingress, gateway).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from lightkube import AsyncClient
from lightkube.codecs import from_dict

from common import log, operator_cluster
from haku.api.resources import TenantControlPlane
from haku.controller.tenant import CONDITION_TYPES
from haku.dev import addons, exposure, loadbalancer, samples, worker
from haku.dev.cluster import DevCluster
from haku.tenant import access

NAMESPACE = "bench-join"
VARIANTS = ("plain", "konnectivity", "loadbalancer", "ingress", "gateway")


async def conditions_until(client: AsyncClient, name: str, started: float,
                           until: str = "Ready",
                           seen: dict[str, float] | None = None) -> dict[str, float]:
    """Seconds from ``started`` at which each Condition was first seen True (0.1 s polls),
    until ``until`` is."""
    seen = {} if seen is None else seen
    while until not in seen:
        obj = (await client.get(TenantControlPlane, name, namespace=NAMESPACE)).to_dict()
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c["status"] == "True" and c["type"] not in seen:
                seen[c["type"]] = round(time.perf_counter() - started, 2)
        if time.perf_counter() - started > 300:
            raise TimeoutError(f"{name} not {until} after 300s: {obj.get('status')}")
        await asyncio.sleep(0.1)
    return {t: seen[t] for t in CONDITION_TYPES if t in seen}


async def one_run(cluster: DevCluster, client: AsyncClient, index: int,
                  variant: str) -> dict[str, Any]:
    name = f"join-{index}"
    konnectivity = variant == "konnectivity"
    fronted = variant in ("ingress", "gateway")  # a host name on the dev cluster's Traefik
    service = {"loadbalancer": "LoadBalancer"}.get(variant, "ClusterIP" if fronted
                                                   else "NodePort")
    doc = samples.tenant_control_plane(
        name, NAMESPACE, "dev-etcd", cluster.versions.kubernetes, service_type=service,
        port=None if konnectivity else 31450 + index if service == "NodePort" else 6443,
        addons=True)
    if konnectivity:
        doc["spec"]["addons"]["konnectivity"] = {}
    if fronted:
        host = f"{name}.bench.haku.test"
        exposure.add_hosts([host], cluster.layout.node_ip)
        doc["spec"]["controlPlane"][variant] = (
            exposure.ingress_spec(host) if variant == "ingress" else exposure.gateway_spec(host))
    started = time.perf_counter()
    await client.apply(from_dict(doc), force=True)
    tenant_conditions = await conditions_until(client, name, started)
    tenant = await access.load(client, NAMESPACE, name)
    join = await access.create_join_command(tenant, timedelta(minutes=30))
    token_at = round(time.perf_counter() - started, 2)
    result = await asyncio.to_thread(worker.add, cluster.layout, f"{NAMESPACE}/{name}", join,
                                     versions=cluster.versions, printer=log,
                                     behind_nat=konnectivity)
    total = round(time.perf_counter() - started, 2)
    worker_steps = {step: round(seconds, 2) for step, seconds in result.steps}
    if konnectivity:
        await conditions_until(client, name, started, "KonnectivityConnected",
                               tenant_conditions)
    await asyncio.to_thread(worker.remove, cluster.layout, result.worker.name,
                            tenant_kubeconfig=tenant.kubeconfig, printer=log)
    await client.delete(TenantControlPlane, name, namespace=NAMESPACE)
    log(f"  {name} ({variant}): Ready at {tenant_conditions['Ready']}s, Node Ready at {total}s")
    return {"variant": variant, "tenant_condition_true_at_s": tenant_conditions,
            "endpoint": result.worker.endpoint, "join_token_created_at_s": token_at,
            "worker_steps_s": worker_steps,
            "apply_to_node_ready_s": total}


async def bench(runs: int, variants: list[str]) -> dict[str, Any]:
    def images(cluster: DevCluster) -> None:
        if "konnectivity" in variants:
            addons.ensure(cluster.layout, ["konnectivity"], log)
        if "loadbalancer" in variants:
            loadbalancer.ensure(cluster.layout, log)
        if {"ingress", "gateway"} & set(variants):
            exposure.up(cluster.layout, log)

    results = []
    hosts = exposure.hosts_names(exposure.HOSTS.read_text())
    async with operator_cluster(Path("/var/lib/haku/bench-join"), NAMESPACE,
                                images) as (cluster, client):
        try:
            for i in range(runs):
                for j, variant in enumerate(variants):
                    results.append(await one_run(cluster, client, i * len(variants) + j,
                                                 variant))
        finally:
            exposure.set_hosts(hosts, cluster.layout.node_ip)
    medians: dict[str, Any] = {}
    for variant in variants:
        mine = [r for r in results if r["variant"] == variant]
        totals = [r["apply_to_node_ready_s"] for r in mine]
        ready = [r["tenant_condition_true_at_s"]["Ready"] for r in mine]
        medians[variant] = {
            "apply_to_tenant_ready": round(statistics.median(ready), 2),
            "apply_to_node_ready": round(statistics.median(totals), 2),
            "tenant_ready_to_node_ready": round(statistics.median(
                t - r for t, r in zip(totals, ready, strict=True)), 2)}
        connected = [r["tenant_condition_true_at_s"].get("KonnectivityConnected")
                     for r in mine]
        if all(connected):
            medians[variant]["apply_to_agent_connected"] = round(
                statistics.median(c for c in connected if c), 2)
    return {"benchmark": "join", "kubernetes": cluster.versions.kubernetes,
            "variants": variants, "runs": results, "median_s": medians}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each variant")
    parser.add_argument("--variants", default="plain,konnectivity",
                        help="comma-separated: plain, konnectivity (run alternately)")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown or not variants:
        parser.error(f"unknown variants {sorted(unknown)}; use {', '.join(VARIANTS)}")
    print(json.dumps(asyncio.run(bench(args.runs, variants)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
