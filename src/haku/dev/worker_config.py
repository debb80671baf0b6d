"""The pure parts of a worker (``haku.dev.worker``): names, paths and configuration files.

Nothing here touches the host; ``tests/unit/test_worker.py`` covers it.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from haku.dev import config
from haku.dev.layout import Layout
from haku.dev.worker_net import WORKER_BRIDGE, WorkerNet
from haku.render import jsonpatch
from haku.tenant.tokens import JoinCommand

# kubeadm preflight checks that fail on this machine, each for a reason the worker handles.
# Checks that only warn here (Hostname: the node name does not resolve; Service-Kubelet: there
# is no systemd; ContainerRuntimeVersion: containerd 1.6 lacks the RuntimeConfig CRI call) need
# nothing. Everything else still runs and still fails the join.
IGNORED_PREFLIGHT_ERRORS: dict[str, str] = {
    "SystemVerification": (
        "cgroup v1 (hybrid cgroups, KEP-5573): kubeadm refuses it unless this check is skipped; "
        "the tenant serves its kubelets failCgroupV1: false as the message asks "
        "(haku.dev.config.VM_KUBELET), as the admin kubelet has. The check's other findings "
        "(kernel config, cgroup controllers) pass here and are still printed"),
}
KUBEADM_SUCCESS = "This node has joined the cluster"
KUBELET_FILES_WRITTEN = "[kubelet-start] Starting the kubelet"
# Keys of the KubeletConfiguration that carry this VM's workarounds (config.VM_KUBELET): the
# tenant serves them (config.tenant_kubelet_settings()); the worker never sets them itself.
VM_KUBELET_KEYS = tuple(config.VM_KUBELET)
KUBELET_SETTINGS_SOURCE = ("this machine's needs are haku.dev.config.VM_KUBELET; "
                           "haku.dev.config.tenant_kubelet_settings() makes these fields of "
                           "them, and every sample tenant of haku.dev.samples carries them")
# Flags the worker sets itself; the same ones from kubeadm-flags.env are dropped.
OWN_KUBELET_FLAGS = ("--config", "--config-dir", "--kubeconfig", "--bootstrap-kubeconfig",
                     "--root-dir", "--cert-dir", "--node-ip", "--hostname-override",
                     "--container-runtime-endpoint", "--pod-infra-container-image", "--v")
KUBELET_DROPIN_NAME = "50-haku-worker.conf"
# The only paths the join-mount namespace covers.
KUBEADM_ETC, KUBEADM_VAR = Path("/etc/kubernetes"), Path("/var/lib/kubelet")


class WorkerError(RuntimeError):
    """A worker problem the user must act on; the message says what happened and what to do."""


@dataclass(frozen=True)
class Timeouts:
    containerd: float = 30.0
    images: float = 120.0
    # The tenant's bootstrapsigner, before kubeadm starts. Its controller-manager may have
    # just rolled (an upgrade, a CA rotation): the new one leads only once the old one's Lease
    # expires, up to 137 s + a retry period later (render/controlplane.py, LEADER_ELECTION).
    token_signed: float = 200.0
    kubelet_files: float = 90.0  # kubeadm start -> kubelet files (discovery and preflight)
    join: float = 240.0  # the whole kubeadm join
    node_ready: float = 120.0
    tls_bootstrap: float = 90.0  # renew-ca: kubelet restart -> a new client certificate


# ---------------------------------------------------------------------------------------------
# Names and paths (pure)


def worker_name(index: int) -> str:
    return f"w{index}"


def node_name(tenant_name: str, index: int) -> str:
    return f"{tenant_name}-w{index}"


def process_names(name: str) -> tuple[str, str]:
    """Supervisor names of a worker's containerd and kubelet."""
    return f"worker-{name}-containerd", f"worker-{name}-kubelet"


_INDEX_RE = re.compile(r"^(?:haku-)?w?(\d+)$")


def parse_index(ref: str) -> int | None:
    """``w3``, ``3`` or ``haku-w3`` -> 3; None for anything else (a node name, maybe)."""
    m = _INDEX_RE.match(ref.strip())
    return int(m.group(1)) if m else None


