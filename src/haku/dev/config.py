"""Configuration files and command lines of the local cluster's components (pure).

The choices here carry this VM's pitfalls (see docs/dev-cluster.md): hybrid cgroups with no
systemd (``cgroupfs`` driver, ``failCgroupV1: false``), no CAP_SYS_RESOURCE
(``restrict_oom_score_adj``), no dummy links (the node IP sits on a bridge of its own), and
logs/exec reaching the kubelet by InternalIP. The kubelet's share of them (``VM_KUBELET``) is
also what a tenant must serve for a dev worker to run its configuration:
``tenant_kubelet_settings()`` says it as TenantControlPlane fields (``cgroupfs`` and
RFC 6902 ``configurationJSONPatches``).
"""

from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path
from typing import Any

import yaml

from haku.dev.layout import Layout
from haku.render import jsonpatch


def containerd_toml(layout: Layout, sandbox_image: str) -> str:
    d = layout.containerd_dir
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"
oom_score = 0

[grpc]
  address = "{layout.containerd_socket}"

[ttrpc]
  address = "{d / 'containerd.sock.ttrpc'}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"

[{cri}]
  sandbox_image = "{sandbox_image}"
  # CAP_SYS_RESOURCE is missing here: runc cannot lower oom_score_adj below its own value.
  restrict_oom_score_adj = true
  enable_selinux = false
  max_container_log_line_size = 16384
  # Pods (not host-network ones) may bind ports below 1024 without a capability, as with
  # containerd 2.0's default: upstream's CoreDNS image runs as 65532 and binds :53 through a
  # file capability, which Haku's image writer cannot set; this lets it run as 65532 too.
  enable_unprivileged_ports = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{layout.cni_dir / 'net.d'}"

[{cri}.registry]
  # One <registry host>/hosts.toml a registry pulled through the dev cluster's local registry
  # (haku.dev.registry); read at each pull. Imported images are found locally first as before.
  config_path = "{layout.containerd_hosts_dir}"
