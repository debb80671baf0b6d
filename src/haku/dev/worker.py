"""``haku dev worker add|remove``: a real worker node of a tenant, on this machine.

A worker is what a second machine would be: its own network namespace (``worker_net``), its
own containerd (a kubelet garbage-collects pods it does not know, so it cannot share the admin
node's), its own root, certificate and CNI directories under ``<state>/workers/w<N>/``, its own
cgroup root ``/haku-w<N>``, and it joins the tenant with the real ``kubeadm join`` through the
tenant's NodePort (or the host name of its Ingress or Gateway, carried by Traefik on the
admin node: ``haku.dev.exposure``). It runs nothing of the admin cluster's and holds no admin
credential: the only credentials in its directory are the bootstrap token (``join.yaml``) and
the kubelet's own, issued by the tenant.

``kubeadm join`` writes to fixed paths (``/etc/kubernetes``, ``/var/lib/kubelet``): it runs in
a private mount namespace where the worker's directories are bind-mounted there (and a
``resolv.conf`` naming only the admin node IP, which refuses DNS, over ``/etc/resolv.conf``).
There is no systemd to start the kubelet it configured, so once kubeadm has written the
kubelet's files this module starts the kubelet itself, in the host's mount namespace (its
mounts must be those containerd sees), and kubeadm goes on to wait for the TLS bootstrap.

The kubelet runs the KubeletConfiguration its tenant serves, as kubeadm downloaded it:
``--config`` is ``/var/lib/kubelet/config.yaml`` (the worker's ``var-lib-kubelet/``) and
nothing writes to it. What is the worker's alone (its paths instead of ``/etc/kubernetes``
and ``/var/lib/kubelet``, cgroup root, containerd socket, resolver, pod logs, volume plugins,
static pods, healthz address, client CA) is a drop-in in ``--config-dir``
(``worker_config.kubelet_dropin``; upstream's drop-in configuration, merged over ``--config``
as a JSON merge patch), which never sets what this machine needs of every kubelet
(``config.VM_KUBELET``: the cgroupfs driver, cgroup v1, swap, eviction and image GC
thresholds). Tenants serve those: ``config.tenant_kubelet_settings()`` as
``spec.kubernetes.kubelet`` (``cgroupfs`` and ``configurationJSONPatches``), which every
sample tenant carries. Before the kubelet starts, a served configuration without the ones it
cannot start without (``config.VM_KUBELET_HARD``) fails the add with the fields to set.

``renew_ca`` is a node's step of a tenant CA rotation (``haku dev worker renew-ca``): the
bundle the tenant publishes in cluster-info (checked as kubeadm's discovery checks it,
``worker_ca``) becomes the kubelet's client CA, and the kubelet, restarted without its client
credentials, TLS-bootstraps again with a fresh token; its Node and pods stay.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from haku.dev import addons, config, host, images, registry, releases, toolchain, worker_ca
from haku.dev import worker_net as wnet
from haku.dev.layout import Layout
from haku.dev.processes import ComponentFailed, ProcessSpec, Supervisor, log_tail
from haku.dev.versions import (
    BUSYBOX_IMAGE,
    Versions,
    coredns_image_name,
    kube_proxy_image_name,
    kubelet_skew_problem,
)
from haku.dev.worker_config import (
    KUBEADM_ETC,
    KUBEADM_SUCCESS,
    KUBEADM_VAR,
    KUBELET_FILES_WRITTEN,
    Timeouts,
    WorkerPaths,
    cni_conflist,
    containerd_toml,
    join_argv,
    join_configuration,
    join_log,
    kubelet_argv,
    kubelet_dropin,
    node_name,
    node_ready,
    parse_index,
    parse_kubeadm_flags,
    process_names,
    resolv_conf,
    served_kubelet_error,
    served_kubelet_problems,
    worker_name,
    worker_net,
    worker_paths,
    workers_dir,
)
from haku.dev.worker_config import (
    WorkerError as WorkerError,  # re-exported: what add and remove raise
)
from haku.dev.worker_config import (
    split_tenant as split_tenant,
)
from haku.dev.worker_net import WORKER_BRIDGE, WorkerNet
from haku.tenant.tokens import JoinCommand

if TYPE_CHECKING:
    from lightkube import AsyncClient

Printer = Callable[[str], None]

CNI_RESULTS = Path("/var/lib/cni/results")
# The whole environment of a worker's processes: nothing of the caller's (a KUBECONFIG naming
# the admin cluster, say) reaches them.
WORKER_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "HOME": "/root", "LC_ALL": "C"}


# ---------------------------------------------------------------------------------------------
# Records


@dataclass
class Worker:
    name: str
    index: int
    tenant: str  # NAMESPACE/NAME
    node_name: str
    endpoint: str
    address: str
    pod_cidr: str
    netns: str
    host_link: str
    cgroup: str
    kubernetes: str  # its kubelet's and kubeadm's version (and its kube-proxy image's)
    created: str
    state: str = "creating"  # creating | joined | ready
    pids: dict[str, int] = field(default_factory=dict)
    behind_nat: bool = False  # the admin side cannot open connections to it (worker_net)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Worker:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _save(paths: WorkerPaths, worker: Worker) -> None:
    tmp = paths.record.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(worker), indent=2) + "\n")
    tmp.rename(paths.record)


def load(layout: Layout, index: int) -> Worker | None:
    try:
        return Worker.from_dict(json.loads(worker_paths(layout, index).record.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def list_workers(layout: Layout) -> list[Worker]:
    """Every recorded worker, by index."""
    d = workers_dir(layout)
    found = []
    if d.is_dir():
        for sub in d.iterdir():
            index = parse_index(sub.name)
            if index is not None and sub.is_dir():
                w = load(layout, index)
                if w:
                    found.append(w)
    return sorted(found, key=lambda w: w.index)


def resolve(layout: Layout, ref: str) -> int:
    """A worker's index from ``w1``, ``1``, ``haku-w1`` or its node name; a worker without a
    record (a failed add's leftovers) is found by its index."""
    index = parse_index(ref)
    if index is not None and index in leftover_indices(layout):
        return index
    for w in list_workers(layout):
        if ref in (w.node_name, w.name):
            return w.index
    known = ", ".join(f"{w.name} ({w.node_name})" for w in list_workers(layout)) or "none"
    raise WorkerError(f"no worker {ref!r}; workers: {known}")


def leftover_indices(layout: Layout) -> set[int]:
    """Indices of anything a worker may have left: directories, records, namespaces, links,
    processes recorded by the supervisor, cgroups."""
    found: set[int] = set()
    d = workers_dir(layout)
    if d.is_dir():
        found |= {i for i in (parse_index(p.name) for p in d.iterdir()) if i is not None}
    for name in host.netns_names():
        m = re.fullmatch(rf"{wnet.NETNS_PREFIX}(\d+)", name)
        if m:
            found.add(int(m.group(1)))
    for name in host.link_names():
        m = re.fullmatch(rf"{wnet.HOST_LINK_PREFIX}(\d+)", name)
        if m:
            found.add(int(m.group(1)))
    for record in Supervisor(layout.pids, layout.logs).records():
        m = re.fullmatch(r"worker-w(\d+)-\w+", record.name)
        if m:
            found.add(int(m.group(1)))
    for root in host.cgroup_roots():
        for p in root.glob(f"{wnet.NETNS_PREFIX}*"):
            m = re.fullmatch(rf"{wnet.NETNS_PREFIX}(\d+)", p.name)
            if m:
                found.add(int(m.group(1)))
    return {i for i in found if 1 <= i <= wnet.MAX_INDEX}


# ---------------------------------------------------------------------------------------------
# Host state shared by all workers: the forward guard and the mount points kubeadm needs


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[dict[str, Any]]:
    """The shared record ``workers/host.json``, read and written under a lock."""
    d = workers_dir(layout)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "host.json"
    with (d / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            state = {}
        yield state
        if state:
            path.write_text(json.dumps(state, indent=2) + "\n")
        else:
            path.unlink(missing_ok=True)


def _claim(layout: Layout, tenant_name: str, avoid_nodes: frozenset[str]) -> int:
    """The smallest free worker index whose node name the tenant does not have yet, its
    directory created (mkdir is the claim)."""
    d = workers_dir(layout)
    d.mkdir(parents=True, exist_ok=True)
    taken = leftover_indices(layout)
    for index in range(1, wnet.MAX_INDEX + 1):
        if index in taken or node_name(tenant_name, index) in avoid_nodes:
            continue
        try:
            (d / worker_name(index)).mkdir()
        except FileExistsError:
            continue
        return index
    raise WorkerError(f"all {wnet.MAX_INDEX} worker slots are taken")


def _prepare_host(layout: Layout) -> None:
    """Forward guard first, then forwarding on the admin pod bridge (for the replies)."""
    with _locked(layout) as state:
        if not wnet.forward_guard_present():
            state["guard_created"] = True  # ours to remove with the last worker
        wnet.ensure_forward_guard(layout.cni_bridge)
        knob = f"net.ipv4.conf.{layout.cni_bridge}.forwarding"
        saved = state.setdefault("saved_sysctls", {})
        if knob not in saved:
            before = host.read_sysctl(knob)
            if before is None:
                raise WorkerError(f"{layout.cni_bridge} does not exist: is the admin cluster "
                                  "up? (haku dev up)")
            saved[knob] = before
        host.write_sysctl(knob, "1")
        created = state.setdefault("created_dirs", [])
        for d in (KUBEADM_ETC, KUBEADM_VAR):
            if not d.exists():
                d.mkdir(parents=True)
                created.append(str(d))


def _release_host(layout: Layout, report: RemoveReport, everything: bool = False) -> None:
    """Once no worker is left: the guard (if a worker made it, or ``everything``), the saved
    sysctls and the mount points go."""
    if not workers_dir(layout).is_dir():  # no worker was ever made here: nothing is recorded
        if everything and not leftover_indices(layout) and wnet.remove_forward_guard():
            report.removed.append(f"iptables chain {wnet.FORWARD_CHAIN}")
        return
    with _locked(layout) as state:
        if leftover_indices(layout):
            return
        if (state.pop("guard_created", False) or everything) and wnet.remove_forward_guard():
            report.removed.append(f"iptables chain {wnet.FORWARD_CHAIN}")
        for knob, value in (state.pop("saved_sysctls", None) or {}).items():
            if host.read_sysctl(knob) is not None:
                host.write_sysctl(knob, value)
                report.removed.append(f"{knob} back to {value}")
        for d in state.pop("created_dirs", None) or []:
            with contextlib.suppress(OSError):  # not empty: someone else's now
                Path(d).rmdir()
                report.removed.append(f"mount point {d}")
        state.clear()


# ---------------------------------------------------------------------------------------------
# add


@dataclass
class AddResult:
    worker: Worker
    steps: list[tuple[str, float]]
    joined_line: str
    log: Path


class _Steps:
    def __init__(self, printer: Printer) -> None:
        self.print = printer
        self.steps: list[tuple[str, float]] = []
        self.mark = time.monotonic()

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.steps.append((name, now - self.mark))
        self.print(f"  {name:<52} {now - self.mark:6.1f}s")
        self.mark = now


def add(
    layout: Layout,
    tenant: str,
    join: JoinCommand,
    *,
    versions: Versions | None = None,
    cache: Path | None = None,
    printer: Printer | None = None,
    timeouts: Timeouts | None = None,
    keep_on_failure: bool = False,
    avoid_nodes: frozenset[str] = frozenset(),
    behind_nat: bool = False,
    tenant_version: str | None = None,
) -> AddResult:
    """Make a worker and join it to ``tenant`` (``NAMESPACE/NAME``) with ``join``.

    ``join.endpoint`` must be reachable from the worker (a NodePort on the admin node IP, or an
    Ingress's or Gateway's host name that resolves to Traefik there: ``haku dev exposure``).
    ``avoid_nodes``: Node names the tenant has already (kubeadm refuses to join as a Node
    that exists and is Ready, e.g. one left by a worker of an earlier ``haku dev up``).
    ``behind_nat``: the admin node and its pods cannot open a connection to the worker or its
    pods, and see what it sends as coming from the admin node IP (``worker_net.ensure_nat``).
    The addon images (``haku.dev.addons``) that are built already are imported too.
    ``tenant_version``: the tenant's version (the CLI's: ``spec.kubernetes.version``, or the
    one its status says runs while an upgrade is under way; without it, nor ``versions``, the
    version the tenant's API server reports at ``/version``). Without ``versions`` the worker
    runs the kubelet, kubeadm and kube-proxy image of that release (built first if not
    cached); with ``versions`` its kubelet must be no newer (upstream's skew policy).
    Returns when kubeadm has joined and the Node is Ready. On failure everything made is
    removed again (unless ``keep_on_failure``) and WorkerError or ComponentFailed says why,
    with the tail of the log that shows it.
    """
    out = printer or (lambda line: print(line, flush=True))
    timeouts = timeouts or Timeouts()
    _, tenant_name = split_tenant(tenant)
    _check_host(layout)
    problem = cluster_info_problem(join.endpoint)
    if problem:
        raise WorkerError(f"{tenant}: {problem}")
    if versions is None and tenant_version is None:  # what the tenant's API server runs
        tenant_version = served_version(join.endpoint)
    versions = releases.worker_versions(versions, tenant_version)
    skew = tenant_version and kubelet_skew_problem(versions.kubernetes, tenant_version)
    if skew:
        raise WorkerError(f"{tenant}: {skew}")
    if not releases.is_built(versions.kubernetes, cache, versions):
        out(f"kubernetes {versions.kubernetes} (the worker's kubelet and kubeadm) is not built "
            f"yet: building it first (about 9 min on 2 cores; `haku dev images "
            f"{versions.kubernetes}` does it ahead)")
    bins = toolchain.ensure(["kubernetes", "etcd", "kine", "coredns"], versions, cache,
                            progress=out)
    index = _claim(layout, tenant_name, avoid_nodes)
    name, net, paths = worker_name(index), worker_net(layout, index), worker_paths(layout, index)
    worker = Worker(
        name=name, index=index, tenant=tenant, node_name=node_name(tenant_name, index),
        endpoint=join.endpoint, address=net.address, pod_cidr=net.pod_cidr, netns=net.netns,
        host_link=net.host_link, cgroup=f"/{net.netns}", kubernetes=versions.kubernetes,
        created=datetime.now(UTC).isoformat(timespec="seconds"), behind_nat=behind_nat)
    _save(paths, worker)
    out(f"haku dev worker add {tenant}: worker {name}, node {worker.node_name}, "
        f"{net.address}, pods {net.pod_cidr}" + (", behind NAT" if behind_nat else ""))
    try:
        result = _add(layout, worker, join, bins, versions, cache, out, timeouts)
    except BaseException:
        if not keep_on_failure:
            out(f"  (removing the half-made worker {name}; add --keep-on-failure to keep it)")
            with contextlib.suppress(Exception):
                remove(layout, name, printer=lambda _: None)
        raise
    return result


def _cluster_info(endpoint: str, timeout: float,
                  path: str = "/api/v1/namespaces/kube-public/configmaps/cluster-info",
                  cadata: bytes | None = None) -> tuple[int, dict[str, Any]] | str:
    """kube-public/cluster-info (or ``path``) read anonymously: (HTTP status, body), or why
    it failed. Without ``cadata`` the server is not verified (kubeadm's first read of
    discovery, checked afterwards by signature and pin; or a presence check); with it, the
    server's chain must verify against those CAs (PEM) and name the endpoint's host."""
    hostname, _, port = endpoint.rpartition(":")
    if cadata is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:  # no system CAs, hostname (an IP here) checked against the certificate's SANs
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=cadata.decode())
    conn = http.client.HTTPSConnection(hostname, int(port), context=ctx, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as e:
        return f"{endpoint} does not answer: {e}"
    finally:
        conn.close()
    try:
        data = json.loads(body)
    except ValueError:
        data = {"message": body[:200].decode(errors="replace")}
    return response.status, data if isinstance(data, dict) else {}


def served_version(endpoint: str, timeout: float = 5.0) -> str | None:
    """The version the API server at ``endpoint`` reports at ``/version`` (readable
    anonymously, as kubeadm's discovery is), or None if it does not say."""
    got = _cluster_info(endpoint, timeout, path="/version")
    if isinstance(got, str) or got[0] != 200:
        return None
    version = str(got[1].get("gitVersion") or "")
    return version if re.fullmatch(r"v\d+\.\d+\.\d+", version) else None


def cluster_info_problem(endpoint: str, timeout: float = 5.0) -> str | None:
    """Why kubeadm's discovery would fail at ``endpoint`` (None if cluster-info is there).

    Discovery reads kube-public/cluster-info anonymously; kubeadm itself then checks the CA
    against the pinned hash and the token's signature. This only looks for the ConfigMap,
    so a tenant that is not bootstrapped fails at once rather than after kubeadm's timeout.
    """
    got = _cluster_info(endpoint, timeout)
    if isinstance(got, str):
        return got
    status, data = got
    if status == 200:
        return None
    return (f"kube-public/cluster-info answers {status} ({data.get('message', '')}): the "
            "tenant is not bootstrapped for kubeadm join (cluster-info and its anonymous read "
            "access)")


def wait_token_signed(endpoint: str, token: str, timeout: float) -> bool:
    """Wait until the tenant's bootstrapsigner has signed cluster-info for ``token`` (kubeadm
    would otherwise retry discovery every 5 s); False if it has not within ``timeout``."""
    key = "jws-kubeconfig-" + token.split(".", 1)[0]
    deadline = time.monotonic() + timeout
    while True:
        got = _cluster_info(endpoint, 5.0)
        if not isinstance(got, str) and key in (got[1].get("data") or {}):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def join_log_tail(log: Path, lines: int = 15) -> str:
    """The end of kubeadm's output without the coloured system-verification table."""
    text = log_tail(log, 200)
    kept = [line for line in text.splitlines() if "\x1b[" not in line]
    return "\n".join(kept[-lines:])


def _check_host(layout: Layout) -> None:
    if not layout.node:
        raise WorkerError("workers need the full admin cluster (not --api-only / "
                          "--datastores-only)")
    for link in (layout.node_bridge, layout.cni_bridge):
        if not host.link_exists(link):
            raise WorkerError(f"{link} does not exist: the admin cluster is not up "
                              "(haku dev up)")
    missing = [t for t in ("nsenter", "unshare", "containerd", "ctr", "iptables")
               if shutil.which(t) is None]
    if missing:
        raise WorkerError(f"missing tools: {', '.join(missing)} (make deps)")


def _add(layout: Layout, worker: Worker, join: JoinCommand, bins: dict[str, Path],
         versions: Versions, cache: Path | None, out: Printer,
         timeouts: Timeouts) -> AddResult:
    net, paths = worker_net(layout, worker.index), worker_paths(layout, worker.index)
    supervisor = Supervisor(layout.pids, layout.logs)
    containerd_name, kubelet_name = process_names(worker.name)
    steps = _Steps(out)

    # 1. network (behind NAT before its link exists: never a moment without)
    _prepare_host(layout)
    if worker.behind_nat:
        wnet.ensure_nat(net)
    wnet.create(net)
    problem = wnet.reaches(net, join.endpoint)
    if problem:
        raise WorkerError(f"the worker cannot reach the tenant endpoint {join.endpoint}: "
                          f"{problem}")
    steps.done(f"network namespace {net.netns} (reaches {join.endpoint})" +
               (", behind NAT" if worker.behind_nat else ""))

    # 2. containerd
    for d in (paths.containerd_dir / "root", paths.containerd_dir / "state",
              paths.containerd_dir / "opt", paths.cni_dir / "net.d", paths.runc_root):
        d.mkdir(parents=True, exist_ok=True)
    paths.cni_conflist.write_text(cni_conflist(paths, net))
    paths.containerd_config.write_text(
        containerd_toml(paths, net, f"registry.k8s.io/pause:{versions.pause}"))
    # Pulls of registry.k8s.io and docker.io go to the dev cluster's registry (its gateway).
    registry.write_hosts(paths.containerd_hosts_dir, layout.registry_endpoint)
    record, _ = supervisor.start(ProcessSpec(
        containerd_name, [*net.nsenter(), "containerd", f"--config={paths.containerd_config}"],
        env=WORKER_ENV))
    worker.pids["containerd"] = record.pid
    _save(paths, worker)
    ctr_version = ["ctr", "--address", str(paths.containerd_socket), "version"]
    supervisor.wait_ready(
        containerd_name,
        lambda: subprocess.run(ctr_version, capture_output=True, check=False).returncode == 0,
        timeouts.containerd, "serving its socket")
    steps.done("containerd (own root, state, socket, CNI, runc root)")

    # 3. images
    wanted = {f"registry.k8s.io/pause:{versions.pause}",
              kube_proxy_image_name(versions.kubernetes),
              coredns_image_name(versions.coredns), BUSYBOX_IMAGE}
    cache = cache or toolchain.cache_root()
    pause = images.build_pause(cache)
    specs = [s for s in images.image_specs(bins, versions, pause) if s.name in wanted]
    specs += addons.cached_worker_specs(versions, cache)  # built already: never built here
    specs += releases.upgrade_kube_proxy_specs(versions, cache)  # likewise
    built = images.build_archives(specs, cache)
    pool = ThreadPoolExecutor(max_workers=1)  # a deadline tighter than ctr's own
    try:
        pool.submit(images.import_images, built, paths.containerd_socket).result(
            timeout=timeouts.images)
    except FutureTimeout:
        supervisor.stop(containerd_name)  # which ends the stuck ctr too
        raise WorkerError(f"importing images into the worker's containerd took over "
                          f"{timeouts.images:.0f}s; log: "
                          f"{supervisor.log_path(containerd_name)}") from None
    finally:
        pool.shutdown(wait=False)
    steps.done(f"images imported ({', '.join(sorted(b.name.split('/')[-1] for b in built))})")
    signed = wait_token_signed(join.endpoint, join.token, timeouts.token_signed)
    steps.done("bootstrap token signed in cluster-info" if signed else
               "bootstrap token not signed in cluster-info yet (kubeadm will wait)")

    # 4. kubeadm join, and the kubelet it cannot start
    for d in (paths.etc_kubernetes, paths.var_lib_kubelet, paths.kubelet_root,
              paths.kubelet_pki, paths.pod_logs):
        d.mkdir(parents=True, exist_ok=True)
    paths.resolv_conf.write_text(resolv_conf(net.gateway))
    paths.join_config.write_text(join_configuration(join, worker.node_name,
                                                    paths.containerd_socket, timeouts))
    paths.join_config.chmod(0o600)
    host.ensure_cgroup(net.netns)
    k8s = bins["kubernetes"]
    log = join_log(layout, worker.name)
    joined_line = _join(layout, worker, net, paths, k8s, supervisor, log, steps, timeouts)
    worker.state = "joined"
    _save(paths, worker)

    # 5. node Ready
    _wait_node_ready(worker, paths, k8s / "kubectl", supervisor, kubelet_name,
                     timeouts.node_ready)
    steps.done("node Ready")
    worker.state = "ready"
    _save(paths, worker)
    return AddResult(worker, steps.steps, joined_line, log)


def _join(layout: Layout, worker: Worker, net: WorkerNet, paths: WorkerPaths, k8s: Path,
          supervisor: Supervisor, log: Path, steps: _Steps, timeouts: Timeouts) -> str:
    _, kubelet_name = process_names(worker.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    # kubeadm's preflight runs `kubelet --version`: the cached binaries go first on its PATH.
    env = WORKER_ENV | {"PATH": f"{k8s}:{WORKER_ENV['PATH']}"}
    argv = join_argv(net, paths, k8s / "kubeadm")
    started = time.monotonic()
    with log.open("wb") as sink:
        sink.write(f"=== {time.strftime('%F %T')} {shlex.join(argv)}\n".encode())
        sink.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                stdout=sink, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        kubelet_started: float | None = None
        bootstrapped = False
        while True:
            code = proc.poll()
            now = time.monotonic()
            if kubelet_started is None and code is None and _kubelet_files_ready(paths, log):
                steps.done("kubeadm join: discovery, preflight, kubelet files")
                _start_kubelet(layout, worker, net, paths, k8s, supervisor, steps.print)
                kubelet_started = now
            if kubelet_started is not None and not bootstrapped and \
                    paths.kubelet_kubeconfig.exists():
                bootstrapped = True
                steps.done("kubelet started, TLS bootstrap (client certificate)")
            if code is not None:
                break
            if kubelet_started is not None and not supervisor.running(kubelet_name):
                raise ComponentFailed(kubelet_name, "exited while kubeadm join waited for it",
                                      supervisor.log_path(kubelet_name))
            if kubelet_started is None and now - started > timeouts.kubelet_files:
                raise WorkerError(
                    f"kubeadm join wrote no kubelet configuration within "
                    f"{timeouts.kubelet_files:.0f}s (discovery or preflight stuck?); log: {log}"
                    f"\n--- last lines ---\n{join_log_tail(log)}")
            if now - started > timeouts.join:
                raise WorkerError(f"kubeadm join did not finish within {timeouts.join:.0f}s; "
                                  f"log: {log}\n--- last lines ---\n{join_log_tail(log)}")
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    text = log.read_text(errors="replace")
    if code != 0 or KUBEADM_SUCCESS not in text:
        raise WorkerError(f"kubeadm join failed (exit {code}); log: {log}\n"
                          f"--- last lines ---\n{join_log_tail(log)}")
    if kubelet_started is None:
        raise WorkerError(f"kubeadm join finished without writing the kubelet's files; log: {log}")
    steps.done("kubeadm join finished")
    return next(line.strip() for line in text.splitlines() if KUBEADM_SUCCESS in line)


def _kubelet_files_ready(paths: WorkerPaths, log: Path) -> bool:
    files = (paths.downloaded_kubelet_config, paths.kubeadm_flags, paths.bootstrap_kubeconfig,
             paths.ca)
    if not all(f.exists() for f in files):
        return False
    try:
        return KUBELET_FILES_WRITTEN in log.read_text(errors="replace")
    except OSError:
        return False


def _start_kubelet(layout: Layout, worker: Worker, net: WorkerNet, paths: WorkerPaths,
                   k8s: Path, supervisor: Supervisor, note: Printer) -> None:
    """The kubelet on the KubeletConfiguration kubeadm downloaded from the tenant, unmodified
    (``--config``), with the worker's placement as a drop-in (``--config-dir``); refused if
    what the tenant serves cannot run here."""
    _, kubelet_name = process_names(worker.name)
    served = yaml.safe_load(paths.downloaded_kubelet_config.read_text())
    hard, soft = served_kubelet_problems(served)
    if hard:
        raise served_kubelet_error(worker.tenant, hard)
    for problem in soft:
        note(f"  note: the tenant's KubeletConfiguration differs from this machine's needs: "
             f"{problem}")
    dropin = kubelet_dropin(served, paths, net)
    Path(dropin["staticPodPath"]).mkdir(parents=True, exist_ok=True)
    paths.kubelet_config_dir.mkdir(parents=True, exist_ok=True)
    paths.kubelet_dropin.write_text(config.dump_yaml(dropin))
    flags = parse_kubeadm_flags(paths.kubeadm_flags.read_text())
    record, _ = supervisor.start(ProcessSpec(
        kubelet_name, kubelet_argv(k8s / "kubelet", paths, net, worker.node_name, flags),
        env=WORKER_ENV))
    worker.pids["kubelet"] = record.pid
    _save(paths, worker)


def _get_node(kubectl: Path, kubeconfig: Path, node: str) -> dict[str, Any] | None:
    """The Node as the kubelet itself sees it (the Node authorizer lets it read its own)."""
    try:
        result = subprocess.run(
            [str(kubectl), f"--kubeconfig={kubeconfig}", "--request-timeout=5s", "get", "node",
             node, "-o", "json"], capture_output=True, text=True, check=False, timeout=15)
        if result.returncode != 0:
            return None
        data: dict[str, Any] = json.loads(result.stdout)
    except (subprocess.TimeoutExpired, ValueError):
        return None
    return data


def _wait_node_ready(worker: Worker, paths: WorkerPaths, kubectl: Path,
                     supervisor: Supervisor, kubelet_name: str, timeout: float,
                     since: datetime | None = None) -> None:
    started, why = time.monotonic(), "the Node does not exist yet"
    while True:
        node = _get_node(kubectl, paths.kubelet_kubeconfig, worker.node_name)
        if node:
            ready, why = node_ready(node, since)
            if ready:
                return
        if not supervisor.running(kubelet_name):
            raise ComponentFailed(kubelet_name, "exited before its node was Ready",
                                  supervisor.log_path(kubelet_name))
        if time.monotonic() - started > timeout:
            raise ComponentFailed(kubelet_name, f"did not get node {worker.node_name} Ready "
                                  f"within {timeout:.0f}s ({why})",
                                  supervisor.log_path(kubelet_name))
        time.sleep(1.0)


# ---------------------------------------------------------------------------------------------
# remove


@dataclass
class RemoveReport:
    name: str
    node_name: str | None = None
    node_deleted: str = ""  # what happened to the Node in the tenant
    stopped: list[str] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    unmounted: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def delete_node(kubectl: Path, tenant_kubeconfig: dict[str, Any], node: str,
                timeout: float = 15.0) -> str:
    """Best effort: delete ``node`` in the tenant; what happened, in words."""
    with tempfile.NamedTemporaryFile("w", prefix="haku-tenant-", suffix=".conf") as f:
        f.write(yaml.safe_dump(tenant_kubeconfig))
        f.flush()
        try:
            result = subprocess.run(
                [str(kubectl), f"--kubeconfig={f.name}", "--request-timeout=10s", "delete",
                 "node", node, "--ignore-not-found", "--wait=false"],
                capture_output=True, text=True, check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"not deleted: the tenant did not answer within {timeout:.0f}s"
    if result.returncode != 0:
        return f"not deleted: {(result.stderr or result.stdout).strip()[:300]}"
    return "deleted" if result.stdout.strip() else "was not there"


def remove(layout: Layout, ref: str, *, tenant_kubeconfig: dict[str, Any] | None = None,
           kubectl: Path | None = None, printer: Printer | None = None) -> RemoveReport:
    """Remove one worker (``w1``, ``1``, ``haku-w1`` or its node name) and all it made.

    With ``tenant_kubeconfig`` (the tenant's admin kubeconfig) its Node is deleted in the
    tenant first, best effort: the outcome is in the report, a failure does not stop the rest.
    """
    out = printer or (lambda line: print(line, flush=True))
    index = resolve(layout, ref)
    report = _remove(layout, index, tenant_kubeconfig, kubectl, out)
    _finish(layout, report, out)
    return report


def remove_all(layout: Layout, printer: Printer | None = None,
               guard: bool = True) -> list[RemoveReport]:
    """Remove every worker and whatever one left, and with ``guard`` the forward guard
    whoever made it (``haku dev down`` calls this first)."""
    out = printer or (lambda line: None)
    reports = []
    for index in sorted(leftover_indices(layout)):
        try:
            reports.append(_remove(layout, index, None, None, out))
        except Exception as e:  # one stuck worker must not keep the others (or down) going
            reports.append(RemoveReport(worker_name(index), errors=[f"{type(e).__name__}: {e}"]))
            out(f"  worker {worker_name(index)}: removal failed: {e}")
    final = RemoveReport(name="(host)")
    final.removed += wnet.remove_all_nat()  # a NAT chain whose worker left nothing else
    _finish(layout, final, out, everything=guard)
    if reports:
        reports[-1].removed += final.removed
    elif final.removed:
        reports.append(final)
    return reports


def _finish(layout: Layout, report: RemoveReport, out: Printer,
            everything: bool = False) -> None:
    """Host state shared by the workers goes with the last of them."""
    before = len(report.removed)
    _release_host(layout, report, everything)
    if report.removed[before:]:
        out(f"  no worker left: removed {', '.join(report.removed[before:])}")
    d = workers_dir(layout)
    if d.is_dir() and not leftover_indices(layout):
        (d / ".lock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            d.rmdir()


def _remove(layout: Layout, index: int, tenant_kubeconfig: dict[str, Any] | None,
            kubectl: Path | None, out: Printer) -> RemoveReport:
    name, net, paths = worker_name(index), worker_net(layout, index), worker_paths(layout, index)
    worker = load(layout, index)
    report = RemoveReport(name, worker.node_name if worker else None)
    supervisor = Supervisor(layout.pids, layout.logs)
    containerd_name, kubelet_name = process_names(name)
    if worker and tenant_kubeconfig is not None:
        tool = kubectl or Path(shutil.which("kubectl") or "kubectl")
        report.node_deleted = delete_node(tool, tenant_kubeconfig, worker.node_name)
        out(f"  node {worker.node_name} in tenant {worker.tenant}: {report.node_deleted}")
    # A kubeadm join still running (an interrupted add) goes first.
    report.killed += host.kill_all(host.processes_matching("kubeadm", str(paths.join_config)))
    if supervisor.stop(kubelet_name):
        report.stopped.append("kubelet")
    pod_namespaces: set[str] = set()
    container_ids: set[str] = set()
    if supervisor.running(containerd_name):
        container_ids, pod_namespaces = sandbox_netns(paths.containerd_socket)
        _kill_tasks(paths.containerd_socket, net.netns)
    if supervisor.stop(containerd_name):
        report.stopped.append("containerd")
    socket = str(paths.containerd_socket)
    leftovers = host.cgroup_pids(net.netns) | set(host.processes_matching("containerd-shim",
                                                                           socket))
    report.killed += host.kill_all(sorted(leftovers))
    report.unmounted = host.unmount_under([paths.root])
    if host.netns_exists(net.netns):
        pod_namespaces |= set(host.pod_netns(WORKER_BRIDGE, netns=net.netns))
    for ns in sorted(pod_namespaces):
        if host.netns_exists(ns):
            host.delete_netns(ns)
            report.removed.append(f"pod netns {ns}")
    try:
        report.removed += wnet.delete(net)
    finally:  # whatever happened to the link, the NAT rules go
        report.removed += wnet.remove_nat(net)
    deadline = time.monotonic() + 10
    while host.cgroup_pids(net.netns) and time.monotonic() < deadline:
        time.sleep(0.2)
    if host.remove_cgroups(net.netns):
        report.removed.append(f"cgroups /{net.netns}")
    if CNI_RESULTS.is_dir():  # libcni's cache: <network>-<sandbox>-<ifname>
        for f in CNI_RESULTS.glob(f"{net.cni_network}-*"):
            f.unlink(missing_ok=True)
        for cid in container_ids:  # containerd's own loopback network
            (CNI_RESULTS / f"cni-loopback-{cid}-lo").unlink(missing_ok=True)
    kept = ""
    if paths.root.exists():
        if host.mounts_under([paths.root]):
            kept = f"; KEPT {paths.root}: mounts remain under it"
        else:
            shutil.rmtree(paths.root)
    pods = [r for r in report.removed if r.startswith("pod netns")]
    others = [r for r in report.removed if not r.startswith("pod netns")]
    out(f"  worker {name}: stopped {', '.join(report.stopped) or 'nothing'}; "
        f"killed {len(report.killed)} leftover processes; unmounted {len(report.unmounted)}; "
        f"removed {len(pods)} pod netns, {', '.join(others) or 'nothing else'}{kept}")
    return report


def _ctr(socket: Path, *args: str) -> str:
    """``ctr`` against the worker's containerd; its output, empty if it failed or hung."""
    try:
        result = subprocess.run(["ctr", "--address", str(socket), "--namespace", "k8s.io",
                                 *args], capture_output=True, text=True, check=False,
                                timeout=20)
    except subprocess.TimeoutExpired:
        return ""
    return result.stdout if result.returncode == 0 else ""


def sandbox_netns(socket: Path) -> tuple[set[str], set[str]]:
    """The container ids and pod network namespace names a containerd (a worker's, or the
    admin node's) knows, stopped sandboxes included."""
    found = set()
    ids = set(_ctr(socket, "containers", "ls", "-q").split())
    for cid in ids:
        try:
            spec = json.loads(_ctr(socket, "containers", "info", cid)).get("Spec") or {}
        except ValueError:
            continue
        for ns in (spec.get("linux") or {}).get("namespaces") or []:
            path = ns.get("path") or ""
            if ns.get("type") == "network" and path.startswith(("/var/run/netns/",
                                                                  "/run/netns/")):
                found.add(Path(path).name)
    return ids, found


def _kill_tasks(socket: Path, cgroup: str) -> None:
    for task in _ctr(socket, "tasks", "ls", "-q").split():
        _ctr(socket, "tasks", "kill", "-s", "SIGKILL", task)
    deadline = time.monotonic() + 10
    while host.cgroup_pids(cgroup) and time.monotonic() < deadline:
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# renew-ca: the node's step of a CA rotation


@dataclass
class RenewResult:
    worker: Worker
    server: str  # what the bootstrap kubeconfig (and so the new kubelet.conf) names
    cas: list[str]  # the trust bundle's CAs, in order, described
    pinned: str  # the CA of the bundle the join command pins
    ca_changed: bool  # pki/ca.crt (the kubelet's clientCAFile) held something else before
    old_client: str | None  # the kubelet's client certificate before (None if it had none)
    new_client: str  # and after
    issuer: str  # the CA of the bundle that signed the new one
    steps: list[tuple[str, float]]


def renew_ca(layout: Layout, ref: str, join: JoinCommand, *, printer: Printer | None = None,
             timeouts: Timeouts | None = None, cache: Path | None = None) -> RenewResult:
    """The node's step of a tenant CA rotation, on worker ``ref`` (``w1``, ``1`` or its node
    name): trust the bundle the tenant publishes and get a kubelet client certificate from
    the tenant's current CA, without leaving the cluster or stopping a pod.

    ``join`` carries a fresh bootstrap token of the worker's tenant and the pin of its CA
    (``tenant_token``, ``haku join-command``). cluster-info is read from ``join.endpoint``
    and checked as kubeadm's discovery checks it (``worker_ca``: signed by the token, one CA
    pinned, read again over TLS verified against the bundle). Then the bundle goes to
    ``pki/ca.crt`` (the kubelet's clientCAFile), the token to ``bootstrap-kubelet.conf``;
    the kubelet is stopped, ``kubelet.conf`` and its client certificate store removed, and
    it is started again with the same arguments: it TLS-bootstraps as on join (the CSR is
    approved in the tenant and signed by its controller-manager) and writes a new
    kubelet.conf holding the bundle. Returns once the new certificate is there and the
    restarted kubelet reports its Node Ready; the bootstrap kubeconfig is removed then, as
    kubeadm does. Running it again does it again (a new token, a new certificate); after a
    failure, running it again with a fresh token finishes it. WorkerError (or
    ComponentFailed, with the kubelet's log) says what went wrong and what to do.
    """
    out = printer or (lambda line: print(line, flush=True))
    timeouts = timeouts or Timeouts()
    worker = renewable(layout, ref)
    net, paths = worker_net(layout, worker.index), worker_paths(layout, worker.index)
    supervisor = Supervisor(layout.pids, layout.logs)
    _, kubelet_name = process_names(worker.name)
    if join.endpoint != worker.endpoint:
        out(f"  note: the join command's endpoint {join.endpoint} is not the one {worker.name} "
            f"joined through ({worker.endpoint}); discovery uses {join.endpoint}")
    out(f"haku dev worker renew-ca {worker.name}: node {worker.node_name} of {worker.tenant}")
    steps = _Steps(out)

    # 1. discovery, checked as kubeadm does
    signed = wait_token_signed(join.endpoint, join.token, timeouts.token_signed)
    steps.done("bootstrap token signed in cluster-info" if signed else
               f"bootstrap token not signed in cluster-info within {timeouts.token_signed:.0f}s")
    info, pinned = _discover(join)
    cas = [worker_ca.describe(c) for c in info.cas]
    steps.done(f"cluster-info verified: {len(cas)} CA{'s' if len(cas) > 1 else ''} "
               f"({'pinned: first' if info.cas[0] == pinned else 'pinned: not the first'})")
    for i, (cert, text) in enumerate(zip(info.cas, cas, strict=True)):
        out(f"    CA {i + 1}: {text} {worker_ca.spki_hash(cert)}")

    # 2. the node's files: trust bundle and bootstrap kubeconfig
    before = paths.ca.read_bytes() if paths.ca.exists() else b""
    _write_atomic(paths.ca, info.bundle, 0o644)
    _write_atomic(paths.bootstrap_kubeconfig,
                  worker_ca.bootstrap_kubeconfig(info.server, info.bundle, join.token).encode(),
                  0o600)
    steps.done(f"wrote pki/ca.crt ({'changed' if before != info.bundle else 'unchanged'}), "
               "bootstrap-kubelet.conf")

    # 3. the kubelet without its client credentials, restarted with the same arguments
    spec = _kubelet_spec(worker, paths, net, supervisor, kubelet_name, cache)
    current = paths.kubelet_pki / worker_ca.CLIENT_CURRENT
    old = worker_ca.load_certificate(current.read_bytes()) if current.exists() else None
    supervisor.stop(kubelet_name)
    paths.kubelet_kubeconfig.unlink(missing_ok=True)
    removed = worker_ca.client_certificate_files(
        p.name for p in paths.kubelet_pki.iterdir()) if paths.kubelet_pki.is_dir() else []
    for name in removed:
        (paths.kubelet_pki / name).unlink(missing_ok=True)
    restarted = datetime.now(UTC)
    record, _ = supervisor.start(spec)
    worker.pids["kubelet"] = record.pid
    _save(paths, worker)
    steps.done(f"kubelet.conf, {len(removed)} client cert files removed; restarted")

    # 4. its TLS bootstrap: a new client certificate from one of the bundle's CAs
    new = _wait_client_certificate(current, old, supervisor, kubelet_name,
                                   timeouts.tls_bootstrap)
    issuer = next((c for c in info.cas if _issued_by(new, c)), None)
    if issuer is None:
        raise WorkerError(f"the kubelet's new client certificate ({worker_ca.describe(new)}, "
                          f"issuer {new.issuer.rfc4514_string()}) is signed by no CA of the "
                          f"tenant's bundle; {current} is kept to look at")
    steps.done("TLS bootstrap: new client certificate")
    out(f"    {worker_ca.describe(new)}, issued by {worker_ca.describe(issuer)}")

    # 5. the restarted kubelet reports its Node Ready, with its new credentials
    kubelet = next(Path(a) for a in spec.argv if Path(a).name == "kubelet")
    _wait_node_ready(worker, paths, kubelet.with_name("kubectl"), supervisor, kubelet_name,
                     timeouts.node_ready, since=restarted)
    written = worker_ca.kubeconfig_bundle(paths.kubelet_kubeconfig.read_text())
    if written != info.bundle:
        raise WorkerError(f"the kubelet wrote {paths.kubelet_kubeconfig} without the tenant's "
                          "bundle as its certificate-authority-data; run again")
    paths.bootstrap_kubeconfig.unlink(missing_ok=True)  # the token's file, as kubeadm does
    worker.state = "ready"
    _save(paths, worker)
    steps.done("node Ready (reported by the restarted kubelet)")
    return RenewResult(worker, info.server, cas, worker_ca.describe(pinned),
                       before != info.bundle, worker_ca.describe(old) if old else None,
                       worker_ca.describe(new), worker_ca.describe(issuer), steps.steps)


def renewable(layout: Layout, ref: str) -> Worker:
    """Worker ``ref`` if ``renew_ca`` can work on it (joined, its containerd running, its
    kubelet reading its client CA where the bundle goes); WorkerError saying why not."""
    index = resolve(layout, ref)
    worker = load(layout, index)
    if worker is None:
        raise WorkerError(f"worker {worker_name(index)} has no record (what a failed add left): "
                          f"haku dev worker remove {worker_name(index)}")
    paths = worker_paths(layout, index)
    supervisor = Supervisor(layout.pids, layout.logs)
    containerd_name, _ = process_names(worker.name)
    again = f"haku dev worker remove {worker.name}, then add a new worker"
    if worker.state not in ("joined", "ready") or not paths.downloaded_kubelet_config.exists():
        raise WorkerError(f"worker {worker.name} has not joined its tenant (state "
                          f"{worker.state}): there is nothing to renew; {again}")
    if not supervisor.running(containerd_name):
        raise WorkerError(f"worker {worker.name}'s containerd does not run, so neither do its "
                          f"pods: {again}")
    try:
        dropin = yaml.safe_load(paths.kubelet_dropin.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise WorkerError(f"worker {worker.name} has no readable kubelet drop-in "
                          f"({paths.kubelet_dropin}: {e}); {again}") from e
    client_ca = worker_ca.dropin_client_ca(dropin)
    if client_ca != str(paths.ca):  # the bundle goes there: it must be what the kubelet reads
        raise WorkerError(f"the kubelet's drop-in {paths.kubelet_dropin} names clientCAFile "
                          f"{client_ca}, not {paths.ca} where the tenant's bundle is written; "
                          f"{again}")
    return worker


def _discover(join: JoinCommand) -> tuple[worker_ca.ClusterInfo, x509.Certificate]:
    """cluster-info at ``join.endpoint``, checked as kubeadm's token discovery checks it."""
    got = _cluster_info(join.endpoint, 5.0)
    if isinstance(got, str):
        raise WorkerError(f"cannot read the tenant's cluster-info: {got}")
    status, data = got
    if status != 200:
        raise WorkerError(f"kube-public/cluster-info answers {status} "
                          f"({data.get('message', '')}): the tenant is not bootstrapped for "
                          "kubeadm (cluster-info and its anonymous read access)")
    info, pinned = worker_ca.verify(data, join.token, join.ca_cert_hash)
    again = _cluster_info(join.endpoint, 5.0, cadata=info.bundle)
    if isinstance(again, str):
        raise worker_ca.DiscoveryError(
            f"reading cluster-info again over TLS verified against its CA bundle failed "
            f"({again}): the endpoint's certificate does not chain to a CA the tenant "
            "publishes; refused")
    if (again[1].get("data") or {}).get("kubeconfig") != info.kubeconfig:
        raise worker_ca.DiscoveryError(
            "cluster-info changed between the two reads (the tenant's CA rotation moved on?); "
            "run again")
    return info, pinned


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.rename(path)


def _kubelet_spec(worker: Worker, paths: WorkerPaths, net: WorkerNet, supervisor: Supervisor,
                  kubelet_name: str, cache: Path | None) -> ProcessSpec:
    """The worker's kubelet as it runs now (its recorded command line), or, when it does not
    run, as ``add`` started it (from its version's cached binary)."""
    record = supervisor.running(kubelet_name)
    if record:
        return ProcessSpec(kubelet_name, record.argv, env=WORKER_ENV)
    versions = Versions.from_env().with_kubernetes(worker.kubernetes)
    component, root = toolchain.components(versions)["kubernetes"], cache or toolchain.cache_root()
    if not component.is_built(root):
        raise WorkerError(f"worker {worker.name}'s kubelet does not run and kubernetes "
                          f"{worker.kubernetes} is not built: haku dev images "
                          f"{worker.kubernetes}, then run again")
    flags = parse_kubeadm_flags(paths.kubeadm_flags.read_text())
    return ProcessSpec(kubelet_name, kubelet_argv(component.directory(root) / "kubelet", paths,
                                                  net, worker.node_name, flags), env=WORKER_ENV)


def _wait_client_certificate(current: Path, old: x509.Certificate | None,
                             supervisor: Supervisor, kubelet_name: str,
                             timeout: float) -> x509.Certificate:
    started = time.monotonic()
    while True:
        new = worker_ca.load_certificate(current.read_bytes()) if current.exists() else None
        if new is not None and (old is None or new.serial_number != old.serial_number):
            return new
        if not supervisor.running(kubelet_name):
            raise ComponentFailed(kubelet_name, "exited during its TLS bootstrap",
                                  supervisor.log_path(kubelet_name))
        if time.monotonic() - started > timeout:
            raise ComponentFailed(
                kubelet_name, f"got no new client certificate within {timeout:.0f}s (is the "
                "CSR approved in the tenant? kubectl get csr; run this again with a fresh "
                "token to retry)", supervisor.log_path(kubelet_name))
        time.sleep(0.2)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# status


def status(layout: Layout) -> list[dict[str, Any]]:
    """What ``haku dev status`` shows of each worker."""
    supervisor = Supervisor(layout.pids, layout.logs)
    result = []
    for w in list_workers(layout):
        processes = {}
        for role, pname in zip(("containerd", "kubelet"), process_names(w.name), strict=True):
            record = supervisor.running(pname)
            processes[role] = {"running": bool(record), "pid": record.pid if record else None}
        result.append({"name": w.name, "tenant": w.tenant, "node": w.node_name,
                       "address": w.address, "pod_cidr": w.pod_cidr, "state": w.state,
                       "endpoint": w.endpoint, "behind_nat": w.behind_nat,
                       "kubelet": w.kubernetes,
                       "processes": processes})
    return result


# ---------------------------------------------------------------------------------------------
# The tenant side: what the CLI asks the admin cluster for


@dataclass(frozen=True)
class TenantJoin:
    join: JoinCommand
    kubeconfig: dict[str, Any]  # the tenant's admin kubeconfig (to see or delete the node)
    nodes: frozenset[str]  # the Nodes it has now
    kubernetes_version: str = ""  # what a new worker runs (releases.tenant_version)


async def tenant_join(admin_kubeconfig: Path, tenant: str,
                      ttl: timedelta = timedelta(hours=1)) -> TenantJoin:
    """Check ``tenant`` can take a worker (exists, NodePort, Ready); create a bootstrap token
    in it valid for ``ttl``; return the join parameters and its admin kubeconfig."""
    import httpx2
    from lightkube import ApiError
    from lightkube.resources.core_v1 import Node

    from haku.api import conditions
    from haku.api.resources import TenantControlPlane
    from haku.tenant import access

    namespace, name = split_tenant(tenant)
    client = _admin_client(admin_kubeconfig)
    try:
        try:
            got = await client.get(TenantControlPlane, name, namespace=namespace)
        except ApiError as e:
            if e.status.code == 404:
                raise WorkerError(f"TenantControlPlane {namespace}/{name} does not exist") from e
            raise
        except (httpx2.HTTPError, OSError) as e:
            raise WorkerError(f"the admin cluster does not answer ({e}): is it up? "
                              "(haku dev up)") from e
        tcp: dict[str, Any] = got.to_dict()  # type: ignore[no-untyped-call]
        problem = join_path_problem(tcp)
        if problem:
            raise WorkerError(f"{namespace}/{name} {problem}")
        ready = conditions.find((tcp.get("status") or {}).get("conditions"), "Ready")
        if not ready or ready.get("status") != "True":
            why = f"{ready['reason']}: {ready['message']}" if ready else "no status yet"
            raise WorkerError(f"{namespace}/{name} is not Ready ({why})")
        tenant_access = await access.from_object(client, tcp)
    finally:
        await client.close()
    tenant_client = tenant_access.client()
    try:
        nodes = frozenset([str(n.metadata.name) async for n in tenant_client.list(Node)
                           if n.metadata])
    finally:
        await tenant_client.close()
    join = await access.create_join_command(tenant_access, ttl)
    return TenantJoin(join, tenant_access.kubeconfig, nodes, releases.tenant_version(tcp))


def join_path_problem(tcp: dict[str, Any]) -> str | None:
    """Why a worker cannot reach TenantControlPlane ``tcp`` (a dict), or None: it joins
    through a NodePort on the admin node, or through the host name of an Ingress or Gateway
    in front (``haku dev exposure``: Traefik on the admin node IP; the name must resolve
    there, ``haku dev exposure hosts``)."""
    cp = (tcp.get("spec") or {}).get("controlPlane") or {}
    service_type = (cp.get("service") or {}).get("serviceType", "ClusterIP")
    if service_type == "NodePort" or (cp.get("ingress") or {}).get("hostname") \
            or (cp.get("gateway") or {}).get("hostname"):
        return None
    return (f"is exposed by a {service_type} Service; a worker joins through a NodePort on "
            "the admin node, or through the host name of spec.controlPlane.ingress or "
            ".gateway (haku dev exposure up): create the tenant with "
            "spec.controlPlane.service.serviceType: NodePort, or give it one of those")


def _admin_client(admin_kubeconfig: Path) -> AsyncClient:
    from haku.controller.operator import client_for

    if not admin_kubeconfig.is_file():
        raise WorkerError(f"no admin kubeconfig at {admin_kubeconfig}: is the admin cluster up? "
                          "(haku dev up)")
    return client_for(admin_kubeconfig)


async def tenant_kubeconfig(admin_kubeconfig: Path, tenant: str) -> dict[str, Any]:
    """The tenant's admin kubeconfig, for deleting a worker's Node (LookupError if none)."""
    from haku.tenant import access

    namespace, name = split_tenant(tenant)
    client = _admin_client(admin_kubeconfig)
    try:
        return (await access.load(client, namespace, name)).kubeconfig
    finally:
        await client.close()


async def tenant_token(admin_kubeconfig: Path, tenant: str,
                       ttl: timedelta = timedelta(minutes=15)) -> JoinCommand:
    """A bootstrap token in ``tenant`` valid for ``ttl`` and the pin of its current CA (what
    ``renew_ca`` needs; ``haku join-command``'s code), whatever the tenant's conditions."""
    import httpx2
    from lightkube import ApiError

    from haku.tenant import access

    namespace, name = split_tenant(tenant)
    client = _admin_client(admin_kubeconfig)
    try:
        tenant_access = await access.load(client, namespace, name)
    except LookupError as e:
        raise WorkerError(str(e)) from e
    except (httpx2.HTTPError, OSError) as e:
        raise WorkerError(f"the admin cluster does not answer ({e}): is it up? "
                          "(haku dev up)") from e
    finally:
        await client.close()
    try:
        return await access.create_join_command(tenant_access, ttl)
    except (httpx2.HTTPError, OSError, ApiError) as e:
        raise WorkerError(f"{tenant} did not take a bootstrap token ({e}): is it Ready? "
                          f"(kubectl describe tcp -n {namespace} {name})") from e
