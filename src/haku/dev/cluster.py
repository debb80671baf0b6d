"""``haku dev up / down / status``: a one-node admin cluster from upstream binaries.

Everything lives under one state directory (default ``/var/lib/haku/dev``). ``up`` is safe to
run again: what runs is left alone, what died is started again. ``down`` stops exactly the
processes ``up`` recorded and removes the mounts, network namespaces, links, KUBE-* chains and
cgroups the cluster created, and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from haku import __version__
from haku.dev import (
    config,
    datastores,
    host,
    https,
    images,
    netpol,
    packages,
    registry,
    toolchain,
    worker,
)
from haku.dev.layout import STATE_FORMAT, Layout
from haku.dev.processes import ProcessSpec, Supervisor
from haku.dev.versions import Versions
from haku.errors import HakuError
from haku.render import kubeconfig, pki

OPERATOR = "haku-operator"
ETCD, APISERVER = "etcd", "kube-apiserver"
CONTROLLER_MANAGER, SCHEDULER = "kube-controller-manager", "kube-scheduler"
CONTAINERD, KUBELET, KUBE_PROXY = "containerd", "kubelet", "kube-proxy"
NETWORK_POLICIES = netpol.NAME
REGISTRY = registry.NAME

# Stop order: consumers first, the store last. The operator goes first of all: once the node
# bridge is gone, addresses it talks to (tenant Services, the node IP) would leave the machine.
STOP_ORDER = (
    OPERATOR, NETWORK_POLICIES, KUBE_PROXY, KUBELET, SCHEDULER, CONTROLLER_MANAGER, APISERVER, ETCD,
    datastores.ETCD, datastores.POSTGRES, datastores.MARIADB, REGISTRY, CONTAINERD,
)


class DevClusterError(HakuError):
    """A problem the user must act on; the message says what to do."""


Printer = Callable[[str], None]


@dataclass
class Report:
    steps: list[tuple[str, float]] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def step(self, name: str, seconds: float) -> None:
        with self.lock:
            self.steps.append((name, seconds))

    def component(self, name: str, started: bool) -> None:
        with self.lock:
            (self.started if started else self.already_running).append(name)


@dataclass
class DownReport:
    stopped: list[str] = field(default_factory=list)
    killed_leftovers: list[int] = field(default_factory=list)
    unmounted: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    chains: list[host.Chain] = field(default_factory=list)
    nft_tables: list[str] = field(default_factory=list)
    cgroups: int = 0
    workers: list[str] = field(default_factory=list)


class DevCluster:
    def __init__(
        self,
        layout: Layout,
        versions: Versions | None = None,
        cache: Path | None = None,
        printer: Printer | None = None,
    ) -> None:
        self.layout = layout
        self.versions = versions or Versions.from_env()
        self.cache = cache or toolchain.cache_root()
        self.print = printer or (lambda line: print(line, flush=True))
        self.supervisor = Supervisor(layout.pids, layout.logs)
        self.bins: dict[str, Path] = {}

    # ------------------------------------------------------------------------------ helpers

    @property
    def components(self) -> tuple[str, ...]:
        lay, names = self.layout, []
        if lay.control_plane:
            names += [ETCD, APISERVER]
        if lay.node:
            names += [CONTROLLER_MANAGER, SCHEDULER, REGISTRY, CONTAINERD, KUBELET, KUBE_PROXY,
                      NETWORK_POLICIES]
        if lay.datastores:
            names += [datastores.ETCD, datastores.POSTGRES, datastores.MARIADB]
        return tuple(names)

    def _admin_tls(self) -> Any:
        pki_dir = self.layout.pki
        return https.context(pki_dir / "ca.crt", pki_dir / "admin.crt", pki_dir / "admin.key")

    def apiserver_ready(self) -> bool:
        return https.ok(f"{self.layout.apiserver_url}/readyz", self._admin_tls())

    def node_ready(self, heartbeat_since: datetime | None = None) -> bool:
        """The node reports Ready (with a heartbeat at or after ``heartbeat_since``, if given:
        right after a kubelet restart the old Ready condition is still there)."""
        node = https.get_json(
            f"{self.layout.apiserver_url}/api/v1/nodes/{self.layout.node_name}", self._admin_tls()
        )
        if not node:
            return False
        for c in node.get("status", {}).get("conditions", []):
            if c["type"] != "Ready" or c["status"] != "True":
                continue
            if heartbeat_since is None:
                return True
            beat = datetime.fromisoformat(c["lastHeartbeatTime"].replace("Z", "+00:00"))
            return beat >= heartbeat_since
        return False

    def _timed(self, report: Report, name: str, fn: Callable[[], Any]) -> Any:
        started = time.monotonic()
        result = fn()
        seconds = time.monotonic() - started
        report.step(name, seconds)
        self.print(f"  {name:<38} {seconds:6.1f}s")
        return result

    def _start(self, report: Report, spec: ProcessSpec) -> None:
        _, started = self.supervisor.start(spec)
        report.component(spec.name, started)

    # ------------------------------------------------------------------------------ preflight

    def _check_state_dir(self) -> dict[str, Any] | None:
        d = self.layout.state_dir
        state_file = self.layout.state_file
        if not d.exists():
            return None
        if not state_file.exists():
            if any(d.iterdir()):
                raise DevClusterError(
                    f"{d} exists but is not a Haku state directory (no state.json): "
                    "remove it or choose another with --state-dir"
                )
            return None
        try:
            state: dict[str, Any] = json.loads(state_file.read_text())
        except ValueError as e:
            raise DevClusterError(
                f"{state_file} is unreadable ({e}): run `haku dev down --purge "
                f"--state-dir {d}` to start afresh"
            ) from e
        recorded = state.get("layout", {})
        if recorded.get("format") != STATE_FORMAT or recorded != self.layout.describe():
            raise DevClusterError(
                f"{d} holds a cluster made with a different layout (state format "
                f"{recorded.get('format')}, this Haku writes {STATE_FORMAT}): run "
                f"`haku dev down --purge --state-dir {d}` first, or choose another --state-dir"
            )
        if state.get("kubernetes") != self.versions.kubernetes:
            raise DevClusterError(
                f"{d} holds a Kubernetes {state.get('kubernetes')} cluster and this is "
                f"{self.versions.kubernetes}: pass --kubernetes-version "
                f"{state.get('kubernetes')} to keep using it, run `haku dev down --purge "
                f"--state-dir {d}` to delete it, or choose another --state-dir"
            )
        return state

    def _check_ports(self) -> None:
        ours = {r.pid for r in self.supervisor.records() if r.alive()}
        wanted = self.layout.listen_ports()
        taken = []
        for port, listener in sorted(host.listeners(wanted).items()):
            if listener.pid is not None and listener.pid in ours:
                continue
            if listener.pid is not None and _descends_from(listener.pid, ours):
                continue
            who = f"pid {listener.pid} ({listener.command})" if listener.pid else "another process"
            taken.append(f"  port {port} (for {wanted[port]}) is taken by {who}")
        if taken:
            raise DevClusterError(
                "cannot start: ports in use\n" + "\n".join(taken) + "\n"
                "stop what holds them (another `haku dev up` stops with `haku dev down "
                "--state-dir DIR`), then run this again"
            )

    # ------------------------------------------------------------------------------ up

    def up(self) -> Report:
        report = Report()
        t0 = time.monotonic()
        lay = self.layout
        if os.geteuid() != 0:
            raise DevClusterError("haku dev up needs root: it creates bridges and runs a kubelet")
        # Before the state directory's checks: a Kubernetes version that does not exist must be
        # reported as such, not as "delete the cluster you have". Free when it is cached.
        toolchain.check_available(["kubernetes"], self.versions, self.cache)
        state = self._check_state_dir()
        if lay.node or lay.datastores:
            packages.check()
        self.print(f"haku dev up: state in {lay.state_dir}")
        wanted = ["kubernetes", "etcd"] + (["kine"] if lay.node or lay.datastores else []) \
            + (["coredns", "kube-network-policies", "registry"] if lay.node else [])
        self.bins = self._timed(report, "upstream binaries (cached per version)",
                                lambda: toolchain.ensure(wanted, self.versions, self.cache))
        self._check_ports()
        nothing_running = not any(r.alive() for r in self.supervisor.records())
        for d in (lay.state_dir, lay.logs, lay.pids):
            d.mkdir(parents=True, exist_ok=True)
        lay.state_dir.chmod(0o755)
        baseline = _chain_baseline((state or {}).get("baseline_chains"), nothing_running,
                                   host.kube_chains() if lay.node else set())
        self._write_state(baseline)
        self._timed(report, "certificates and kubeconfigs", self._ensure_pki)
        if lay.node:
            host.raise_inotify_limits(lambda note: self.print(f"  {note}"))
            self._timed(report, "host network (node bridge)", lambda: host.ensure_bridge(
                lay.node_bridge, f"{lay.node_ip}/32"))

        # Independent paths in parallel; the node joins once API and runtime are there.
        with ThreadPoolExecutor(max_workers=3) as pool:
            control_plane: Future[None] | None = None
            runtime: Future[None] | None = None
            stores: Future[None] | None = None
            if lay.control_plane:
                control_plane = pool.submit(self._timed, report, "etcd + kube-apiserver ready",
                                            lambda: self._control_plane(report))
            if lay.node:
                runtime = pool.submit(self._timed, report,
                                      "registry, containerd + images imported",
                                      lambda: self._runtime(report))
            if lay.datastores:
                stores = pool.submit(self._timed, report,
                                     "datastores (etcd, PostgreSQL, MariaDB)",
                                     lambda: self._datastores(report))
            for future in (control_plane, runtime):
                if future:
                    future.result()
            if lay.node:
                self._timed(report, "kubelet + kube-proxy, node Ready", lambda: self._node(report))
                self._timed(report, "kube-network-policies enforcing",
                            lambda: self._network_policies(report))
            if stores:
                stores.result()
        self._link_tools()
        report.step("total", time.monotonic() - t0)
        return report

    def _write_state(self, baseline: list[Any]) -> None:
        state = {
            "haku": __version__,
            "kubernetes": self.versions.kubernetes,
            "versions": self.versions.__dict__,
            "layout": self.layout.describe(),
            "baseline_chains": [list(c) for c in baseline],
        }
        tmp = self.layout.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.rename(self.layout.state_file)

    def _ensure_pki(self) -> None:
        d, lay = self.layout.pki, self.layout
        alg = pki.KeyAlgorithm.ECDSA_P256
        if not lay.control_plane:
            return
        if not (d / "ca.key").exists():
            d.mkdir(parents=True, exist_ok=True)
            ca = pki.new_ca("haku-dev-admin-ca", alg)
            leaves: dict[str, pki.KeyPair] = {
                "apiserver": pki.issue(
                    ca, "kube-apiserver", pki.Usage.SERVER,
                    dns_names=["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                               "kubernetes.default.svc.cluster.local", "localhost"],
                    ip_addresses=["127.0.0.1", lay.node_ip, lay.kubernetes_service_ip],
                    algorithm=alg,
                ),
                "apiserver-kubelet-client": pki.issue(
                    ca, "kube-apiserver-kubelet-client", pki.Usage.CLIENT,
                    organizations=["system:masters"], algorithm=alg),
                "admin": pki.issue(ca, "haku-dev-admin", pki.Usage.CLIENT,
                                   organizations=["system:masters"], algorithm=alg),
                "controller-manager": pki.issue(
                    ca, "system:kube-controller-manager", pki.Usage.CLIENT, algorithm=alg),
                "scheduler": pki.issue(ca, "system:kube-scheduler", pki.Usage.CLIENT,
                                       algorithm=alg),
                "kubelet": pki.issue(ca, f"system:node:{lay.node_name}", pki.Usage.CLIENT,
                                     organizations=["system:nodes"], algorithm=alg),
                "kube-proxy": pki.issue(ca, "system:kube-proxy", pki.Usage.CLIENT,
                                        algorithm=alg),
            }
            sa = pki.new_key(alg)
            _write(d / "sa.key", pki.key_pem(sa), 0o600)
            _write(d / "sa.pub", pki.public_key_pem(sa), 0o644)
            for name, pair in leaves.items():
                _write(d / f"{name}.crt", pair.cert_pem, 0o644)
                _write(d / f"{name}.key", pair.key_pem, 0o600)
            _write(d / "ca.crt", ca.cert_pem, 0o644)
            _write(d / "ca.key", ca.key_pem, 0o600)  # last: marks the set complete
        ca_pem = (d / "ca.crt").read_bytes()
        users = {"admin": "haku-dev-admin", "controller-manager": "system:kube-controller-manager",
                 "scheduler": "system:kube-scheduler", "kubelet": "kubelet",
                 "kube-proxy": "system:kube-proxy"}
        for name, user in users.items():
            doc = kubeconfig.client_certificate_kubeconfig(
                "haku-dev", lay.apiserver_url, ca_pem, user,
                (d / f"{name}.crt").read_bytes(), (d / f"{name}.key").read_bytes())
            _write(lay.kubeconfigs / f"{name}.conf", kubeconfig.dump(doc), 0o600)
        shutil.copyfile(lay.kubeconfigs / "admin.conf", lay.admin_kubeconfig)
        lay.admin_kubeconfig.chmod(0o600)

    def _control_plane(self, report: Report) -> None:
        k8s, lay = self.bins["kubernetes"], self.layout
        self._start(report, ProcessSpec(ETCD, config.etcd_argv(self.bins["etcd"] / "etcd", lay)))
        self._start(report, ProcessSpec(
            APISERVER, config.apiserver_argv(k8s / "kube-apiserver", lay)))
        self.supervisor.wait_ready(APISERVER, self.apiserver_ready, 90, "ready (/readyz)")
        if lay.node:
            self._start(report, ProcessSpec(
                CONTROLLER_MANAGER,
                config.controller_manager_argv(k8s / "kube-controller-manager", lay)))
            self._start(report, ProcessSpec(
                SCHEDULER, config.scheduler_argv(k8s / "kube-scheduler", lay)))

    def _registry(self, report: Report) -> None:
        """The local registry on the node IP, and containerd's hosts.toml pointing at it."""
        lay = self.layout
        registry.write_config(lay)
        self._start(report, ProcessSpec(
            REGISTRY, registry.argv(self.bins["registry"] / "registry", lay), env=registry.ENV))
        self.supervisor.wait_ready(REGISTRY, lambda: registry.ready(lay.registry_endpoint),
                                   registry.READY_TIMEOUT,
                                   f"serving on {lay.registry_endpoint} (GET /v2/)")
        registry.write_hosts(lay.containerd_hosts_dir, lay.registry_endpoint)

    def _runtime(self, report: Report) -> None:
        lay = self.layout
        self._registry(report)
        for sub in ("root", "state", "opt"):
            (lay.containerd_dir / sub).mkdir(parents=True, exist_ok=True)
        _write(lay.cni_dir / "net.d" / "10-haku.conflist", config.cni_conflist(lay), 0o644)
        _write(lay.containerd_dir / "config.toml",
               config.containerd_toml(lay, f"registry.k8s.io/pause:{self.versions.pause}"), 0o644)
        self._start(report, ProcessSpec(
            CONTAINERD,
            ["containerd", f"--config={lay.containerd_dir / 'config.toml'}"],
        ))
        ctr_version = ["ctr", "--address", str(lay.containerd_socket), "version"]
        self.supervisor.wait_ready(
            CONTAINERD,
            lambda: subprocess.run(ctr_version, capture_output=True, check=False).returncode == 0,
            30, "serving its socket")
        pause = images.build_pause(self.cache)
        built = images.build_archives(images.image_specs(self.bins, self.versions, pause),
                                      self.cache)
        images.import_images(built, lay.containerd_socket)

    def _datastores(self, report: Report) -> None:
        stores = datastores.all_datastores(self.layout, self.bins["etcd"])
        with ThreadPoolExecutor(max_workers=len(stores)) as pool:
            futures = {
                s.spec().name: pool.submit(datastores.start, s, self.supervisor) for s in stores
            }
            for name, future in futures.items():
                report.component(name, future.result())
        datastores.write_connections(self.layout, stores)

    def _node(self, report: Report) -> None:
        k8s, lay = self.bins["kubernetes"], self.layout
        _write(lay.state_dir / "kubelet.yaml", config.dump_yaml(config.kubelet_config(lay)), 0o644)
        (lay.kubelet_dir / "pki").mkdir(parents=True, exist_ok=True)
        host.ensure_cgroup(lay.pods_cgroup)
        # Heartbeats carry whole seconds: allow for the truncation.
        since = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
        _, started = self.supervisor.start(
            ProcessSpec(KUBELET, config.kubelet_argv(k8s / "kubelet", lay)))
        report.component(KUBELET, started)
        self._start(report, ProcessSpec(
            KUBE_PROXY, config.kube_proxy_argv(k8s / "kube-proxy", lay)))
        self.supervisor.wait_ready(KUBELET, lambda: self.node_ready(since if started else None),
                                   120, f"Ready as node {lay.node_name}")

    def _network_policies(self, report: Report) -> None:
        """kube-network-policies with a fresh token, then the rules that queue to it.

        The steering goes in only once the process listens on the queue (it fails closed:
        packets queued to nobody are dropped)."""
        lay = self.layout
        netpol.write_credentials(lay, netpol.issue_token(lay))
        self._start(report, ProcessSpec(
            NETWORK_POLICIES,
            netpol.argv(self.bins["kube-network-policies"] / "kube-network-policies", lay),
            env=netpol.env(lay)))
        self.supervisor.wait_ready(NETWORK_POLICIES, netpol.queue_bound, 60,
                                   f"listening on NFQUEUE {netpol.QUEUE}")
        netpol.ensure_steering(lay)

    def _link_tools(self) -> None:
        self.layout.bin.mkdir(parents=True, exist_ok=True)
        tools = {"kubectl": self.bins["kubernetes"] / "kubectl",
                 "kubeadm": self.bins["kubernetes"] / "kubeadm",
                 "etcdctl": self.bins["etcd"] / "etcdctl"}
        if "kine" in self.bins:
            tools["kine"] = self.bins["kine"] / "kine"
        for name, target in tools.items():
            link = self.layout.bin / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)

    # ------------------------------------------------------------------------------ down

    def down(self, purge: bool = False) -> DownReport:
        if os.geteuid() != 0:
            raise DevClusterError("haku dev down needs root")
        lay, result = self.layout, DownReport()
        state: dict[str, Any] = {}
        if lay.state_file.exists():
            try:
                state = json.loads(lay.state_file.read_text())
            except ValueError:
                state = {}
        if lay.node:  # workers first: their traffic goes through the admin node
            result.workers = [
                r.name + (f" ({r.node_name})" if r.node_name else "")
                + (f" FAILED: {'; '.join(r.errors)}" if r.errors else "")
                for r in worker.remove_all(lay) if r.name != "(host)"]
        recorded = {r.name for r in self.supervisor.records()}
        netns = host.pod_netns(lay.cni_bridge) if lay.node else []
        if lay.node and self.supervisor.running(CONTAINERD):
            # Also the namespaces of sandboxes already torn down (veth gone, file left).
            _, sandboxes = worker.sandbox_netns(lay.containerd_socket)
            netns = sorted(set(netns) | {ns for ns in sandboxes if host.netns_exists(ns)})
        kube_proxy = self.supervisor.record(KUBE_PROXY)
        if lay.node:  # nothing is queued to a listener about to go
            result.chains += netpol.remove_steering()
        for name in STOP_ORDER:
            if name not in recorded:
                continue
            if name == CONTAINERD:
                self._kill_containers()
            sig = datastores.STOP_SIGNALS.get(name, signal.SIGTERM)
            if self.supervisor.stop(name, sig=sig):
                result.stopped.append(name)
        for name in recorded - set(STOP_ORDER):
            if self.supervisor.stop(name):
                result.stopped.append(name)
        if lay.node:
            result.killed_leftovers = self._kill_leftovers()
            # kube-proxy --cleanup removes every kube-proxy rule on the host: only when no
            # other kube-proxy runs here (ours are gone, workers' too).
            if kube_proxy and Path(kube_proxy.argv[0]).exists() \
                    and not _kube_proxy_running():
                subprocess.run([kube_proxy.argv[0], "--cleanup"], capture_output=True,
                               check=False, timeout=60)
            if not netpol.running_elsewhere() and netpol.remove_nft_table():
                result.nft_tables.append(" ".join(netpol.NFT_TABLE))
            result.unmounted = host.unmount_under([lay.state_dir])
            for ns in netns:
                if host.netns_exists(ns):
                    host.delete_netns(ns)
                    result.netns.append(ns)
            for link in (lay.cni_bridge, lay.node_bridge):
                if host.delete_link(link):
                    result.links.append(link)
            baseline = {tuple(c) for c in state.get("baseline_chains", [])}
            ours = sorted(c for c in host.kube_chains()
                          if c not in baseline and kubernetes_chain(c[2]))
            result.chains += host.remove_chains(ours)
            result.cgroups = host.remove_cgroups(lay.pods_cgroup)
            _remove_cni_cache(lay.cni_network)
        else:
            result.unmounted = host.unmount_under([lay.state_dir])
        if purge and lay.state_dir.exists():
            shutil.rmtree(lay.state_dir)
        return result

    def _kill_containers(self) -> None:
        ctr = ["ctr", "--address", str(self.layout.containerd_socket), "--namespace", "k8s.io"]
        listed = subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True,
                                check=False, timeout=30)
        for task in listed.stdout.split():
            subprocess.run([*ctr, "tasks", "kill", "-s", "SIGKILL", task], capture_output=True,
                           check=False, timeout=30)
        deadline = time.monotonic() + 10
        while host.cgroup_pids(self.layout.pods_cgroup) and time.monotonic() < deadline:
            time.sleep(0.2)

    def _kill_leftovers(self) -> list[int]:
        """Container processes and shims that outlived containerd: ours by cgroup or socket."""
        socket = str(self.layout.containerd_socket)
        victims = set(host.cgroup_pids(self.layout.pods_cgroup))
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            joined = b" ".join(cmdline)
            if cmdline[0].endswith(b"containerd-shim-runc-v2") and (
                socket.encode() in joined or str(self.layout.state_dir).encode() in joined
            ):
                victims.add(int(proc.name))
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return sorted(victims)

    # ------------------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        lay = self.layout
        components = {}
        for name in self.components:
            record = self.supervisor.running(name)
            components[name] = {"running": bool(record), "pid": record.pid if record else None}
        info: dict[str, Any] = {
            "state_dir": str(lay.state_dir),
            "kubernetes": self.versions.kubernetes,
            "components": components,
        }
        if lay.control_plane:
            apiserver = bool(components[APISERVER]["running"]) and self.apiserver_ready()
            info["apiserver_ready"] = apiserver
            info["admin_kubeconfig"] = str(lay.admin_kubeconfig)
        if lay.node:
            info["node_ready"] = info["apiserver_ready"] and self.node_ready()
            info["network_policies"] = {
                "nfqueue": netpol.QUEUE, "listening": netpol.queue_bound(),
                "steering": netpol.steering_present()}
            info["registry"] = {
                "endpoint": lay.registry_endpoint, "storage": str(registry.storage_dir(lay)),
                "ready": bool(components[REGISTRY]["running"])
                and registry.ready(lay.registry_endpoint),
                "mirrors": list(registry.MIRRORED)}
            info["workers"] = worker.status(lay)
        if lay.datastores:
            conns = lay.datastores_dir / "connections.json"
            info["datastores"] = datastores.read_connections(lay) if conns.exists() else {}
        return info


