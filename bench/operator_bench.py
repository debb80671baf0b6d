"""Benchmark of the operator; prints one JSON document.

- ready: on the full local cluster, TenantControlPlanes applied one after another; the time
  from apply to Ready (its API answering through its Service) for each, p50 and p95.
- scale: on the API-only tier (Deployments are written, no pods run) with the etcd datastore,
  N TenantControlPlanes in all (default 100, 500, 1000): the time until the operator has
  reconciled every one (status written for the current generation, certificates issued), and
  the operator's RSS and CPU over an idle window afterwards.

The operator runs as its own process (``haku operator run``) so its memory and CPU are its own;
the ready part keeps its log (per-step reconcile times) in ``$HAKU_BENCH_OPERATOR_LOG``
(default ``/tmp/haku-bench-operator.log``).
Run as root: ``.venv/bin/python bench/operator_bench.py [--ready 10] [--scale 100,500,1000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.codecs import from_dict

from haku.api import conditions
from haku.api.resources import TenantControlPlane
from haku.controller.operator import install_crds
from haku.dev import samples
from haku.dev.cluster import DevCluster
from haku.dev.layout import Layout

TICKS = os.sysconf("SC_CLK_TCK")


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_operator(kubeconfig: Path, algorithm: str, workers: int,
                   logfile: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "haku", "operator", "run", f"--kubeconfig={kubeconfig}",
         f"--key-algorithm={algorithm}", f"--workers={workers}", "--lease-duration=5"],
        stdout=logfile.open("wb"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


async def prepare(client: AsyncClient, layout: Layout, namespace: str) -> None:
    await install_crds(client, "haku-system")
    for obj in samples.datastore_objects(layout):
        await client.apply(from_dict(obj), force=True)
    await client.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                                  "metadata": {"name": namespace}}), force=True)


async def bench_ready(count: int, algorithm: str) -> dict[str, Any]:
    cluster = DevCluster(Layout(state_dir=Path("/var/lib/haku/bench")), printer=log)
    cluster.down(purge=True)
    cluster.up()
    lay = cluster.layout
    operator_log = Path(os.environ.get("HAKU_BENCH_OPERATOR_LOG", "/tmp/haku-bench-operator.log"))
    proc = start_operator(lay.admin_kubeconfig, algorithm, 4, operator_log)
    client = AsyncClient(KubeConfig.from_file(lay.admin_kubeconfig), field_manager="bench",
                         trust_env=False)
    seconds = []
    try:
        await prepare(client, lay, "bench")
        for i in range(count):
            name = f"ready-{i:02d}"
            started = time.perf_counter()
            await client.apply(from_dict(samples.tenant_control_plane(
                name, "bench", "dev-etcd", cluster.versions.kubernetes)), force=True)
            while True:
                obj = (await client.get(TenantControlPlane, name, namespace="bench")).to_dict()
                ready = conditions.find((obj.get("status") or {}).get("conditions"), "Ready")
                if ready and ready["status"] == "True":
                    break
                if time.perf_counter() - started > 180:
                    raise TimeoutError(f"{name} not Ready: {obj.get('status')}")
                await asyncio.sleep(0.1)
            seconds.append(time.perf_counter() - started)
            log(f"  {name}: Ready after {seconds[-1]:.1f}s")
    finally:
        await client.close()
        stop(proc)
        cluster.down(purge=True)
    ordered = sorted(seconds)
    return {"tenants": count, "key_algorithm": algorithm, "replicas": 1,
            "apply_to_ready_s": {"p50": round(statistics.median(ordered), 2),
                                 "p95": round(ordered[max(0, round(0.95 * len(ordered)) - 1)], 2),
                                 "max": round(ordered[-1], 2)}}


async def bench_scale(steps: list[int], algorithm: str, workers: int,
                      idle: float, settle: float) -> dict[str, Any]:
    api = DevCluster(Layout.api_only(Path("/var/lib/haku/bench-api")), printer=log)
    stores = DevCluster(Layout.datastores_only(Path("/var/lib/haku/bench-ds")), printer=log)
    for c in (api, stores):
        c.down(purge=True)
        c.up()
    proc = start_operator(api.layout.admin_kubeconfig, algorithm, workers,
                          api.layout.logs / "bench-operator.log")
    client = AsyncClient(KubeConfig.from_file(api.layout.admin_kubeconfig), field_manager="bench",
                         trust_env=False)
    results = []
    try:
        await prepare(client, stores.layout, "scale")
        made = 0
        for total in steps:
            started = time.perf_counter()
            while made < total:
                await client.apply(from_dict(samples.tenant_control_plane(
                    f"s-{made:04d}", "scale", "dev-etcd", api.versions.kubernetes)), force=True)
                made += 1
            created_s = time.perf_counter() - started
            while True:
                done = 0
                async for tcp in client.list(TenantControlPlane, namespace="scale"):
                    d = tcp.to_dict()
                    st = d.get("status") or {}
                    certs = conditions.find(st.get("conditions"), "CertificatesReady")
                    if st.get("observedGeneration") == d["metadata"]["generation"] and \
                            certs and certs["status"] == "True":
                        done += 1
                if done >= total:
                    break
                if time.perf_counter() - started > 1800:
                    raise TimeoutError(f"only {done} of {total} reconciled")
                await asyncio.sleep(1)
            reconciled_s = time.perf_counter() - started
            log(f"  {total} TCPs reconciled {reconciled_s:.1f}s after the first apply")
            await asyncio.sleep(settle)  # the queue drains follow-up passes before "idle"
            cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            await asyncio.sleep(idle)
            cpu = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t0)
            rss = rss_mib(proc.pid)
            results.append({
                "tcps": total, "apply_s": round(created_s, 1),
                "all_reconciled_s": round(reconciled_s, 1),
                "idle_rss_mib": round(rss, 1), "idle_rss_mib_per_tcp": round(rss / total, 3),
                "idle_cpu_millicores": round(cpu * 1000, 1),
                "idle_millicores_per_tcp": round(cpu * 1000 / total, 3)})
    finally:
        await client.close()
        stop(proc)
        keep = Path(os.environ.get("HAKU_BENCH_SCALE_LOG", "/tmp/haku-bench-scale-operator.log"))
        with contextlib.suppress(OSError):
            shutil.copyfile(api.layout.logs / "bench-operator.log", keep)
        for c in (api, stores):
            c.down(purge=True)
    return {"key_algorithm": algorithm, "workers": workers, "settle_s": settle,
            "idle_window_s": idle, "steps": results}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ready", type=int, default=10, help="tenants for apply→Ready (0: skip)")
    parser.add_argument("--scale", default="100,500,1000", help="TCP totals ('' to skip)")
    parser.add_argument("--ready-algorithm", default="RSA-2048")
    parser.add_argument("--scale-algorithm", default="ECDSA-P256")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=60.0,
                        help="seconds after the last reconcile before the idle window")
    args = parser.parse_args()
    result: dict[str, Any] = {"benchmark": "operator", "cpus": os.cpu_count()}
    if args.ready:
        result["ready"] = asyncio.run(bench_ready(args.ready, args.ready_algorithm))
    steps = [int(s) for s in args.scale.split(",") if s]
    if steps:
        result["scale"] = asyncio.run(bench_scale(steps, args.scale_algorithm, args.workers,
                                                  args.idle, args.settle))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
