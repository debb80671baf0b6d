"""Benchmark of the operator; prints one JSON document.

- ready: on the full local cluster, TenantControlPlanes applied one after another; for each
  the time from apply to its first status and to Ready (its API answering through its
  Service), p50 and p95; and the restarts of the tenants' control-plane containers during
  the run (restartCount summed over their pods, the highest each container showed).
- scale: on the API-only tier (Deployments are written, no pods run) with the etcd datastore,
  N TenantControlPlanes in all (default 100, 500, 1000), applied at once: the time until the
  operator has reconciled every one (status written for the current generation, certificates
  issued), apply → first status, the CPU seconds each process spent meanwhile (operator,
  kube-apiserver, both etcds, the rest of the machine) and the API requests per tenant; then
  the operator's RSS and CPU over an idle window (default 330 s: one full 300 s resync), and
  ``--probes`` tenants applied one at a time to the loaded operator (apply → first status,
  → reconciled).

Every time is taken from a watch on the TenantControlPlanes (events timed as they arrive),
from just before the apply is sent. The operator runs as its own process (``haku operator
run``) so its memory and CPU are its own; its log (per-step reconcile times) is kept in
``$HAKU_BENCH_OPERATOR_LOG`` (ready part, default ``/tmp/haku-bench-operator.log``) and
``$HAKU_BENCH_SCALE_LOG`` (scale part, default ``/tmp/haku-bench-scale-operator.log``).
``--py-spy PREFIX`` records the operator (py-spy installed separately) and
``--profile-apiserver SECONDS`` the kube-apiserver (pprof) while a scale step reconciles.
Run as root: ``.venv/bin/python bench/operator_bench.py [--ready 10] [--scale 100,500,1000]``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig, operators
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Pod

from haku.api import conditions
from haku.api.resources import TenantControlPlane
from haku.controller.operator import install_crds
from haku.dev import config as dev_config
from haku.dev import https, samples
from haku.dev.cluster import DevCluster
from haku.dev.layout import Layout, Ports
from haku.render.controlplane import TENANT_LABEL

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


# More `haku operator run` flags for every operator the benchmark starts (--operator-arg).
OPERATOR_ARGS: list[str] = []


def start_operator(kubeconfig: Path, algorithm: str, workers: int,
                   logfile: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "haku", "operator", "run", f"--kubeconfig={kubeconfig}",
         f"--key-algorithm={algorithm}", f"--workers={workers}", "--lease-duration=5",
         # No fixed ports: a full cluster may run beside the API-only tier.
         "--metrics-bind-address=0", "--health-probe-bind-address=0", *OPERATOR_ARGS],
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


def container_restarts(pods: list[dict[str, Any]]) -> dict[str, int]:
    """restartCount of every container of ``pods`` (Pod dicts), keyed ``<pod uid>/<container>``
    (init containers included)."""
    counts = {}
    for pod in pods:
        uid = pod["metadata"].get("uid") or pod["metadata"]["name"]
        status = pod.get("status") or {}
        for c in (*(status.get("initContainerStatuses") or ()),
                  *(status.get("containerStatuses") or ())):
            counts[f"{uid}/{c['name']}"] = int(c.get("restartCount") or 0)
    return counts


def merge_restarts(seen: dict[str, int], pods: list[dict[str, Any]]) -> dict[str, int]:
    """``seen`` updated with the restarts counted in ``pods`` (the highest count each container
    ever showed, so a pod replaced meanwhile keeps the restarts it had)."""
    for key, count in container_restarts(pods).items():
        seen[key] = max(seen.get(key, 0), count)
    return seen


def restarts_by_container(seen: dict[str, int]) -> dict[str, int]:
    """Restarts summed per container name (kube-apiserver, …) over every pod."""
    by: dict[str, int] = {}
    for key, count in seen.items():
        name = key.rsplit("/", 1)[1]
        by[name] = by.get(name, 0) + count
    return by


async def tenant_pods(client: AsyncClient, namespace: str) -> list[dict[str, Any]]:
    return [p.to_dict() async for p in client.list(
        Pod, namespace=namespace, labels={TENANT_LABEL: operators.exists()})]


async def poll_restarts(client: AsyncClient, namespace: str, seen: dict[str, int],
                        every: float = 5.0) -> None:
    """Keep ``seen`` up to date with the tenant pods' restarts until cancelled (so a pod
    replaced between two looks still counts)."""
    while True:
        with contextlib.suppress(ApiError, httpx2.HTTPError):
            merge_restarts(seen, await tenant_pods(client, namespace))
        await asyncio.sleep(every)


async def bench_ready(count: int, algorithm: str) -> dict[str, Any]:
    cluster = DevCluster(Layout(state_dir=Path("/var/lib/haku/bench")), printer=log)
    cluster.down(purge=True)
    cluster.up()
    lay = cluster.layout
    operator_log = Path(os.environ.get("HAKU_BENCH_OPERATOR_LOG", "/tmp/haku-bench-operator.log"))
    proc = start_operator(lay.admin_kubeconfig, algorithm, 4, operator_log)
    client = AsyncClient(KubeConfig.from_file(lay.admin_kubeconfig), field_manager="bench",
                         trust_env=False)
    tracker = Tracker()
    watching: list[asyncio.Task[None]] = []
    restarts: dict[str, int] = {}
    names = [f"ready-{i:02d}" for i in range(count)]
    try:
        await prepare(client, lay, "bench")
        watching = [asyncio.create_task(track(client, "bench", tracker)),
                    asyncio.create_task(poll_restarts(client, "bench", restarts))]
        for name in names:
            tracker.applied[name] = time.perf_counter()
            await client.apply(from_dict(samples.tenant_control_plane(
                name, "bench", "dev-etcd", cluster.versions.kubernetes)), force=True)
            while name not in tracker.ready:
                tracker.changed.clear()
                if time.perf_counter() - tracker.applied[name] > 180:
                    obj = (await client.get(TenantControlPlane, name, namespace="bench"))
                    raise TimeoutError(f"{name} not Ready: {obj.to_dict().get('status')}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tracker.changed.wait(), 1)
            merge_restarts(restarts, await tenant_pods(client, "bench"))
            log(f"  {name}: first status after "
                f"{tracker.first_status[name] - tracker.applied[name]:.3f}s, Ready after "
                f"{tracker.ready[name] - tracker.applied[name]:.1f}s")
        merge_restarts(restarts, await tenant_pods(client, "bench"))
    finally:
        for task in watching:
            task.cancel()
        await asyncio.gather(*watching, return_exceptions=True)
        await client.close()
        stop(proc)
        cluster.down(purge=True)
    return {"tenants": count, "key_algorithm": algorithm, "replicas": 1,
            "apply_to_ready_s": percentiles([tracker.ready[n] - tracker.applied[n]
                                             for n in names]),
            "first_status_s": tracker.first_status_s(names),
            # restartCount summed over the tenants' control-plane containers during the run
            "control_plane_restarts": sum(restarts.values()),
            "control_plane_restarts_by_container": restarts_by_container(restarts)}


class Tracker:
    """What the bench's watch on TenantControlPlanes saw: when each got its first status and
    when it was reconciled (status for its generation, certificates issued)."""

    def __init__(self) -> None:
        self.applied: dict[str, float] = {}  # perf_counter() just before the apply was sent
        self.first_status: dict[str, float] = {}
        self.reconciled: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.changed = asyncio.Event()

    def see(self, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        if status and name not in self.first_status:
            self.first_status[name] = now
        certs = conditions.find(status.get("conditions"), "CertificatesReady")
        if status.get("observedGeneration") == obj["metadata"].get("generation") and \
                certs and certs["status"] == "True" and name not in self.reconciled:
            self.reconciled[name] = now
            self.changed.set()
        ready = conditions.find(status.get("conditions"), "Ready")
        if ready and ready["status"] == "True" and name not in self.ready:
            self.ready[name] = now
            self.changed.set()

    def first_status_s(self, names: list[str]) -> dict[str, float]:
        return percentiles([self.first_status[n] - self.applied[n] for n in names])


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 3),
            "p95": round(ordered[max(0, round(0.95 * len(ordered)) - 1)], 3),
            "max": round(ordered[-1], 3)}


async def track(client: AsyncClient, namespace: str, tracker: Tracker) -> None:
    """Feed ``tracker`` from a watch (events are timed as they arrive)."""
    version = None
    while True:
        try:
            async for _, tcp in client.watch(TenantControlPlane, namespace=namespace,
                                             resource_version=version, server_timeout=600):
                d = tcp.to_dict()
                version = d["metadata"].get("resourceVersion")
                tracker.see(d, time.perf_counter())
        except ApiError as e:  # 410: too old a version; 429: a new CRD's watch cache warms up
            if e.status.code not in (410, 429):
                raise
            if e.status.code == 410:
                version = None
            await asyncio.sleep(0.1)
        except httpx2.HTTPError:  # the stream broke: carry on from the last version seen
            await asyncio.sleep(0.1)


def machine_busy_s() -> float:
    """CPU seconds spent on this machine (every core) since boot, idle and iowait excluded."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    snap = {}
    for name, pid in pids.items():
        try:
            snap[name] = cpu_seconds(pid)
        except OSError:
            snap[name] = 0.0
    snap["machine"] = machine_busy_s()
    return snap


