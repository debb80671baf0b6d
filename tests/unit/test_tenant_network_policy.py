"""The NetworkPolicy around a tenant's control plane and the admin-range check (pure)."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace
from typing import Any

import pytest

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.controller.admin_network import from_nodes
from haku.render import controlplane, netpol

ADMIN = netpol.AdminRanges(services=(("10.32.0.0/16", "ServiceCIDR kubernetes"),),
                           pods=(("10.240.0.0/24", "Node a spec.podCIDRs"),),
                           nodes=(("10.245.0.1/32", "Node a InternalIP"),))


def spec(**net: Any) -> TenantControlPlaneSpec:
    return TenantControlPlaneSpec.parse({
        "metadata": {"name": "t1", "namespace": "ns", "uid": "u"},
        "spec": {"kubernetes": {"version": "v1.37.2"}, "networkProfile": net,
                 "controlPlane": {"service": {"serviceType": "ClusterIP", "additionalPorts": [
                     {"name": "extra", "port": 8132, "targetPort": 18132}]}}}})


def egress_rules(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return policy["spec"]["egress"]


def allowed(policy: dict[str, Any], address: str, port: int) -> bool:
    """What a NetworkPolicy implementation decides for TCP egress to address:port."""
    ip = ipaddress.ip_address(address)
    for rule in egress_rules(policy):
        ports = rule.get("ports")
        if ports and not any(p["port"] == port and p["protocol"] == "TCP" for p in ports):
            continue
        for peer in rule.get("to") or []:
            block = peer.get("ipBlock")
            if block is None:
                continue
            net = ipaddress.ip_network(block["cidr"])
            if ip.version == net.version and ip in net and not any(
                    ip in ipaddress.ip_network(e) for e in block.get("except", ())):
                return True
    return False


def test_ingress_is_only_the_served_ports_and_egress_keeps_out_of_the_admin_ranges() -> None:
    peers, dns = netpol.datastore_peers(["10.245.0.1:12379"], {})
    policy = netpol.network_policy(spec(), netpol.Egress(datastore=peers, dns=dns, admin=ADMIN))
    assert policy["metadata"] == {"name": "t1", "namespace": "ns",
                                  "labels": policy["metadata"]["labels"]}
    # The same pods as the Deployment's selector.
    assert policy["spec"]["podSelector"] == {"matchLabels": controlplane.selector(spec())}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    # The API port by its container port's name (a NodePort's kube-apiserver listens on the
    # allocated port).
    assert policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": "kube-apiserver"},
                                                    {"protocol": "TCP", "port": 18132}]}]
    assert not dns
    assert allowed(policy, "10.245.0.1", 12379)  # its datastore
    assert not allowed(policy, "10.245.0.1", 6443)  # the admin API server on the node
    assert not allowed(policy, "10.245.0.1", 10250)  # the admin node's kubelet
    assert not allowed(policy, "10.245.0.1", 15432)  # another datastore on that host
    assert not allowed(policy, "10.240.0.7", 8080)  # the operator, other tenants' pods
    assert not allowed(policy, "10.32.0.1", 443)  # admin Services
    assert allowed(policy, "10.245.1.3", 10250)  # a tenant node's kubelet
    assert allowed(policy, "10.246.3.9", 443)  # a webhook in the tenant's pods
    assert allowed(policy, "192.0.2.10", 10250)
    v6 = [r for r in egress_rules(policy) if any(
        p.get("ipBlock", {}).get("cidr") == "::/0" for p in r.get("to", []))]
    assert v6, "IPv6 nodes are reachable too"


def test_tenant_networks_narrow_the_node_egress() -> None:
    policy = netpol.network_policy(spec(), netpol.Egress(
        networks=("10.245.0.0/16", "10.240.0.0/24"), admin=ADMIN))
    assert allowed(policy, "10.245.1.3", 10250)
    assert not allowed(policy, "10.245.0.1", 10250)  # carved out
    assert not allowed(policy, "10.240.0.9", 80)  # a network that is all admin: dropped
    assert not allowed(policy, "192.0.2.10", 10250)  # outside the tenant networks


@pytest.mark.parametrize(("endpoint", "want"), [
    ("10.0.0.1:2379", ("10.0.0.1", 2379)),
    ("[fd00::1]:5432", ("fd00::1", 5432)),
    ("db.example.com:3306", ("db.example.com", 3306)),
])
def test_split_endpoint(endpoint: str, want: tuple[str, int]) -> None:
    assert netpol.split_endpoint(endpoint) == want


@pytest.mark.parametrize("endpoint", ["10.0.0.1", "host:", ":2379", "h:0", "h:70000", "h:x"])
def test_split_endpoint_refuses_what_is_not_host_port(endpoint: str) -> None:
    with pytest.raises(ValueError, match="not host:port"):
        netpol.split_endpoint(endpoint)


def test_datastore_names_become_namespace_peers_or_resolved_addresses() -> None:
    peers, dns = netpol.datastore_peers(
        ["etcd-0.etcd.kamaji-system.svc.cluster.local:2379", "pg.db.svc:5432",
         "db.example.com:3306", "gone.example.com:3306", "[fd00::1]:2379"],
        {"db.example.com": ["192.0.2.7", "192.0.2.8"]})
    assert dns
    assert peers == (
        netpol.DataStorePeer(2379, namespace="kamaji-system"),
        netpol.DataStorePeer(5432, namespace="db"),
        netpol.DataStorePeer(3306, cidrs=("192.0.2.7/32", "192.0.2.8/32")),
        netpol.DataStorePeer(2379, cidrs=("fd00::1/128",)),
    )
    policy = netpol.network_policy(spec(), netpol.Egress(datastore=peers, dns=dns,
                                                        admin=ADMIN))
    rules = egress_rules(policy)
    assert {"to": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "kamaji-system"}}}],
        "ports": [{"protocol": "TCP", "port": 2379}]} in rules
    assert {"to": [netpol.DNS_PEER], "ports": [{"protocol": "UDP", "port": 53},
                                              {"protocol": "TCP", "port": 53}]} in rules
    assert allowed(policy, "192.0.2.8", 3306)


def test_overlaps_name_the_field_and_the_admin_range() -> None:
    assert netpol.range_overlaps(spec(), ADMIN) == []  # Kamaji's defaults
    problems = netpol.range_overlaps(spec(serviceCidr="10.32.0.0/12",
                                          podCidrs=["10.250.0.0/16", "10.240.0.0/16"]), ADMIN)
    assert problems == [
        "spec.networkProfile.serviceCidr 10.32.0.0/12 overlaps the admin cluster's service "
        "range 10.32.0.0/16 (ServiceCIDR kubernetes)",
        "spec.networkProfile.podCidrs[1] 10.240.0.0/16 overlaps the admin cluster's pod "
        "range 10.240.0.0/24 (Node a spec.podCIDRs)"]
    problems = netpol.range_overlaps(spec(podCidr="10.245.0.0/24"), ADMIN)
    assert problems == ["spec.networkProfile.podCidr 10.245.0.0/24 overlaps the admin "
                        "cluster's node range 10.245.0.1/32 (Node a InternalIP)"]


def test_admin_ranges_from_nodes() -> None:
    def node(name: str, pod_cidrs: list[str], addresses: list[tuple[str, str]]) -> Any:
        return SimpleNamespace(
            metadata=SimpleNamespace(name=name),
            spec=SimpleNamespace(podCIDRs=pod_cidrs, podCIDR=pod_cidrs[0] if pod_cidrs else None),
            status=SimpleNamespace(addresses=[SimpleNamespace(type=t, address=a)
                                              for t, a in addresses]))
    pods: list[tuple[str, str]] = []
    hosts: list[tuple[str, str]] = []
    from_nodes([node("a", ["10.240.0.0/24", "fd00:10::/64"],
                     [("InternalIP", "10.245.0.1"), ("Hostname", "a"),
                      ("ExternalIP", "2001:db8::1")]),
                node("b", [], [("InternalIP", "10.245.0.1")])], pods, hosts)
    assert pods == [("10.240.0.0/24", "Node a spec.podCIDRs"),
                    ("fd00:10::/64", "Node a spec.podCIDRs")]
    assert hosts == [("10.245.0.1/32", "Node a InternalIP"),
                     ("2001:db8::1/128", "Node a ExternalIP")]


def test_adjacent_admin_ranges_are_merged_and_a_covered_network_is_dropped() -> None:
    admin = netpol.AdminRanges(nodes=(("10.0.0.0/32", "a"), ("10.0.0.1/32", "b"),
                                      ("10.0.0.3/32", "c")))
    policy = netpol.network_policy(spec(), netpol.Egress(networks=("10.0.0.0/30",),
                                                         admin=admin))
    assert egress_rules(policy)[-1] == {"to": [{"ipBlock": {
        "cidr": "10.0.0.0/30", "except": ["10.0.0.0/31", "10.0.0.3/32"]}}]}
    halves = netpol.AdminRanges(pods=(("10.0.0.0/31", "a"), ("10.0.0.2/31", "b")))
    policy = netpol.network_policy(spec(), netpol.Egress(networks=("10.0.0.0/30",),
                                                         admin=halves))
    assert egress_rules(policy) == []  # nothing left to reach