"""


def cni_conflist(layout: Layout) -> str:
    conf = {
        "cniVersion": "0.4.0",
        "name": layout.cni_network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": layout.cni_bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": layout.pod_cidr}]],
                    # kube-apiserver in a pod needs a default route to pick its address.
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.cni_dir / "ipam"),
                },
            },
            {"type": "loopback"},
        ],
    }
    return json.dumps(conf, indent=2) + "\n"


def etcd_argv(binary: Path, layout: Layout) -> list[str]:
    p = layout.ports
    return [
        str(binary),
        "--name=haku-admin",
        f"--data-dir={layout.state_dir / 'etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{p.etcd_client}",
        f"--advertise-client-urls=http://127.0.0.1:{p.etcd_client}",
        f"--listen-peer-urls=http://127.0.0.1:{p.etcd_peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{p.etcd_peer}",
        f"--initial-cluster=haku-admin=http://127.0.0.1:{p.etcd_peer}",
        "--listen-metrics-urls=",
        "--log-level=warn",
    ]


def apiserver_argv(binary: Path, layout: Layout) -> list[str]:
    pki = layout.pki
    argv = [
        str(binary),
        f"--etcd-servers=http://127.0.0.1:{layout.ports.etcd_client}",
        f"--secure-port={layout.ports.apiserver}",
        f"--bind-address={layout.apiserver_bind_address}",
        f"--advertise-address={layout.apiserver_advertise_address}",
        f"--service-cluster-ip-range={layout.service_cidr}",
        "--allow-privileged=true",
        "--authorization-mode=Node,RBAC",
        "--enable-bootstrap-token-auth=true",  # as kubeadm; the token tests use it
        "--enable-admission-plugins=NodeRestriction",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        "--kubelet-preferred-address-types=InternalIP",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--cert-dir={layout.state_dir / 'apiserver-certs'}",
        "--profiling=false",
    ]
    if not layout.node:
        # Loopback may not be advertised through the kubernetes Service (1.37 refuses it),
        # and no controller-manager runs to back the ServiceAccount admission plugin.
        argv += ["--endpoint-reconciler-type=none", "--disable-admission-plugins=ServiceAccount"]
    return argv


def _client_of_apiserver(kubeconfig: Path, secure_port: int) -> list[str]:
    """Flags shared by the controller-manager and the scheduler: one identity, loopback only."""
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={secure_port}",
    ]


def controller_manager_argv(binary: Path, layout: Layout) -> list[str]:
    pki = layout.pki
    return [
        str(binary),
        *_client_of_apiserver(layout.kubeconfigs / "controller-manager.conf",
                              layout.ports.controller_manager),
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--service-cluster-ip-range={layout.service_cidr}",
        # The node's pod range in its spec.podCIDRs, as kubeadm's --pod-network-cidr gives it:
        # where the operator learns the admin cluster's pod range.
        "--allocate-node-cidrs=true",
        f"--cluster-cidr={layout.pod_cidr}",
        f"--node-cidr-mask-size={ipaddress.ip_network(layout.pod_cidr).prefixlen}",
        f"--cert-dir={layout.state_dir / 'controller-manager-certs'}",
        f"--flex-volume-plugin-dir={layout.kubelet_dir / 'volume-plugins'}",
        "--profiling=false",
    ]


def scheduler_argv(binary: Path, layout: Layout) -> list[str]:
    return [
        str(binary),
        *_client_of_apiserver(layout.kubeconfigs / "scheduler.conf", layout.ports.scheduler),
        "--leader-elect=false",
        f"--cert-dir={layout.state_dir / 'scheduler-certs'}",
        "--profiling=false",
    ]


# What a kubelet needs on these machines, whichever cluster it serves: the admin kubelet's
# configuration carries it, and every tenant a dev worker joins must serve it (the worker runs
# the KubeletConfiguration its tenant serves as it is): tenants get it from
# tenant_kubelet_settings(), which the sample tenants (haku.dev.samples) use.
VM_KUBELET: dict[str, Any] = {
    # Hybrid cgroups (v1 controllers) and no systemd.
    "cgroupDriver": "cgroupfs",
    "failCgroupV1": False,
    "failSwapOn": False,
    # A small disk: evict only when it is really full.
    "evictionHard": {
        "memory.available": "100Mi",
        "nodefs.available": "1%",
        "imagefs.available": "1%",
    },
    # Images cannot be pulled again here: never garbage-collect them.
    "imageGCHighThresholdPercent": 100,
    "imageGCLowThresholdPercent": 99,
    "serializeImagePulls": False,
}
# Without these the kubelet does not start here at all (the rest of VM_KUBELET keeps it
# working): a dev worker refuses a served configuration that does not have them.
VM_KUBELET_HARD = ("cgroupDriver", "failCgroupV1", "failSwapOn")
# spec.kubernetes.kubelet.cgroupfs is the cgroupDriver (Kamaji's field).
KUBELET_CGROUPFS = VM_KUBELET["cgroupDriver"]


def kubelet_patches() -> list[dict[str, Any]]:
    """VM_KUBELET but the cgroup driver as RFC 6902 operations for a TenantControlPlane's
    ``spec.kubernetes.kubelet.configurationJSONPatches`` (``add`` sets a member whether or
    not it is there)."""
    return [{"op": "add", "path": jsonpatch.pointer(key), "value": copy.deepcopy(value)}
            for key, value in VM_KUBELET.items() if key != "cgroupDriver"]


def tenant_kubelet_settings() -> dict[str, Any]:
    """``spec.kubernetes.kubelet`` for a tenant whose nodes are dev workers: the cgroup
    driver by ``cgroupfs``, the rest of VM_KUBELET by ``configurationJSONPatches``."""
    return {"cgroupfs": KUBELET_CGROUPFS, "configurationJSONPatches": kubelet_patches()}


def kubelet_config(layout: Layout) -> dict[str, Any]:
    p = layout.ports
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        **copy.deepcopy(VM_KUBELET),
        "cgroupRoot": f"/{layout.pods_cgroup}",  # not the host's /kubepods: down removes it
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "address": layout.node_ip,
        "port": p.kubelet,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": p.kubelet_healthz,
        "readOnlyPort": 0,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(layout.pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "resolvConf": "",
        "podLogsDir": str(layout.state_dir / "pod-logs"),
        "volumePluginDir": str(layout.kubelet_dir / "volume-plugins"),
        "staticPodPath": "",
        "clusterDomain": "cluster.local",
        "maxPods": 250,
    }


def kubelet_argv(binary: Path, layout: Layout) -> list[str]:
    return [
        str(binary),
        f"--config={layout.state_dir / 'kubelet.yaml'}",
        f"--kubeconfig={layout.kubeconfigs / 'kubelet.conf'}",
        f"--root-dir={layout.kubelet_dir}",
        f"--cert-dir={layout.kubelet_dir / 'pki'}",
        f"--hostname-override={layout.node_name}",
        f"--node-ip={layout.node_ip}",
        "--v=1",
    ]


def kube_proxy_argv(binary: Path, layout: Layout) -> list[str]:
    p = layout.ports
    return [
        str(binary),
        f"--kubeconfig={layout.kubeconfigs / 'kube-proxy.conf'}",
        f"--hostname-override={layout.node_name}",
        f"--cluster-cidr={layout.pod_cidr}",
        "--proxy-mode=iptables",
        "--bind-address=127.0.0.1",
        f"--metrics-bind-address=127.0.0.1:{p.kube_proxy_metrics}",
        f"--healthz-bind-address=127.0.0.1:{p.kube_proxy_healthz}",
        "--conntrack-max-per-core=0",
    ]


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)
