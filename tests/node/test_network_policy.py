"""The admin cluster enforces NetworkPolicy: a denied flow is dropped, not merely accepted as an
object. kube-network-policies decides (its ``kube_network_policies_packet_count`` with
``verdict="drop"`` rises); Haku's mangle chains queue the admin pods' traffic to it, including
new connections to the node itself (``10.245.0.1``: kube-apiserver, kubelet, datastores)."""

from __future__ import annotations

import contextlib
import re
import time
import urllib.request
from typing import Any

from lightkube import ApiError
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Namespace, Pod
from lightkube.resources.networking_v1 import NetworkPolicy

from haku.dev import netpol
from haku.dev.cluster import DevCluster

from .helpers import client, eventually, kubectl

NS = "netpol-test"
PORT = 8080
WAIT = 1  # busybox nc's connect timeout (s): what a dropped connection costs


def _pod(name: str, command: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": name, "image": "docker.io/library/busybox:haku",
                            "imagePullPolicy": "Never", "command": ["sh", "-c", command]}],
        },
    }


def _policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


def _connect(cluster: DevCluster, host: str, port: int) -> tuple[bool, float]:
    """A TCP connect from the client pod: whether it worked, and how long it took."""
    started = time.monotonic()
    result = kubectl(cluster, "exec", "-n", NS, "client", "--", "nc", "-w", str(WAIT), host,
                     str(port), check=False)
    return result.returncode == 0, time.monotonic() - started


def _dropped(cluster: DevCluster, host: str, port: int) -> bool:
    """The connect failed by running into its timeout: dropped, not refused."""
    ok, seconds = _connect(cluster, host, port)
    return not ok and seconds >= WAIT - 0.2


def _drops(cluster: DevCluster) -> float:
    """kube-network-policies' count of packets it answered with drop."""
    url = f"http://127.0.0.1:{cluster.layout.ports.network_policy_metrics}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    pattern = r'^kube_network_policies_packet_count\{[^}]*verdict="drop"[^}]*\} (\S+)$'
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE))


async def test_denied_flows_are_dropped_and_allowed_ones_pass(node_cluster: DevCluster) -> None:
    lay = node_cluster.layout
    assert node_cluster.supervisor.running(netpol.NAME), "kube-network-policies is not running"
    assert netpol.queue_bound() and netpol.steering_present()
    c = client(node_cluster)
    try:
        await c.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": NS}}))
        await c.apply(from_dict(_pod("server", f"exec nc -ll -p {PORT} -e /bin/true")),
                      force=True)
        await c.apply(from_dict(_pod("client", "exec sleep 3600")), force=True)
        ips: dict[str, str] = {}

        async def running() -> bool:
            for name in ("server", "client"):
                pod = await c.get(Pod, name, namespace=NS)
                if not (pod.status and pod.status.phase == "Running" and pod.status.podIP):
                    return False
                ips[name] = pod.status.podIP
            return True

        await eventually(running, 60, "the server and client pods to run")
        server = ips["server"]
        assert server.startswith("10.240.0.")

        # No policy: pod to pod, and pod to the node's kube-apiserver and PostgreSQL.
        assert _connect(node_cluster, server, PORT)[0]
        assert _connect(node_cluster, lay.node_ip, lay.ports.apiserver)[0]
        assert _connect(node_cluster, lay.node_ip, lay.ports.postgres)[0]

        # Ingress denied on the server: the connect runs into its timeout; the drop is
        # kube-network-policies' verdict.
        drops = _drops(node_cluster)
        await c.apply(from_dict(_policy("server-deny-ingress", {
            "podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"]})))
        deadline = time.monotonic() + 15
        while not _dropped(node_cluster, server, PORT):
            assert time.monotonic() < deadline, "the deny-ingress policy never took effect"
        assert _drops(node_cluster) > drops
        # An ingress rule for the client's port opens it again.
        await c.apply(from_dict(_policy("server-deny-ingress", {
            "podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                         "ports": [{"protocol": "TCP", "port": PORT}]}]})))
        deadline = time.monotonic() + 15
        while not _connect(node_cluster, server, PORT)[0]:
            assert time.monotonic() < deadline, "the ingress rule never took effect"
        await c.delete(NetworkPolicy, "server-deny-ingress", namespace=NS)

        # Egress from the client only to PostgreSQL on the node IP: the node's other ports,
        # the kubernetes Service (DNATed to the node's :6443) and the server are dropped.
        await c.apply(from_dict(_policy("client-egress", {
            "podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": f"{lay.node_ip}/32"}}],
                        "ports": [{"protocol": "TCP", "port": lay.ports.postgres}]}]})))
        deadline = time.monotonic() + 15
        while not _dropped(node_cluster, lay.node_ip, lay.ports.apiserver):
            assert time.monotonic() < deadline, "the egress policy never took effect"
        assert _connect(node_cluster, lay.node_ip, lay.ports.postgres)[0]
        assert _dropped(node_cluster, lay.kubernetes_service_ip, 443)
        assert _dropped(node_cluster, lay.node_ip, lay.ports.kubelet)
        assert _dropped(node_cluster, lay.node_ip, lay.ports.mariadb)
        assert _dropped(node_cluster, server, PORT)
    finally:
        with contextlib.suppress(ApiError):
            await c.delete(Namespace, NS)
        await c.close()
