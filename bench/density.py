"""Benchmark: how many running tenant control planes stay Ready on this machine; prints one
JSON document.

On the full local cluster (its own state directory), with the operator as its own process
(``haku operator run``), TenantControlPlanes (etcd DataStore ``dev-etcd``, 1 replica,
ClusterIP) are created one after another. Each new tenant must become Ready (the operator's
``Ready`` Condition True and its pod Ready); then every tenant is watched for a settle period
(``--settle``, default 60 s) that counts Ready flaps and container restarts and measures CPU,
and, before the next tenant, all of them must be Ready again.

It stops when some tenant cannot stay Ready: a tenant is continuously not Ready for the window
(``--window``, default 300 s: a new tenant not Ready that long after its apply, or one that left
Ready and did not come back), a new tenant's pod is Unschedulable for 60 s (nothing running
frees room for it), or at the cap (``--max``, default 60), or after ``--time-limit``.
The density figure is the number of tenants that were all Ready together after the last
settle period passed.

Reported at each step: seconds from apply to Ready, the machine's load average and free
memory, the tenants' total RSS and CPU over the settle period, flaps, restarts, the operator
and the admin cluster's processes; at the end, over a final window (``--idle``, default 60 s,
no tenant being created): per tenant control plane, RSS (VmRSS summed over the processes of
the pod's containers, found in the admin kubelet's cgroup tree; the pause container left out),
its anonymous part (RssAnon: VmRSS also counts the binaries' file pages, which all tenants
share in the page cache) and the containers' working set (cgroup usage less inactive file
pages), CPU in millicores (the pod cgroup's cpuacct over the window), restarts (sum of
restartCount, also per container, with why each container last stopped); and why it stopped.
Progress lines go to stderr.

Run as root: ``.venv/bin/python bench/density.py [--max 60] [--window 300] [--settle 60]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Pod

from haku.api import conditions
from haku.api.resources import TenantControlPlane
from haku.controller.operator import install_crds
from haku.dev import samples
from haku.dev.cluster import DevCluster
from haku.dev.layout import Layout
from haku.render.controlplane import TENANT_LABEL

NAMESPACE = "density"
CGROUP = Path("/sys/fs/cgroup")
TICKS = os.sysconf("SC_CLK_TCK")
POLL_S = 2.0
UNSCHEDULABLE_S = 60.0
MIB = 1024 * 1024


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ host and cgroup readings

def meminfo_mib() -> dict[str, float]:
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0]) / 1024
    return {"total": round(values["MemTotal"], 1), "free": round(values["MemFree"], 1),
            "available": round(values["MemAvailable"], 1)}


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def status_mib(pid: int, key: str = "VmRSS") -> float:
    """A ``/proc/<pid>/status`` figure (VmRSS, RssAnon, …) in MiB; 0 for a gone process."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def vmrss_mib(pid: int) -> float:
    return status_mib(pid)


def proc_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def pod_cgroup(controller: str, root: str, uid: str) -> Path | None:
    """The pod's cgroup in a v1 hierarchy: ``/<root>/kubepods[/<qos>]/pod<uid>`` (cgroupfs)."""
    base = CGROUP / controller / root / "kubepods"
    for qos in ("burstable", "besteffort", ""):
        path = base / qos / f"pod{uid}" if qos else base / f"pod{uid}"
        if path.is_dir():
            return path
    return None


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def memory_stat(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v) for k, v in (line.split() for line in lines)}


