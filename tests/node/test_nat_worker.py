"""A worker behind NAT (``haku dev worker add --behind-nat``), as a remote site would be: it
joins its tenant and gets Ready, since everything it opens towards the admin node works; the
admin node and the admin pods cannot open a connection to it (its kubelet port, its pods), so
the tenant's API server cannot fetch a pod's logs from it; what it sends arrives from the
admin node IP; its rules go with it. A worker beside it, not behind NAT, shows the contrast.

The first test needs no cluster: it applies the same rules in a private network namespace
(a miniature admin node, worker and admin pod) and checks what connects, both ways."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Node, Pod

from haku.dev import samples
from haku.dev import worker as workers
from haku.dev import worker_net as wnet
from haku.dev.cluster import DevCluster
from haku.dev.versions import BUSYBOX_IMAGE
from haku.dev.worker_config import worker_net
from haku.tenant.access import TenantAccess

from .helpers import add_worker, client, eventually, pod_ready, tcp_connect, wait_tenant_ready

NS = "nat-test"
TENANT = "natted"
PORT = 31447
VERSION = "v1.37.2"
KUBELET_PORT = 10250


LAB = r"""
import os, subprocess, sys, time
from haku.dev import worker_net as wnet

def sh(*a):
    r = subprocess.run(list(a), capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{a}: {r.stderr}")

def inside(pid, *a):
    sh("nsenter", "-t", str(pid), "-n", *a)

def pinned():
    p = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    time.sleep(0.3)
    return p

assert os.readlink("/proc/self/ns/net") != os.readlink(f"/proc/{os.getppid()}/ns/net")
sh("ip", "link", "set", "lo", "up")
sh("ip", "link", "add", "haku-node", "type", "bridge")
sh("ip", "addr", "add", "10.245.0.1/32", "dev", "haku-node")
sh("ip", "link", "set", "haku-node", "up")
net = wnet.WorkerNet(3, "10.245.0.1")
W, P = pinned(), pinned()  # the worker; an admin pod
sh("ip", "link", "add", "hkw3", "type", "veth", "peer", "name", "eth0", "netns", str(W.pid))
for a in (["addr", "add", "10.245.1.3/32", "dev", "eth0"], ["link", "set", "eth0", "up"],
          ["route", "add", "10.245.0.1", "dev", "eth0"],
          ["route", "add", "default", "via", "10.245.0.1", "dev", "eth0", "onlink"]):
    inside(W.pid, "ip", *a)
sh("ip", "link", "set", "hkw3", "up")
sh("ip", "route", "add", "10.245.1.3/32", "dev", "hkw3", "src", "10.245.0.1")
sh("ip", "link", "add", "haku-cni0", "type", "veth", "peer", "name", "eth0", "netns", str(P.pid))
sh("ip", "addr", "add", "10.240.0.1/24", "dev", "haku-cni0")
sh("ip", "link", "set", "haku-cni0", "up")
for a in (["addr", "add", "10.240.0.5/24", "dev", "eth0"], ["link", "set", "eth0", "up"],
          ["route", "add", "default", "via", "10.240.0.1"]):
    inside(P.pid, "ip", *a)
for link in ("hkw3", "haku-cni0"):
    sh("sysctl", "-q", "-w", f"net.ipv4.conf.{link}.forwarding=1")
SERVE = ("import socket\ns = socket.create_server(('0.0.0.0', 7000))\nwhile True:\n"
         "    c, p = s.accept(); c.send(p[0].encode()); c.close()\n")
CONNECT = ("import socket, sys\ntry:\n"
           "    print(socket.create_connection((sys.argv[1], 7000), 3).recv(100).decode())\n"
           "except OSError as e:\n    print('ERR', e.errno)\n")

def ns(pid):
    return ["nsenter", "-t", str(pid), "-n"] if pid else []

servers = [subprocess.Popen([*ns(pid), sys.executable, "-c", SERVE]) for pid in (0, W.pid, P.pid)]
time.sleep(0.5)

def connect(pid, dst):
    return subprocess.run([*ns(pid), sys.executable, "-c", CONNECT, dst], capture_output=True,
                          text=True).stdout.strip()

def matrix():
    return [connect(0, "10.245.1.3"), connect(P.pid, "10.245.1.3"),
            connect(W.pid, "10.245.0.1"), connect(W.pid, "10.240.0.5")]

result = {"before": matrix()}
wnet.ensure_nat(net)
wnet.ensure_nat(net)  # again: made afresh, not doubled
result["behind"] = matrix()
result["present"] = wnet.nat_present(net)
result["removed"] = wnet.remove_nat(net)
result["after"] = matrix()
result["left"] = wnet.nat_chains()
for p in [*servers, W, P]:
    p.kill()
print(repr(result))
"""


def test_the_nat_rules_in_a_private_network_namespace(tmp_path: Path) -> None:
    """host -> worker, admin pod -> worker, worker -> node IP, worker -> admin pod: each
    answer is the peer address the server saw, or ERR and the errno (113: no route)."""
    script = tmp_path / "lab.py"
    script.write_text(LAB)
    got = subprocess.run(["unshare", "--net", sys.executable, str(script)], capture_output=True,
                         text=True, check=False, timeout=120)
    assert got.returncode == 0, got.stderr
    result = ast.literal_eval(got.stdout.strip().splitlines()[-1])
    assert result["before"] == ["10.245.0.1", "10.240.0.5", "10.245.1.3", "10.245.1.3"]
    assert result["behind"] == ["ERR 113", "ERR 113", "10.245.0.1", "10.245.0.1"]
    assert result["present"] == {"filter": True, "nat": True}
    assert len(result["removed"]) == 2 and result["left"] == []
    assert result["after"] == result["before"]


@dataclass
class Sites:
    cluster: DevCluster
    tenant: TenantAccess
    kubeconfig: Path  # the tenant's admin kubeconfig, for kubectl
    plain: workers.Worker  # an ordinary worker
    natted: workers.Worker  # a worker behind NAT


@pytest.fixture(scope="module")
async def sites(running_operator: DevCluster,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sites]:
    cluster = running_operator
    c = client(cluster)
    try:
        doc = samples.tenant_control_plane(TENANT, NS, "dev-etcd", VERSION,
                                           service_type="NodePort", port=PORT, addons=True)
        await c.apply(from_dict(doc), force=True)
        tenant = await wait_tenant_ready(c, NS, TENANT)
    finally:
        await c.close()
    kubeconfig = tmp_path_factory.mktemp("nat") / "tenant.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(tenant.kubeconfig))
    kubeconfig.chmod(0o600)
    try:
        plain = (await add_worker(cluster, tenant)).worker
        natted = (await add_worker(cluster, tenant, behind_nat=True)).worker
        yield Sites(cluster, tenant, kubeconfig, plain, natted)
    finally:
        await asyncio.to_thread(workers.remove_all, cluster.layout)


def tenant_kubectl(sites: Sites, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(sites.cluster.layout.bin / "kubectl"),
                           f"--kubeconfig={sites.kubeconfig}", *args],
                          capture_output=True, text=True, check=False, timeout=60)


async def node_ready(t: AsyncClient, name: str) -> bool:
    try:
        node = await t.get(Node, name)
    except ApiError:
        return False
    return any(c.type == "Ready" and c.status == "True"
               for c in (node.status.conditions if node.status else None) or [])


async def test_a_worker_behind_nat_joins_and_gets_ready(sites: Sites) -> None:
    assert sites.natted.behind_nat and not sites.plain.behind_nat
    t = sites.tenant.client()
    try:
        for w in (sites.plain, sites.natted):
            assert await node_ready(t, w.node_name), w.node_name
    finally:
        await t.close()
    shown = {w["name"]: w["behind_nat"] for w in workers.status(sites.cluster.layout)}
    assert shown == {sites.plain.name: False, sites.natted.name: True}
    net = worker_net(sites.cluster.layout, sites.natted.index)
    assert wnet.nat_present(net) == {"filter": True, "nat": True}
    assert wnet.nat_present(worker_net(sites.cluster.layout, sites.plain.index)) == \
        {"filter": False, "nat": False}


def test_the_admin_host_cannot_connect_to_the_natted_kubelet(sites: Sites) -> None:
    assert tcp_connect(sites.plain.address, KUBELET_PORT) is None
    why = tcp_connect(sites.natted.address, KUBELET_PORT)
    assert why is not None
    assert "unreachable" in why.lower() or "route" in why.lower(), why


@contextlib.contextmanager
def listener(address: str) -> Iterator[tuple[int, list[str]]]:
    """A TCP server on ``address`` of this host: its port, and the peers that connected."""
    server = socket.create_server((address, 0))
    server.settimeout(0.2)
    peers: list[str] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            peers.append(peer[0])
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], peers
    finally:
        stop.set()
        thread.join(5)
        server.close()


def connect_from(w: workers.Worker, layout_node_ip: str, port: int) -> str:
    code = ("import socket,sys\n"
            f"socket.create_connection(({layout_node_ip!r}, {port}), 5).close()\n")
    result = subprocess.run(["nsenter", f"--net=/run/netns/{w.netns}", sys.executable, "-c",
                             code], capture_output=True, text=True, check=False, timeout=30)
    return result.stderr.strip()


def test_what_the_natted_worker_opens_arrives_from_the_admin_node_ip(sites: Sites) -> None:
    node_ip = sites.cluster.layout.node_ip
    with listener(node_ip) as (port, peers):
        assert connect_from(sites.plain, node_ip, port) == ""
        assert connect_from(sites.natted, node_ip, port) == ""
        for _ in range(50):
            if len(peers) == 2:
                break
            threading.Event().wait(0.1)
    assert peers == [sites.plain.address, node_ip]


async def test_the_tenant_cannot_fetch_logs_from_the_natted_worker(sites: Sites) -> None:
    t = sites.tenant.client()
    names = {sites.plain.node_name: "on-plain", sites.natted.node_name: "on-natted"}
    try:
        for node, name in names.items():
            await t.apply(from_dict({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                         "containers": [{"name": "c", "image": BUSYBOX_IMAGE,
                                         "imagePullPolicy": "Never",
                                         "command": ["sh", "-c",
                                                     f"echo hello from {name}; sleep 3600"]}]},
            }), force=True)

        async def running() -> bool:
            pods = [await t.get(Pod, n, namespace="default") for n in names.values()]
            return all(map(pod_ready, pods))

        await eventually(running, 120, "both probe pods Running")
        ok = tenant_kubectl(sites, "--request-timeout=20s", "logs", "-n", "default", "on-plain")
        assert ok.returncode == 0 and "hello from on-plain" in ok.stdout, ok.stderr
        failed = tenant_kubectl(sites, "--request-timeout=10s", "logs", "-n", "default",
                                "on-natted")
        assert failed.returncode != 0, failed.stdout
        assert "hello" not in failed.stdout
    finally:
        for name in names.values():
            with contextlib.suppress(ApiError):
                await t.delete(Pod, name, namespace="default", grace_period=0)
        await t.close()


def test_removing_the_natted_worker_removes_its_rules(sites: Sites) -> None:
    net = worker_net(sites.cluster.layout, sites.natted.index)
    workers.remove(sites.cluster.layout, sites.natted.name, printer=lambda _: None)
    assert wnet.nat_present(net) == {"filter": False, "nat": False}
    assert wnet.nat_chains() == []
    for table, chain in (("filter", "OUTPUT"), ("filter", "FORWARD"), ("nat", "POSTROUTING"),
                         ("nat", "INPUT")):
        rules = subprocess.run(["iptables", "-w", "-t", table, "-S", chain],
                               capture_output=True, text=True, check=True).stdout
        assert wnet.NAT_CHAIN_PREFIX not in rules, rules