def cpu_breakdown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per process between two snapshots, and the rest of the machine."""
    used = {k: round(after[k] - before[k], 1) for k in before}
    used["other"] = round(used["machine"] - sum(v for k, v in used.items() if k != "machine"), 1)
    return used


def apiserver_get(cluster: DevCluster, path: str, timeout: float = 10.0) -> bytes:
    lay = cluster.layout
    ctx = https.context(lay.pki / "ca.crt", lay.pki / "admin.crt", lay.pki / "admin.key")
    status, body = https.get(f"{lay.apiserver_url}{path}", ctx, timeout=timeout)
    if status != 200:
        raise RuntimeError(f"GET {path}: {status}")
    return body


def request_counts(metrics: bytes) -> dict[str, float]:
    """apiserver_request_total summed by "VERB resource[/subresource]"."""
    counts: dict[str, float] = {}
    for line in metrics.decode().splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, value = line[len("apiserver_request_total{"):].rsplit("} ", 1)
        labels = dict(part.split("=", 1) for part in labels_text.split(",") if "=" in part)
        labels = {k: v.strip('"') for k, v in labels.items()}
        if labels.get("verb") in ("WATCH", "CONNECT"):
            continue
        what = labels.get("resource", "") + (f"/{labels['subresource']}"
                                             if labels.get("subresource") else "")
        key = f"{labels.get('verb')} {what}"
        counts[key] = counts.get(key, 0.0) + float(value)
    return counts


def requests_per_tenant(before: dict[str, float], after: dict[str, float],
                        tenants: int) -> dict[str, float]:
    """API requests per tenant between two :func:`request_counts`, largest first."""
    delta = {k: (after.get(k, 0.0) - before.get(k, 0.0)) / tenants for k in after}
    per = {k: round(v, 2) for k, v in sorted(delta.items(), key=lambda kv: -kv[1])
           if v >= 0.01}
    per["total"] = round(sum(v for v in delta.values() if v > 0), 1)
    return per


def component_pids(*clusters: DevCluster) -> dict[str, int]:
    pids = {}
    for c in clusters:
        prefix = "datastore-" if not c.layout.control_plane else ""
        for name, info in c.status()["components"].items():
            if info["pid"]:
                pids[name if name.startswith(prefix) else prefix + name] = info["pid"]
    return pids


def shifted(layout: Layout, offset: int) -> Layout:
    """``layout`` with ``offset`` added to each of its ports (as the test tiers'
    HAKU_TEST_PORT_OFFSET), so the scale part can run beside a test tier on the defaults."""
    if not offset:
        return layout
    return dataclasses.replace(layout, ports=Ports(**{
        k: v + offset for k, v in dataclasses.asdict(layout.ports).items()}))


def enable_apiserver_profiling() -> None:
    """The API-only tier's kube-apiserver with /debug/pprof (the dev config turns it off)."""
    plain = dev_config.apiserver_argv

    def argv(binary: Path, layout: Layout) -> list[str]:
        return [a for a in plain(binary, layout) if a != "--profiling=false"] + \
            ["--profiling=true"]
    dev_config.apiserver_argv = argv