def container_memory(root: str, uid: str, container_id: str) -> dict[str, float] | None:
    """VmRSS and RssAnon summed over the container's processes, and its cgroup's working set,
    in MiB. VmRSS counts the binary's file pages, which the tenants share in the page cache
    (same image layer); RssAnon is the container's own."""
    pod = pod_cgroup("memory", root, uid)
    if pod is None or not (pod / container_id).is_dir():
        return None
    cg = pod / container_id
    try:
        pids = [int(p) for p in (cg / "cgroup.procs").read_text().split()]
    except OSError:
        pids = []
    usage = read_int(cg / "memory.usage_in_bytes") or 0
    inactive = memory_stat(cg / "memory.stat").get("total_inactive_file", 0)
    return {"rss": sum(vmrss_mib(p) for p in pids),
            "anon": sum(status_mib(p, "RssAnon") for p in pids),
            "working_set": max(0, usage - inactive) / MIB, "processes": len(pids)}


def pod_cpu_ns(root: str, uid: str) -> int | None:
    """Everything the pod's containers (and its pause container) ever ran, in ns."""
    pod = pod_cgroup("cpuacct", root, uid) or pod_cgroup("cpu,cpuacct", root, uid)
    return read_int(pod / "cpuacct.usage") if pod else None


# ------------------------------------------------------------------------ tenant tracking

@dataclass
class Tenant:
    name: str
    index: int
    applied: float  # monotonic
    ready: bool = False
    ready_after_s: float | None = None  # apply → first Ready
    unready_since: float | None = None  # monotonic; the apply until the first Ready
    longest_unready_s: float = 0.0  # after the first Ready
    flaps: int = 0  # Ready → not Ready, after the first Ready
    why: str = "just applied"  # when not Ready
    pod_uid: str | None = None
    containers: dict[str, str] = field(default_factory=dict)  # name → container id
    restarts: int = 0
    # container → restarts, and why it last stopped (lastState.terminated: reason, exit code)
    restarts_by_container: dict[str, int] = field(default_factory=dict)
    last_termination: dict[str, str] = field(default_factory=dict)
    unschedulable_since: float | None = None
    unschedulable: str = ""

    def __post_init__(self) -> None:
        self.unready_since = self.applied


def _pod_ready(pod: dict[str, Any]) -> bool:
    found = conditions.find((pod.get("status") or {}).get("conditions"), "Ready")
    return bool(found and found["status"] == "True")


async def observe(client: AsyncClient, tenants: dict[str, Tenant]) -> None:
    """One look at every TenantControlPlane and control-plane pod in the namespace."""
    now = time.monotonic()
    tcp_ready: dict[str, tuple[bool, str]] = {}
    async for tcp in client.list(TenantControlPlane, namespace=NAMESPACE):
        d = tcp.to_dict()
        ready = conditions.find((d.get("status") or {}).get("conditions"), "Ready")
        tcp_ready[d["metadata"]["name"]] = (
            bool(ready and ready["status"] == "True"),
            f"Ready={ready['status']} {ready.get('reason')}: {ready.get('message', '')[:160]}"
            if ready else "no Ready condition")
    pods: dict[str, list[dict[str, Any]]] = {}
    async for pod in client.list(Pod, namespace=NAMESPACE):
        p = pod.to_dict()
        owner = (p["metadata"].get("labels") or {}).get(TENANT_LABEL)
        if owner:
            pods.setdefault(owner, []).append(p)
    for t in tenants.values():
        ok, why = tcp_ready.get(t.name, (False, "TenantControlPlane missing"))
        mine = pods.get(t.name, [])
        ready_pods = [p for p in mine if _pod_ready(p)]
        by_container: dict[str, int] = {}
        for p in mine:
            for c in (p.get("status") or {}).get("containerStatuses") or []:
                by_container[c["name"]] = by_container.get(c["name"], 0) + c.get(
                    "restartCount", 0)
                ended = ((c.get("lastState") or {}).get("terminated") or {})
                if ended:
                    why_ended = f"{ended.get('reason')} (exit {ended.get('exitCode')})"
                    if t.last_termination.get(c["name"]) != why_ended:
                        log(f"  {t.name}/{c['name']} restarted: {why_ended}")
                    t.last_termination[c["name"]] = why_ended
        t.restarts_by_container = by_container
        t.restarts = sum(by_container.values())
        chosen = ready_pods[0] if ready_pods else (mine[0] if mine else None)
        if chosen is not None:
            t.pod_uid = chosen["metadata"]["uid"]
            t.containers = {
                c["name"]: c["containerID"].rpartition("//")[2]
                for c in (chosen.get("status") or {}).get("containerStatuses") or []
                if c.get("containerID") and "running" in (c.get("state") or {})}
        sched = next((c for p in mine for c in (p.get("status") or {}).get("conditions") or []
                      if c.get("type") == "PodScheduled" and c.get("status") == "False"
                      and c.get("reason") == "Unschedulable"), None)
        if sched is None:
            t.unschedulable_since, t.unschedulable = None, ""
        elif t.unschedulable_since is None:
            t.unschedulable_since, t.unschedulable = now, sched.get("message", "")
        if not ready_pods:
            why = f"{why}; no Ready pod ({len(mine)} pods)" if ok else why
            ok = False
        if ok and not t.ready:  # became Ready
            if t.ready_after_s is None:
                t.ready_after_s = round(now - t.applied, 2)
            elif t.unready_since is not None:
                t.longest_unready_s = max(t.longest_unready_s, now - t.unready_since)
            t.unready_since = None
        elif not ok and t.ready:  # left Ready
            t.flaps += 1
            t.unready_since = now
            log(f"  {t.name} left Ready: {why}")
        t.ready, t.why = ok, ("" if ok else why)