def split_tenant(ref: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` (namespace ``default`` when omitted) -> (namespace, name)."""
    namespace, _, name = ref.strip().rpartition("/")
    if not name or "/" in namespace:
        raise WorkerError(f"{ref!r} is not NAMESPACE/NAME")
    return namespace or "default", name


@dataclass(frozen=True)
class WorkerPaths:
    root: Path

    @property
    def etc_kubernetes(self) -> Path:  # bind-mounted on /etc/kubernetes for kubeadm
        return self.root / "etc-kubernetes"

    @property
    def var_lib_kubelet(self) -> Path:  # bind-mounted on /var/lib/kubelet for kubeadm
        return self.root / "var-lib-kubelet"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_pki(self) -> Path:
        return self.root / "kubelet-pki"

    @property
    def containerd_dir(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_config(self) -> Path:
        return self.containerd_dir / "config.toml"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def containerd_hosts_dir(self) -> Path:  # config_path: hosts.toml of mirrored registries
        return self.containerd_dir / "certs.d"

    @property
    def cni_dir(self) -> Path:
        return self.root / "cni"

    @property
    def cni_conflist(self) -> Path:
        return self.cni_dir / "net.d" / "10-haku-worker.conflist"

    @property
    def runc_root(self) -> Path:
        return self.root / "runc"

    @property
    def join_config(self) -> Path:
        return self.root / "join.yaml"

    @property
    def kubelet_config_dir(self) -> Path:  # the kubelet's --config-dir (drop-ins)
        return self.root / "kubelet.conf.d"

    @property
    def kubelet_dropin(self) -> Path:  # where the worker puts the kubelet (and nothing else)
        return self.kubelet_config_dir / KUBELET_DROPIN_NAME

    @property
    def resolv_conf(self) -> Path:
        return self.root / "resolv.conf"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def record(self) -> Path:
        return self.root / "worker.json"

    # written by kubeadm (through the bind mounts) and by the kubelet
    @property
    def downloaded_kubelet_config(self) -> Path:  # the kubelet's --config, as kubeadm wrote it
        return self.var_lib_kubelet / "config.yaml"

    @property
    def kubeadm_flags(self) -> Path:
        return self.var_lib_kubelet / "kubeadm-flags.env"

    @property
    def bootstrap_kubeconfig(self) -> Path:
        return self.etc_kubernetes / "bootstrap-kubelet.conf"

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.etc_kubernetes / "kubelet.conf"

    @property
    def ca(self) -> Path:
        return self.etc_kubernetes / "pki" / "ca.crt"


def workers_dir(layout: Layout) -> Path:
    return layout.state_dir / "workers"


def worker_paths(layout: Layout, index: int) -> WorkerPaths:
    return WorkerPaths(workers_dir(layout) / worker_name(index))


def worker_net(layout: Layout, index: int) -> WorkerNet:
    return WorkerNet(index, layout.node_ip)


def join_log(layout: Layout, name: str) -> Path:
    """kubeadm's output; in the cluster's log directory, so it outlives a failed worker."""
    return layout.logs / f"worker-{name}-kubeadm-join.log"


# ---------------------------------------------------------------------------------------------
# Configuration files (pure)


def _worker_layout(paths: WorkerPaths, net: WorkerNet) -> Layout:
    """The worker's directories in the shape config.py renders containerd and CNI for."""
    return Layout(state_dir=paths.root, cni_network=net.cni_network, cni_bridge=WORKER_BRIDGE,
                  pod_cidr=net.pod_cidr)


def containerd_toml(paths: WorkerPaths, net: WorkerNet, sandbox_image: str) -> str:
    """The admin containerd's configuration (and its VM workarounds) on the worker's own
    root, state, sockets and CNI directories, with runc's state apart as well."""
    text = config.containerd_toml(_worker_layout(paths, net), sandbox_image)
    anchor = "  SystemdCgroup = false\n"
    if anchor not in text:
        raise WorkerError("config.containerd_toml changed shape: no runc options table")
    return text.replace(anchor, anchor + f'  Root = "{paths.runc_root}"\n', 1)


def cni_conflist(paths: WorkerPaths, net: WorkerNet) -> str:
    conf = json.loads(config.cni_conflist(_worker_layout(paths, net)))
    conf["plugins"].append({"type": "portmap", "capabilities": {"portMappings": True}})
    return json.dumps(conf, indent=2) + "\n"


def resolv_conf(gateway: str) -> str:
    """The worker's only resolver is the admin node IP, where nothing serves DNS: lookups are
    refused at once, never sent off the machine, and CoreDNS does not forward to itself."""
    return f"nameserver {gateway}\n"


def join_configuration(join: JoinCommand, node: str, cri_socket: Path,
                       timeouts: Timeouts = Timeouts()) -> str:
    """kubeadm's JoinConfiguration (v1beta4) for a worker, with the ignored checks explained."""
    def q(value: str) -> str:
        return json.dumps(value)  # a JSON string is a YAML scalar

    def duration(seconds: float) -> str:
        return f"{int(seconds)}s"

    lines = [
        "# Written by haku dev worker add. It holds a bootstrap token: keep it private.",
        "apiVersion: kubeadm.k8s.io/v1beta4",
        "kind: JoinConfiguration",
        "discovery:",
        "  bootstrapToken:",
        f"    apiServerEndpoint: {q(join.endpoint)}",
        f"    token: {q(join.token)}",
        f"    caCertHashes: [{q(join.ca_cert_hash)}]",
        "nodeRegistration:",
        f"  name: {q(node)}",
        f"  criSocket: {q('unix://' + str(cri_socket))}",
        "  ignorePreflightErrors:",
    ]
    for check, why in IGNORED_PREFLIGHT_ERRORS.items():
        lines.append(f"  # {check}: {why}")
        lines.append(f"  - {check}")
    lines += [
        "timeouts:",
        f"  discovery: {duration(min(60.0, timeouts.kubelet_files))}",
        "  kubernetesAPICall: 60s",
        f"  kubeletHealthCheck: {duration(min(60.0, timeouts.join))}",
        f"  tlsBootstrap: {duration(min(120.0, timeouts.join))}",
    ]
    return "\n".join(lines) + "\n"


def _rewrite_paths(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _rewrite_paths(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite_paths(v, mapping) for v in value]
    if isinstance(value, str):
        for old, new in mapping.items():
            if value == old or value.startswith(old + "/"):
                return new + value[len(old):]
    return value


def served_kubelet_problems(served: Any) -> tuple[list[str], list[str]]:
    """What the KubeletConfiguration a tenant served (as kubeadm wrote it) lacks of
    config.VM_KUBELET: (hard: the kubelet cannot start here without it, soft: it starts but
    misbehaves here, e.g. evicts pods or garbage-collects images that cannot be pulled
    again), each as "key is X (this machine needs Y)"."""
    if not isinstance(served, dict) or served.get("kind") != "KubeletConfiguration":
        raise WorkerError("kubeadm wrote no KubeletConfiguration to config.yaml")
    hard: list[str] = []
    soft: list[str] = []
    for key, wanted in config.VM_KUBELET.items():
        if key in served and jsonpatch.equal(served[key], wanted):
            continue
        got = json.dumps(served[key]) if key in served else "unset"
        (hard if key in config.VM_KUBELET_HARD else soft).append(
            f"{key} is {got} (this machine needs {json.dumps(wanted)})")
    return hard, soft


def served_kubelet_error(tenant: str, hard: list[str]) -> WorkerError:
    """Why a dev worker will not run what ``tenant`` serves, and the fields that fix it."""
    settings = json.dumps(config.tenant_kubelet_settings(), separators=(",", ":"))
    return WorkerError(
        f"tenant {tenant} serves a KubeletConfiguration (kube-system/kubelet-config) that a "
        f"kubelet cannot run with on this machine: {'; '.join(hard)}. A dev worker runs what "
        "its tenant serves, unmodified: give the TenantControlPlane "
        f"spec.kubernetes.kubelet: {settings} ({KUBELET_SETTINGS_SOURCE})")


def _merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that makes ``old`` into ``new``, where ``new`` only
    adds members or changes them (what a drop-in of the kubelet can say)."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            inner = _merge_patch(before, value)
            if inner:
                patch[key] = inner
        elif key not in old or not jsonpatch.equal(before, value):
            patch[key] = value
    return patch


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def kubelet_dropin(downloaded: dict[str, Any], paths: WorkerPaths,
                   net: WorkerNet) -> dict[str, Any]:
    """The worker's drop-in KubeletConfiguration (the kubelet's ``--config-dir``, merged
    over ``--config``, which stays what kubeadm downloaded from the tenant): where this
    worker puts things, and nothing else. Paths the tenant set under ``/etc/kubernetes`` and
    ``/var/lib/kubelet`` are moved to the worker's directories; its own cgroup root, runtime,
    resolver, pod logs, volume plugins, static pods, healthz address and client CA. Never a
    key of config.VM_KUBELET: those are the tenant's to serve."""
    if downloaded.get("kind") != "KubeletConfiguration":
        raise WorkerError("kubeadm wrote no KubeletConfiguration to config.yaml")
    moved = _rewrite_paths(downloaded, {
        str(KUBEADM_ETC): str(paths.etc_kubernetes),
        str(KUBEADM_VAR): str(paths.kubelet_root),
    })
    placement = _merge_patch(downloaded, moved)
    _merge(placement, {
        "cgroupRoot": f"/{net.netns}",  # its pods never mix with the admin kubelet's
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "resolvConf": str(paths.resolv_conf),
        "podLogsDir": str(paths.pod_logs),
        "volumePluginDir": str(paths.kubelet_root / "volume-plugins"),
        "staticPodPath": str(paths.etc_kubernetes / "manifests"),
        "healthzBindAddress": "127.0.0.1",  # the worker's loopback: kubeadm checks it there
        "authentication": {"x509": {"clientCAFile": str(paths.ca)}},
    })
    vm = sorted(set(placement) & set(VM_KUBELET_KEYS))
    if vm:
        raise WorkerError(f"the worker's kubelet drop-in would set {', '.join(vm)}: those "
                          "are the tenant's to serve")
    return {"apiVersion": downloaded.get("apiVersion", "kubelet.config.k8s.io/v1beta1"),
            "kind": "KubeletConfiguration", **placement}


def parse_kubeadm_flags(text: str) -> list[str]:
    """The flags in kubeadm-flags.env (``KUBELET_KUBEADM_ARGS="--a=b --c=d"``)."""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "KUBELET_KUBEADM_ARGS":
            words = shlex.split(value)
            return shlex.split(words[0]) if len(words) == 1 else words
    return []


def kubelet_argv(binary: Path, paths: WorkerPaths, net: WorkerNet, node: str,
                 kubeadm_flags: list[str]) -> list[str]:
    own = [
        f"--config={paths.downloaded_kubelet_config}",  # as kubeadm wrote it
        f"--config-dir={paths.kubelet_config_dir}",  # the worker's placement over it
        f"--kubeconfig={paths.kubelet_kubeconfig}",
        f"--bootstrap-kubeconfig={paths.bootstrap_kubeconfig}",
        f"--root-dir={paths.kubelet_root}",
        f"--cert-dir={paths.kubelet_pki}",
        f"--node-ip={net.address}",
        f"--hostname-override={node}",
        "--v=1",
    ]
    extra = [f for f in kubeadm_flags if f.split("=", 1)[0] not in OWN_KUBELET_FLAGS]
    return [*net.nsenter(), str(binary), *own, *extra]


def join_script(paths: WorkerPaths, kubeadm: Path) -> str:
    """What runs in the worker's network namespace and a private mount namespace."""
    q = shlex.quote
    return (f"mount --bind {q(str(paths.etc_kubernetes))} {KUBEADM_ETC} && "
            f"mount --bind {q(str(paths.var_lib_kubelet))} {KUBEADM_VAR} && "
            f"mount --bind {q(str(paths.resolv_conf))} /etc/resolv.conf && "
            f"exec {q(str(kubeadm))} join --config {q(str(paths.join_config))} --v=1")


def join_argv(net: WorkerNet, paths: WorkerPaths, kubeadm: Path) -> list[str]:
    return [*net.nsenter(), "unshare", "--mount", "--propagation", "private",
            "sh", "-c", join_script(paths, kubeadm)]


def node_ready(node: dict[str, Any], since: datetime | None = None) -> tuple[bool, str]:
    """(Ready, why) from a Node object. With ``since`` (timezone-aware), Ready counts only
    if the kubelet reported it at or after that second (its condition's lastHeartbeatTime):
    a Node stays Ready for a while after its kubelet stops."""
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            ready, why = c.get("status") == "True", f"{c.get('reason')}: {c.get('message')}"
            if ready and since is not None:
                try:
                    beat = datetime.fromisoformat(str(c.get("lastHeartbeatTime")))
                except ValueError:
                    return False, "Ready, without a lastHeartbeatTime"
                if beat < since.replace(microsecond=0):
                    return False, (f"Ready as last reported at {c.get('lastHeartbeatTime')}, "
                                   "before the kubelet restarted")
            return ready, why
    return False, "no Ready condition yet"
