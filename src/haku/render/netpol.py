"""The NetworkPolicy around a tenant's control-plane pods, and the check that a tenant's
ranges stay clear of the admin cluster's.

Ingress: only the ports the tenant serves (the API port, the Konnectivity port when the addon
is on, and the Service's additional ports), from anywhere: clients, nodes and load balancers
are wherever they are.

Egress: only
- the tenant's datastore endpoints, on their ports (an IP is one address; a name of an
  admin-cluster Service, ``<...>.<namespace>.svc[.<domain>]``, is that namespace's pods on that
  port; any other name is what the operator resolved it to);
- DNS (port 53, to the admin cluster's DNS pods), when an endpoint is a name;
- the networks the tenant's nodes live on: the operator's ``--tenant-network`` CIDRs, by default
  every address outside the admin cluster's pod, service and node ranges (the kubelets for
  logs/exec/port-forward, webhooks and aggregated APIs served by the tenant's own pods);
  none with Konnectivity, whose agents bring that traffic in through their own connections.

So the tenant's kube-apiserver, asked by a tenant administrator to proxy (pods/proxy,
services/proxy, nodes/proxy) to an address of the admin cluster, finds no route there.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.render import konnectivity
from haku.render.controlplane import API_PORT_NAME, labels, names, selector

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
EVERYWHERE = ("0.0.0.0/0", "::/0")
DNS_PORT = 53
# The admin cluster's DNS pods, by the label every kubeadm-like cluster gives them.
DNS_PEER: dict[str, Any] = {"namespaceSelector": {},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}


@dataclass(frozen=True)
class AdminRanges:
    """The admin cluster's own address ranges, each with where it was learnt (for messages)."""

    services: tuple[tuple[str, str], ...] = ()
    pods: tuple[tuple[str, str], ...] = ()
    nodes: tuple[tuple[str, str], ...] = ()

    def all(self) -> list[str]:
        return [cidr for cidr, _ in (*self.services, *self.pods, *self.nodes)]


@dataclass(frozen=True)
class DataStorePeer:
    """Where a datastore endpoint is, as a NetworkPolicy can name it."""

    port: int
    cidrs: tuple[str, ...] = ()  # addresses (/32, /128)
    namespace: str = ""  # an admin-cluster Service's namespace: its pods