def failure(tenants: dict[str, Tenant], window: float) -> str | None:
    """Why the run must stop, if some tenant cannot stay (or become) Ready."""
    now = time.monotonic()
    for t in tenants.values():
        if t.unready_since is not None and now - t.unready_since > window:
            if t.ready_after_s is None:
                return f"{t.name} not Ready {window:.0f}s after its apply ({t.why})"
            return f"{t.name} left Ready and stayed not Ready for {window:.0f}s ({t.why})"
        if t.ready_after_s is None and t.unschedulable_since is not None and \
                now - t.unschedulable_since > UNSCHEDULABLE_S:
            return f"{t.name}'s pod Unschedulable for {UNSCHEDULABLE_S:.0f}s: {t.unschedulable}"
    return None


class Stop(Exception):
    """Why the run stops."""


async def watch(client: AsyncClient, tenants: dict[str, Tenant], window: float,
                deadline: float, until: Any, limit: float,
                operator: Operator | None = None) -> None:
    """Observe every ``POLL_S`` until ``until()`` holds or ``limit`` seconds pass; raise
    :class:`Stop` when a tenant fails (only if ``operator`` is given) or at the deadline;
    restart the ``operator`` when it exited, as its Deployment would. Bounded by ``limit``."""
    end = time.monotonic() + limit
    check = operator is not None
    while True:
        if operator is not None:
            operator.restart_if_exited()
        try:
            await observe(client, tenants)
        except Exception as e:  # an overloaded admin API: look again
            log(f"  observe failed: {e!r}")
        reason = failure(tenants, window) if check else None
        if reason:
            raise Stop(reason)
        if until():
            return
        now = time.monotonic()
        if now >= deadline:
            raise Stop("time limit reached")
        if now >= end:
            return
        await asyncio.sleep(min(POLL_S, max(0.0, end - now)))


# ---------------------------------------------------------------------------- measuring

def cpu_snapshot(root: str, tenants: dict[str, Tenant]) -> dict[str, tuple[str, int]]:
    snap = {}
    for t in tenants.values():
        if t.pod_uid:
            ns = pod_cpu_ns(root, t.pod_uid)
            if ns is not None:
                snap[t.name] = (t.pod_uid, ns)
    return snap


def cpu_millicores(before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]],
                   seconds: float) -> dict[str, float]:
    """Per tenant, over the window; a tenant whose pod changed is left out."""
    return {name: round((ns - before[name][1]) / 1e6 / seconds, 1)
            for name, (uid, ns) in after.items()
            if name in before and before[name][0] == uid and seconds > 0}


