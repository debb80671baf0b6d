"""Where everything of one local cluster lives: directories, ports, links and address ranges."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = Path("/var/lib/haku/dev")
# 2: the local registry (its port, ports.registry) and containerd's hosts directory.
STATE_FORMAT = 2


def default_state_dir() -> Path:
    return Path(os.environ.get("HAKU_DEV_DIR", str(DEFAULT_STATE_DIR)))


@dataclass(frozen=True)
class Ports:
    apiserver: int = 6443
    etcd_client: int = 2379
    etcd_peer: int = 2380
    controller_manager: int = 10257
    scheduler: int = 10259
    kubelet: int = 10250
    kubelet_healthz: int = 10248
    kube_proxy_metrics: int = 10249
    kube_proxy_healthz: int = 10256
    network_policy_metrics: int = 9080  # kube-network-policies (its default), on loopback
    datastore_etcd_client: int = 12379
    datastore_etcd_peer: int = 12380
    postgres: int = 15432
    mariadb: int = 13306
    # The local OCI registry (CNCF Distribution), on the node IP only: the admin containerd
    # and the dev workers pull through it (haku.dev.registry).
    registry: int = 5000


@dataclass(frozen=True)
class Layout:
    """One cluster's resources: which parts run, and where.

    The default is the full admin cluster. ``api_only`` runs etcd + kube-apiserver;
    ``datastores_only`` runs the tenant datastores. Both use ports of their own, so they can
    run beside a full cluster.
    """

    state_dir: Path
    control_plane: bool = True
    node: bool = True
    datastores: bool = True
    ports: Ports = field(default_factory=Ports)
    node_name: str = "haku-admin"
    node_bridge: str = "haku-node"
    node_ip: str = "10.245.0.1"
    cni_bridge: str = "haku-cni0"
    cni_network: str = "haku"
    # Apart from the tenants' defaults (Kamaji's serviceCidr 10.96.0.0/16 and podCidr
    # 10.244.0.0/16), so a tenant's Service or pod address never lands in the admin cluster.
    pod_cidr: str = "10.240.0.0/24"
    service_cidr: str = "10.32.0.0/16"

    @classmethod
    def api_only(cls, state_dir: Path) -> Layout:
        """etcd + kube-apiserver on their own ports, so it can run beside a full cluster."""
        return cls(
            state_dir=state_dir,
            node=False,
            datastores=False,
            ports=replace(Ports(), apiserver=16443, etcd_client=22379, etcd_peer=22380),
        )

    @classmethod
    def datastores_only(cls, state_dir: Path) -> Layout:
        """The tenant datastores alone, on loopback and ports of their own.

        Every port stays below Linux's ephemeral range (32768-60999): a listener there can
        find its port taken by some unrelated outgoing connection and fail to bind.
        """
        return cls(
            state_dir=state_dir,
            control_plane=False,
            node=False,
            ports=replace(Ports(), datastore_etcd_client=24379, datastore_etcd_peer=24380,
                          postgres=25432, mariadb=23306),
        )

    # ---- paths
    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pids(self) -> Path:
        return self.state_dir / "pids"

    @property
    def kubeconfigs(self) -> Path:
        return self.state_dir / "kubeconfigs"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.state_dir / "admin.kubeconfig"

    @property
    def bin(self) -> Path:
        return self.state_dir / "bin"

    @property
    def containerd_dir(self) -> Path:
        return self.state_dir / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def kubelet_dir(self) -> Path:
        return self.state_dir / "kubelet"

    @property
    def cni_dir(self) -> Path:
        return self.state_dir / "cni"

    @property
    def network_policy_dir(self) -> Path:
        """kube-network-policies' files: what it sees as ``/run`` (its API credentials)."""
        return self.state_dir / "kube-network-policies"

    @property
    def containerd_hosts_dir(self) -> Path:
        """containerd's ``config_path``: one ``<registry host>/hosts.toml`` a mirrored
        registry (haku.dev.registry)."""
        return self.containerd_dir / "certs.d"

    @property
    def registry_dir(self) -> Path:
        """The local registry's configuration and storage."""
        return self.state_dir / "registry"

    @property
    def datastores_dir(self) -> Path:
        return self.state_dir / "datastores"

    @property
    def pods_cgroup(self) -> str:
        """The admin kubelet's cgroup root: its pods live under ``/<this>/kubepods`` in every
        hierarchy, so ``down`` kills and removes exactly those and never another kubelet's."""
        return f"haku-admin-{self.cni_bridge.removeprefix('haku-')}"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    # ---- addresses
    @property
    def apiserver_advertise_address(self) -> str:
        """Full clusters advertise the node IP so pods reach kubernetes.default."""
        return self.node_ip if self.node else "127.0.0.1"

    @property
    def apiserver_bind_address(self) -> str:
        return "0.0.0.0" if self.node else "127.0.0.1"  # noqa: S104  (loopback + node bridge)

    @property
    def datastore_address(self) -> str:
        """Where pods reach the datastores: the node IP; loopback when there is no node."""
        return self.node_ip if self.node else "127.0.0.1"

    @property
    def datastore_listen_addresses(self) -> list[str]:
        return ["127.0.0.1", self.node_ip] if self.node else ["127.0.0.1"]

    @property
    def registry_endpoint(self) -> str:
        """``host:port`` of the local registry: the node IP, which the admin containerd, the
        dev workers (their gateway) and host-side clients all reach while the cluster is up."""
        return f"{self.node_ip}:{self.ports.registry}"

    @property
    def apiserver_url(self) -> str:
        """What every host-side client uses: loopback, never the node IP.

        The node IP exists only while the cluster is up; afterwards a client aimed at it would
        be routed off the machine.
        """
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def kubernetes_service_ip(self) -> str:
        return str(next(ipaddress.ip_network(self.service_cidr).hosts()))

    @property
    def cni_gateway(self) -> str:
        return str(next(ipaddress.ip_network(self.pod_cidr).hosts()))

    def listen_ports(self) -> dict[int, str]:
        """Every TCP port the cluster binds, with the component that binds it."""
        p = self.ports
        ports: dict[int, str] = {}
        if self.control_plane:
            ports |= {
                p.apiserver: "kube-apiserver",
                p.etcd_client: "etcd",
                p.etcd_peer: "etcd (peer)",
            }
        if self.node:
            ports |= {
                p.controller_manager: "kube-controller-manager",
                p.scheduler: "kube-scheduler",
                p.kubelet: "kubelet",
                p.kubelet_healthz: "kubelet (healthz)",
                p.kube_proxy_metrics: "kube-proxy (metrics)",
                p.kube_proxy_healthz: "kube-proxy (healthz)",
                p.network_policy_metrics: "kube-network-policies (metrics)",
                p.registry: "registry",
            }
        if self.datastores:
            ports |= {
                p.datastore_etcd_client: "datastore etcd",
                p.datastore_etcd_peer: "datastore etcd (peer)",
                p.postgres: "postgres",
                p.mariadb: "mariadb",
            }
        return ports

    def describe(self) -> dict[str, Any]:
        data = asdict(self)
        data["state_dir"] = str(self.state_dir)
        data["format"] = STATE_FORMAT
        return data