async def bench_scale(steps: list[int], algorithm: str, workers: int,
                      idle: float, settle: float, probes: int,
                      py_spy: Path | None, profile_apiserver: int = 0,
                      port_offset: int = 0) -> dict[str, Any]:
    if profile_apiserver:
        enable_apiserver_profiling()
    api = DevCluster(shifted(Layout.api_only(Path("/var/lib/haku/bench-api")), port_offset),
                     printer=log)
    stores = DevCluster(shifted(Layout.datastores_only(Path("/var/lib/haku/bench-ds")),
                                port_offset), printer=log)
    for c in (api, stores):
        c.down(purge=True)
        c.up()
    proc = start_operator(api.layout.admin_kubeconfig, algorithm, workers,
                          api.layout.logs / "bench-operator.log")
    client = AsyncClient(KubeConfig.from_file(api.layout.admin_kubeconfig), field_manager="bench",
                         trust_env=False)
    pids = component_pids(api, stores) | {"operator": proc.pid, "bench": os.getpid()}
    tracker = Tracker()
    watching: asyncio.Task[None] | None = None
    results = []
    try:
        await prepare(client, stores.layout, "scale")
        watching = asyncio.create_task(track(client, "scale", tracker))
        made = 0
        for total in steps:
            names = [f"s-{i:04d}" for i in range(made, total)]
            spy = None
            if py_spy is not None:
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record",
                                        "--pid", str(proc.pid), "--rate", "50", "--format",
                                        "raw", "--output", f"{py_spy}-{total}.txt",
                                        "--nonblocking", "--idle"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            pprof = None
            if profile_apiserver:
                pprof = asyncio.create_task(asyncio.to_thread(
                    apiserver_get, api, f"/debug/pprof/profile?seconds={profile_apiserver}",
                    profile_apiserver + 30))
            requests0 = request_counts(apiserver_get(api, "/metrics"))
            cpu0 = cpu_snapshot(pids)
            started = time.perf_counter()
            for name in names:
                tracker.applied[name] = time.perf_counter()
                await client.apply(from_dict(samples.tenant_control_plane(
                    name, "scale", "dev-etcd", api.versions.kubernetes)), force=True)
            made = total
            created_s = time.perf_counter() - started
            while len(tracker.reconciled) < total:
                tracker.changed.clear()
                if time.perf_counter() - started > 1800:
                    raise TimeoutError(f"only {len(tracker.reconciled)} of {total} reconciled")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tracker.changed.wait(), 5)
            reconciled_s = max(tracker.reconciled[n] for n in names) - started
            cpu = cpu_breakdown(cpu0, cpu_snapshot(pids))
            requests = requests_per_tenant(requests0, request_counts(
                apiserver_get(api, "/metrics")), len(names))
            if pprof is not None:
                out = Path(f"/tmp/haku-bench-apiserver-{total}.pprof")
                try:
                    out.write_bytes(await pprof)
                    log(f"  kube-apiserver CPU profile: {out}")
                except (OSError, RuntimeError) as e:
                    log(f"  no kube-apiserver CPU profile: {e}")
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            log(f"  {total} TCPs reconciled {reconciled_s:.1f}s after the first apply; "
                f"CPU s: {cpu}")
            # One list confirms what the watch saw.
            listed = 0
            async for tcp in client.list(TenantControlPlane, namespace="scale"):
                d = tcp.to_dict()
                certs = conditions.find((d.get("status") or {}).get("conditions"),
                                        "CertificatesReady")
                listed += bool(certs and certs["status"] == "True")
            if listed < total:
                raise RuntimeError(f"the watch saw {total} reconciled, a list {listed}")
            await asyncio.sleep(settle)  # the queue drains follow-up passes before "idle"
            cpu0i, t0 = cpu_seconds(proc.pid), time.perf_counter()
            await asyncio.sleep(idle)
            idle_cpu = (cpu_seconds(proc.pid) - cpu0i) / (time.perf_counter() - t0)
            rss = rss_mib(proc.pid)
            step: dict[str, Any] = {
                "tcps": total, "apply_s": round(created_s, 1),
                "all_reconciled_s": round(reconciled_s, 1),
                "reconciled_per_s": round(len(names) / reconciled_s, 1),
                "first_status_s": tracker.first_status_s(names),
                "reconcile_cpu_s": cpu,
                "apiserver_requests_per_tcp": requests,
                "idle_rss_mib": round(rss, 1), "idle_rss_mib_per_tcp": round(rss / total, 3),
                "idle_cpu_millicores": round(idle_cpu * 1000, 1),
                "idle_millicores_per_tcp": round(idle_cpu * 1000 / total, 3)}
            if probes:
                # Tenants applied one at a time to the operator now holding ``total``:
                # apply → first status (what Kamaji's 0.12 s compares with) and → reconciled.
                one = [f"p-{total}-{i:02d}" for i in range(probes)]
                for name in one:
                    tracker.applied[name] = time.perf_counter()
                    await client.apply(from_dict(samples.tenant_control_plane(
                        name, "scale", "dev-etcd", api.versions.kubernetes)), force=True)
                    while name not in tracker.reconciled:
                        tracker.changed.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(tracker.changed.wait(), 5)
                    await asyncio.sleep(0.5)
                step["one_by_one"] = {
                    "tenants": probes, "first_status_s": tracker.first_status_s(one),
                    "reconciled_s": percentiles(
                        [tracker.reconciled[n] - tracker.applied[n] for n in one])}
                # Gone again (finalized) before the next step or the teardown.
                for name in one:
                    await client.delete(TenantControlPlane, name, namespace="scale")
                for name in one:
                    while True:
                        try:
                            await client.get(TenantControlPlane, name, namespace="scale")
                        except ApiError as e:
                            if e.status.code == 404:
                                break
                            raise
                        await asyncio.sleep(0.5)
            results.append(step)
    finally:
        if watching is not None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
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
    parser.add_argument("--workers", type=int, default=4,
                        help="the operator's --workers in the scale part (its default: 4)")
    parser.add_argument("--idle", type=float, default=330.0,
                        help="idle window (s); 330 holds one full resync (every 300 s)")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="seconds after the last reconcile before the idle window")
    parser.add_argument("--probes", type=int, default=10,
                        help="tenants applied one at a time after each scale step's idle "
                             "window, for apply → first status on a loaded operator")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="PREFIX",
                        help="record the operator with py-spy (installed separately) while a "
                             "scale step reconciles: PREFIX-<total>.txt, collapsed stacks")
    parser.add_argument("--profile-apiserver", type=int, default=0, metavar="SECONDS",
                        help="take a kube-apiserver CPU profile (pprof) over the first SECONDS "
                             "of each scale step: /tmp/haku-bench-apiserver-<total>.pprof")
    parser.add_argument("--port-offset", type=int,
                        default=int(os.environ.get("HAKU_BENCH_PORT_OFFSET", "0")),
                        help="added to every port of the scale part's API-only and "
                             "datastores-only tiers (keep the sums below 32768)")
    parser.add_argument("--operator-arg", action="append", default=[], metavar="FLAG",
                        help="a `haku operator run` flag for the operators it starts "
                             "(repeatable), e.g. --operator-arg=--no-tenant-network-policy")
    args = parser.parse_args()
    OPERATOR_ARGS[:] = args.operator_arg
    result: dict[str, Any] = {"benchmark": "operator", "cpus": os.cpu_count(),
                              "operator_args": OPERATOR_ARGS}
    if args.ready:
        result["ready"] = asyncio.run(bench_ready(args.ready, args.ready_algorithm))
    steps = [int(s) for s in args.scale.split(",") if s]
    if steps:
        result["scale"] = asyncio.run(bench_scale(steps, args.scale_algorithm, args.workers,
                                                  args.idle, args.settle, args.probes,
                                                  args.py_spy, args.profile_apiserver,
                                                  args.port_offset))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