def memory_of(root: str, t: Tenant) -> dict[str, Any] | None:
    if not t.pod_uid or not t.containers:
        return None
    per: dict[str, dict[str, float]] = {}
    for name, cid in t.containers.items():
        m = container_memory(root, t.pod_uid, cid)
        if m is not None:
            per[name] = m
    if not per:
        return None
    return {"rss_mib": round(sum(m["rss"] for m in per.values()), 1),
            "anon_mib": round(sum(m["anon"] for m in per.values()), 1),
            "working_set_mib": round(sum(m["working_set"] for m in per.values()), 1),
            "rss_mib_by_container": {k: round(v["rss"], 1) for k, v in sorted(per.items())}}


def stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": round(statistics.fmean(values), 1),
            "median": round(statistics.median(values), 1),
            "min": round(min(values), 1), "max": round(max(values), 1)}


def processes_rss(cluster: DevCluster, operator: Operator) -> dict[str, float]:
    found = {r.name: round(vmrss_mib(r.pid), 1)
             for r in cluster.supervisor.records() if r.alive()}
    found["operator"] = round(vmrss_mib(operator.pid), 1)
    return found


# --------------------------------------------------------------------------------- the run

@dataclass
class Operator:
    """The operator process, restarted when it exits (a lone operator that loses its Lease
    on a saturated machine exits on purpose; its Deployment would start it again)."""

    kubeconfig: Path
    algorithm: str
    logfile: Path
    extra: list[str] = field(default_factory=list)
    restarts: list[dict[str, Any]] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "haku", "operator", "run",
                 f"--kubeconfig={self.kubeconfig}", f"--key-algorithm={self.algorithm}",
                 "--lease-duration=5",
                 # no listeners: the default :8080/:8081 may be taken by another operator
                 "--metrics-bind-address=0", "--health-probe-bind-address=0", *self.extra],
                stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def restart_if_exited(self) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is None:
            return
        self.restarts.append({"exit_code": code, "loadavg": loadavg(),
                              "at": datetime.now(UTC).strftime("%H:%M:%S")})
        log(f"  the operator exited with code {code} (load {loadavg()}); restarting it")
        self.start()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