def _write(path: Path, data: bytes | str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.chmod(mode)
    tmp.rename(path)


def _descends_from(pid: int, ancestors: set[int]) -> bool:
    for _ in range(32):
        if pid in ancestors:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if pid <= 1:
            return False
    return False


# The chains kubelet and kube-proxy (iptables mode) create: fixed names, and per-Service ones
# made of a prefix and a 16-character hash. ``down`` removes only these (and only those that
# were not there before ``up``): a KUBE-* chain of some other tool is left alone.
KUBERNETES_CHAINS = frozenset({
    "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ", "KUBE-MARK-DROP", "KUBE-FORWARD", "KUBE-FIREWALL", "KUBE-PROXY-FIREWALL",
    "KUBE-PROXY-CANARY", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT",
})
KUBERNETES_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-FW-", "KUBE-EXT-")


def kubernetes_chain(name: str) -> bool:
    """Whether ``name`` is a chain kubelet or kube-proxy makes."""
    if name in KUBERNETES_CHAINS:
        return True
    return any(re.fullmatch(re.escape(prefix) + "[A-Z0-9]{16}", name)
               for prefix in KUBERNETES_CHAIN_PREFIXES)


def _kube_proxy_running() -> bool:
    """Whether any kube-proxy process runs on this host."""
    return host.binary_running("kube-proxy")


def _chain_baseline(recorded: list[Any] | None, nothing_running: bool,
                    now: set[host.Chain]) -> list[Any]:
    """The chains that were on the host before Haku's first ``up``.

    A recorded baseline is kept across restarts (chains an earlier, failed ``down`` left are
    still Haku's, so the next ``down`` removes them); only chains gone since are dropped from
    it. With no record, it is what is there now.
    """
    if recorded is None:
        return sorted(now)
    kept = {tuple(c) for c in recorded}
    if nothing_running:
        kept &= now
    return sorted(kept)


def _remove_cni_cache(network: str) -> None:
    """libcni caches results in /var/lib/cni/results/<network>-<container>-<ifname>."""
    results = Path("/var/lib/cni/results")
    if results.is_dir():
        for f in results.glob(f"{network}-*"):
            f.unlink(missing_ok=True)