@dataclass(frozen=True)
class Egress:
    datastore: tuple[DataStorePeer, ...] = ()
    dns: bool = False
    # Where the tenant's nodes are (empty: everywhere), minus the admin cluster's ranges.
    networks: tuple[str, ...] = ()
    admin: AdminRanges = field(default_factory=AdminRanges)


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) as (host, port); ValueError if it is not one."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{endpoint!r} is not host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def service_namespace(host: str) -> str | None:
    """The namespace of an admin-cluster Service name (``svc.ns.svc``, ``pod.svc.ns.svc.cluster
    .local``), None for any other host."""
    labels_ = host.rstrip(".").lower().split(".")
    if "svc" in labels_:
        i = labels_.index("svc")
        if i >= 2:
            return labels_[i - 1]
    return None


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_cidr(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


def datastore_peers(endpoints: Iterable[str], resolved: Mapping[str, Sequence[str]]
                    ) -> tuple[tuple[DataStorePeer, ...], bool]:
    """The peers for ``endpoints`` (``resolved``: the addresses of each host name that is not a
    Service's), and whether the pods need DNS."""
    peers: list[DataStorePeer] = []
    dns = False
    for endpoint in endpoints:
        host, port = split_endpoint(endpoint)
        if is_ip(host):
            peers.append(DataStorePeer(port, cidrs=(host_cidr(host),)))
            continue
        dns = True
        namespace = service_namespace(host)
        if namespace:
            peers.append(DataStorePeer(port, namespace=namespace))
        elif resolved.get(host):
            peers.append(DataStorePeer(port, cidrs=tuple(sorted({host_cidr(a)
                                                                 for a in resolved[host]}))))
    return tuple(peers), dns


def _carve(network: str, admin: Sequence[str]) -> dict[str, Any] | None:
    """``network`` minus the admin ranges inside it as an ipBlock, adjacent ranges merged
    (None if the admin ranges cover all of it)."""
    net = ipaddress.ip_network(network, strict=False)
    inside = []
    for cidr in admin:
        a = ipaddress.ip_network(cidr, strict=False)
        if a.version != net.version:
            continue
        if net.subnet_of(a):  # type: ignore[arg-type]
            return None
        if a.subnet_of(net):  # type: ignore[arg-type]
            inside.append(a)
    excepts = list(ipaddress.collapse_addresses(inside))  # type: ignore[type-var]
    if net in excepts:
        return None
    block: dict[str, Any] = {"cidr": str(net)}
    if excepts:
        block["except"] = [str(e) for e in sorted(excepts, key=lambda n: _sort_key(str(n)))]
    return {"ipBlock": block}


def _sort_key(cidr: str) -> tuple[int, int, int]:
    n = ipaddress.ip_network(cidr)
    return n.version, int(n.network_address), n.prefixlen


def _served_ports(spec: TenantControlPlaneSpec) -> list[dict[str, Any]]:
    # The API port by its container port's name: kube-apiserver listens on a NodePort's
    # allocated port, known only once the Service exists (controlplane.secure_port).
    ports: list[dict[str, Any]] = [{"protocol": "TCP", "port": API_PORT_NAME}]
    if spec.addons.konnectivity is not None:
        ports.append({"protocol": "TCP", "port": konnectivity.PORT_NAME})
    for p in spec.additional_ports:
        target = p.get("targetPort", p["port"])
        entry = {"protocol": p.get("protocol") or "TCP", "port": target}
        if entry not in ports:
            ports.append(entry)
    return ports


def network_policy(spec: TenantControlPlaneSpec, egress: Egress) -> dict[str, Any]:
    """The NetworkPolicy selecting the tenant's control-plane pods (see the module)."""
    rules: list[dict[str, Any]] = []
    for peer in egress.datastore:
        to: list[dict[str, Any]] = [{"ipBlock": {"cidr": c}} for c in peer.cidrs]
        if peer.namespace:
            to.append({"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": peer.namespace}}})
        if to:
            rules.append({"to": to, "ports": [{"protocol": "TCP", "port": peer.port}]})
    if egress.dns:
        rules.append({"to": [DNS_PEER], "ports": [{"protocol": "UDP", "port": DNS_PORT},
                                                  {"protocol": "TCP", "port": DNS_PORT}]})
    # With Konnectivity, kube-apiserver reaches the tenant's nodes through the tunnels its
    # agents open (ingress): no egress towards them at all.
    nodes = [] if spec.addons.konnectivity is not None else [
        block for network in (egress.networks or EVERYWHERE)
        if (block := _carve(network, egress.admin.all())) is not None]
    if nodes:
        rules.append({"to": nodes})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": names(spec.name)["network-policy"], "namespace": spec.namespace,
                     "labels": labels(spec, "control-plane")},
        "spec": {
            "podSelector": {"matchLabels": selector(spec)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": _served_ports(spec)}],
            "egress": rules,
        },
    }


def range_overlaps(spec: TenantControlPlaneSpec, admin: AdminRanges) -> list[str]:
    """One message per tenant range (service and pod CIDRs) that overlaps an admin range."""
    mine: list[tuple[str, str]] = [(spec.service_cidr_field(i), c)
                                   for i, c in enumerate(spec.service_cidrs)]
    mine += [(spec.pod_cidr_field(i), c) for i, c in enumerate(spec.pod_cidrs)]
    kinds = (("service", admin.services), ("pod", admin.pods), ("node", admin.nodes))
    problems: list[str] = []
    for where, cidr in mine:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue  # the CRD and the other steps report it
        for kind, ranges in kinds:
            for theirs, source in ranges:
                other = ipaddress.ip_network(theirs, strict=False)
                if net.version == other.version and net.overlaps(other):
                    problems.append(f"{where} {cidr} overlaps the admin cluster's {kind} "
                                    f"range {theirs} ({source})")
    return problems