async def run(cluster: DevCluster, operator: Operator, client: AsyncClient,
              args: argparse.Namespace) -> dict[str, Any]:
    lay = cluster.layout
    root = lay.pods_cgroup
    await install_crds(client, "haku-system")
    for obj in samples.datastore_objects(lay):
        await client.apply(from_dict(obj), force=True)
    await client.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                                  "metadata": {"name": NAMESPACE}}), force=True)
    started = time.monotonic()
    deadline = started + args.time_limit
    tenants: dict[str, Tenant] = {}
    steps: list[dict[str, Any]] = []
    density = 0
    stop_reason = f"cap of {args.max} tenants reached"
    baseline: dict[str, Any] = {"loadavg": loadavg(), "memory_mib": meminfo_mib(),
                                "processes_rss_mib": processes_rss(cluster, operator)}
    log(f"baseline: load {baseline['loadavg']}, available "
        f"{baseline['memory_mib']['available']:.0f} MiB")
    try:
        for i in range(args.max):
            name = f"d-{i:03d}"
            t = Tenant(name, i, time.monotonic())
            tenants[name] = t
            await client.apply(from_dict(samples.tenant_control_plane(
                name, NAMESPACE, "dev-etcd", cluster.versions.kubernetes)), force=True)
            flaps0 = sum(x.flaps for x in tenants.values())
            restarts0 = sum(x.restarts for x in tenants.values() if x is not t)
            await watch(client, tenants, args.window, deadline, lambda t=t: t.ready,
                        args.window + 60, operator)
            if not t.ready:  # cannot happen (failure() fires first); kept for safety
                raise Stop(f"{name} not Ready {args.window:.0f}s after its apply")
            log(f"{name}: Ready after {t.ready_after_s}s; settling {args.settle:.0f}s")
            before, t0 = cpu_snapshot(root, tenants), time.monotonic()
            await watch(client, tenants, args.window, deadline, lambda: False, args.settle,
                        operator)
            after, seconds = cpu_snapshot(root, tenants), time.monotonic() - t0
            cpu = cpu_millicores(before, after, seconds)
            mems = [m for m in (memory_of(root, x) for x in tenants.values()) if m]
            flaps = sum(x.flaps for x in tenants.values()) - flaps0
            restarts = sum(x.restarts for x in tenants.values()) - restarts0
            waited = time.monotonic()
            await watch(client, tenants, args.window, deadline,
                        lambda: all(x.ready for x in tenants.values()), args.window + 60,
                        operator)
            if not all(x.ready for x in tenants.values()):
                raise Stop("not every tenant Ready again after the settle period")
            density = len(tenants)
            step = {
                "tenants": density, "apply_to_ready_s": t.ready_after_s,
                "elapsed_s": round(time.monotonic() - started, 1),
                "loadavg": loadavg(), "memory_mib": meminfo_mib(),
                "settle_s": round(seconds, 1),
                "tenants_cpu_millicores": round(sum(cpu.values()), 1),
                "cpu_millicores_per_tenant": stats(list(cpu.values())),
                "tenants_rss_mib": round(sum(m["rss_mib"] for m in mems), 1),
                "rss_mib_per_tenant": stats([m["rss_mib"] for m in mems]),
                "anon_mib_per_tenant": stats([m["anon_mib"] for m in mems]),
                "ready_flaps_in_step": flaps, "restarts_in_step": restarts,
                "restarts_total": sum(x.restarts for x in tenants.values()),
                "waited_all_ready_s": round(time.monotonic() - waited, 1),
                "processes_rss_mib": processes_rss(cluster, operator)}
            steps.append(step)
            log(f"{density} tenants Ready: load {step['loadavg']}, available "
                f"{step['memory_mib']['available']:.0f} MiB, tenants "
                f"{step['tenants_rss_mib']:.0f} MiB RSS / {step['tenants_cpu_millicores']:.0f} "
                f"mCPU, flaps {flaps}, restarts {step['restarts_total']}")
    except Stop as e:
        stop_reason = str(e)
        log(f"stopping: {stop_reason}")

    # The final window: nothing created any more; every tenant measured.
    log(f"final window of {args.idle:.0f}s over {len(tenants)} tenants")
    flaps0 = sum(x.flaps for x in tenants.values())
    before, t0 = cpu_snapshot(root, tenants), time.monotonic()
    await watch(client, tenants, args.window, float("inf"), lambda: False, args.idle)
    after, seconds = cpu_snapshot(root, tenants), time.monotonic() - t0
    cpu = cpu_millicores(before, after, seconds)
    per_tenant: list[dict[str, Any]] = []
    for t in tenants.values():
        mem = memory_of(root, t)
        per_tenant.append({
            "name": t.name, "ready": t.ready, "apply_to_ready_s": t.ready_after_s,
            "ready_flaps": t.flaps, "longest_unready_s": round(t.longest_unready_s, 1),
            "restarts": t.restarts, "restarts_by_container": t.restarts_by_container,
            "last_termination": t.last_termination, "cpu_millicores": cpu.get(t.name),
            **(mem or {"rss_mib": None, "anon_mib": None, "working_set_mib": None}),
            **({} if t.ready else {"not_ready_because": t.why})})
    ready_at_end = sum(1 for t in tenants.values() if t.ready)
    by_container: dict[str, list[float]] = {}
    for p in per_tenant:
        for c, v in (p.get("rss_mib_by_container") or {}).items():
            by_container.setdefault(c, []).append(v)
    return {
        "density": density,
        "stop_reason": stop_reason,
        "tenants_created": len(tenants),
        "ready_at_end": ready_at_end,
        "elapsed_s": round(time.monotonic() - started, 1),
        "baseline": baseline,
        "final_window": {
            "seconds": round(seconds, 1), "loadavg": loadavg(), "memory_mib": meminfo_mib(),
            "ready_flaps": sum(x.flaps for x in tenants.values()) - flaps0,
            "restarts_total": sum(x.restarts for x in tenants.values()),
            "restarts_by_container": {
                name: sum(x.restarts_by_container.get(name, 0) for x in tenants.values())
                for name in sorted({n for x in tenants.values()
                                    for n in x.restarts_by_container})},
            "tenants_cpu_millicores": round(sum(cpu.values()), 1),
            "cpu_millicores_per_tenant": stats(list(cpu.values())),
            "tenants_rss_mib": round(sum(p["rss_mib"] or 0 for p in per_tenant), 1),
            "rss_mib_per_tenant": stats([p["rss_mib"] for p in per_tenant if p["rss_mib"]]),
            "anon_mib_per_tenant": stats([p["anon_mib"] for p in per_tenant if p["anon_mib"]]),
            "working_set_mib_per_tenant": stats([p["working_set_mib"] for p in per_tenant
                                                 if p["working_set_mib"]]),
            "rss_mib_per_container_median": {c: round(statistics.median(v), 1)
                                             for c, v in sorted(by_container.items())},
            "processes_rss_mib": processes_rss(cluster, operator)},
        "operator_restarts": operator.restarts,
        "steps": steps,
        "per_tenant": per_tenant,
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    cluster = DevCluster(Layout(state_dir=args.state_dir), printer=log)
    cluster.down(purge=True)
    cluster.up()
    lay = cluster.layout
    args.operator_log.write_bytes(b"")
    operator = Operator(lay.admin_kubeconfig, args.key_algorithm, args.operator_log,
                        args.operator_arg)
    operator.start()
    client = AsyncClient(KubeConfig.from_file(lay.admin_kubeconfig), field_manager="bench",
                         trust_env=False)
    try:
        result = await run(cluster, operator, client, args)
    finally:
        await client.close()
        if operator.proc is not None:
            stop_process(operator.proc)
        cluster.down(purge=True)
    return {"benchmark": "density", "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "cpus": os.cpu_count(), "kubernetes": cluster.versions.kubernetes,
            "datastore": "dev-etcd", "replicas": 1, "service_type": "ClusterIP",
            "key_algorithm": args.key_algorithm,
            "parameters": {"max": args.max, "window_s": args.window, "settle_s": args.settle,
                           "idle_s": args.idle, "time_limit_s": args.time_limit,
                           "poll_s": POLL_S, "operator_args": args.operator_arg},
            **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max", type=int, default=60, help="tenants at most")
    parser.add_argument("--window", type=float, default=300.0,
                        help="seconds a tenant may be continuously not Ready")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="seconds every tenant is watched after each new one is Ready")
    parser.add_argument("--idle", type=float, default=60.0,
                        help="the final measuring window, in seconds")
    parser.add_argument("--time-limit", type=float, default=6 * 3600.0,
                        help="stop adding tenants after this many seconds")
    parser.add_argument("--state-dir", type=Path, default=Path("/var/lib/haku/bench-density"))
    parser.add_argument("--key-algorithm", default="RSA-2048")
    parser.add_argument("--operator-log", type=Path,
                        default=Path("/tmp/haku-bench-density-operator.log"))
    parser.add_argument("--operator-arg", action="append", default=[], metavar="FLAG",
                        help="a `haku operator run` flag for the operator (repeatable), e.g. "
                             "--operator-arg=--no-leader-elect (a lone operator that loses its "
                             "Lease on a saturated machine exits; the bench restarts it and "
                             "reports each exit in operator_restarts)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(bench(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
