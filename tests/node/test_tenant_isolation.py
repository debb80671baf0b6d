"""A tenant administrator, with nothing but the tenant's own admin kubeconfig, tries to use the
tenant's kube-apiserver as a proxy into the admin cluster: pods/proxy to a Pod whose
``status.podIP`` they set, services/proxy through a Service with hand-made Endpoints or
EndpointSlices, nodes/proxy to a Node object they made. Aimed at the admin API server, the
admin node's kubelet, a pod of the admin cluster (where the operator runs in-cluster), another
tenant's control-plane pod and the datastores, every attempt must find its packets dropped by
the tenant's NetworkPolicy, while the same requests aimed at the tenant's own dev worker, and
``kubectl logs``/``exec`` there, still work."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Node, Pod
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import PatchType

from haku.dev import samples
from haku.dev import worker as workers
from haku.dev.cluster import DevCluster
from haku.dev.versions import BUSYBOX_IMAGE
from haku.render.controlplane import TENANT_LABEL
from haku.tenant.access import TenantAccess

from .helpers import add_worker, client, eventually, kubectl, pod_ready, wait_tenant_ready

NS = "isolation"
VERSION = "v1.37.2"
PORT = 31451  # tenant A's NodePort (and API port)
B_PORT = 6443
ADMIN_NS = "isolation-admin"
ATTEMPT_TIMEOUT = 8  # seconds: an allowed target answers in well under one


@dataclass(frozen=True)
class Target:
    what: str
    address: str
    port: int
    scheme: str  # how the tenant's API server is asked to talk to it
    path: str = "/"


@dataclass
class World:
    cluster: DevCluster
    tenant: TenantAccess
    kubeconfig: Path
    worker_node: str
    worker_pod_ip: str
    admin_targets: list[Target]
    own_datastore: Target


def tenant_kubectl(world: World, *args: str) -> Any:
    return kubectl(world.cluster, *args, kubeconfig=world.kubeconfig, check=False)


def httpd_pod(name: str, namespace: str, node: str | None, body: str) -> dict[str, Any]:
    script = (f"mkdir -p /www && echo {body} > /www/index.html && "
              "exec httpd -f -p 8080 -h /www")
    spec: dict[str, Any] = {"containers": [{"name": "httpd", "image": BUSYBOX_IMAGE,
                                            "imagePullPolicy": "Never",
                                            "command": ["sh", "-c", script]}],
                            "terminationGracePeriodSeconds": 0}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": spec}


async def running_ip(c: AsyncClient, name: str, namespace: str) -> str:
    async def up() -> bool:
        return pod_ready(await c.get(Pod, name, namespace=namespace))

    await eventually(up, 120, f"pod {namespace}/{name} Ready")
    pod = await c.get(Pod, name, namespace=namespace)
    return str(pod.status.podIP)


@pytest.fixture(scope="module")
async def world(running_operator: DevCluster) -> AsyncIterator[World]:
    cluster = running_operator
    admin = client(cluster)
    tmp = Path(tempfile.mkdtemp(prefix="haku-isolation-"))
    try:
        for name, port, addons, svc in (("iso-a", PORT, True, "NodePort"),
                                        ("iso-b", B_PORT, False, "ClusterIP")):
            doc = samples.tenant_control_plane(name, NS, "dev-etcd", VERSION,
                                               service_type=svc, port=port, addons=addons)
            await admin.apply(from_dict(doc), force=True)
        await admin.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": ADMIN_NS}}))
        # A pod of the admin cluster, where the operator and its /metrics live in-cluster.
        await admin.apply(from_dict(httpd_pod("stand-in", ADMIN_NS, None, "admin-secret")),
                          force=True)
        tenant, _ = await asyncio.gather(wait_tenant_ready(admin, NS, "iso-a"),
                                         wait_tenant_ready(admin, NS, "iso-b"))
        b_pods = [p async for p in admin.list(Pod, namespace=NS,
                                              labels={TENANT_LABEL: "iso-b"})]
        assert b_pods and b_pods[0].status.podIP
        stand_in = await running_ip(admin, "stand-in", ADMIN_NS)
        node_ip = cluster.layout.node_ip
        ports = cluster.layout.ports
        targets = [
            Target("the admin API server", node_ip, ports.apiserver, "https", "/version"),
            Target("the admin node's kubelet", node_ip, 10250, "https", "/healthz"),
            Target("a pod of the admin cluster", stand_in, 8080, "http"),
            Target("another tenant's API server pod", str(b_pods[0].status.podIP), B_PORT,
                   "https", "/version"),
            Target("the PostgreSQL datastore", node_ip, ports.postgres, "http"),
            Target("the MariaDB datastore", node_ip, ports.mariadb, "http"),
        ]
        kubeconfig = tmp / "tenant.conf"
        kubeconfig.write_text(yaml.safe_dump(tenant.kubeconfig))
        added = await add_worker(cluster, tenant)
        t = tenant.client()
        try:
            await t.apply(from_dict(httpd_pod("mine", "default", added.worker.node_name,
                                              "tenant-own")), force=True)
            mine = await running_ip(t, "mine", "default")
        finally:
            await t.close()
        own = Target("its own etcd datastore", node_ip, ports.datastore_etcd_client, "https",
                     "/version")
        yield World(cluster, tenant, kubeconfig, added.worker.node_name, mine, targets, own)
    finally:
        with contextlib.suppress(ApiError):
            await admin.delete(Pod, "stand-in", namespace=ADMIN_NS, grace_period=0)
        await admin.close()
        await asyncio.to_thread(workers.remove_all, cluster.layout)


async def bait_pod(t: AsyncClient, name: str, ip: str) -> None:
    """A tenant Pod, on a Node object of the same name with no kubelet behind it, whose status
    says it lives at ``ip``."""
    await t.apply(from_dict({"apiVersion": "v1", "kind": "Pod",
                             "metadata": {"name": name, "namespace": "default"},
                             "spec": {"nodeName": name, "containers": [
                                 {"name": "c", "image": BUSYBOX_IMAGE}]}}), force=True)
    await t.patch(Pod.Status, name, {"status": {"podIP": ip, "podIPs": [{"ip": ip}]}},
                  namespace="default", patch_type=PatchType.MERGE)


async def bait_service(t: AsyncClient, name: str, ip: str, port: int, how: str,
                       pod: str) -> None:
    """A selector-less tenant Service whose endpoints (hand-made ``Endpoints`` or an
    ``EndpointSlice``) say it is served at ip:port, by Pod ``pod`` (the API server proxies
    only to an address that a Pod's status claims, and that status is the attacker's)."""
    ref = {"kind": "Pod", "namespace": "default", "name": pod}
    await t.apply(from_dict({"apiVersion": "v1", "kind": "Service",
                             "metadata": {"name": name, "namespace": "default"},
                             "spec": {"ports": [{"name": "p", "port": 80, "targetPort": port}]}}),
                  force=True)
    if how == "Endpoints":
        await t.apply(from_dict({"apiVersion": "v1", "kind": "Endpoints",
                                 "metadata": {"name": name, "namespace": "default"},
                                 "subsets": [{"addresses": [{"ip": ip, "targetRef": ref}],
                                              "ports": [{"name": "p", "port": port}]}]}),
                      force=True)
    else:
        await t.apply(from_dict({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-x", "namespace": "default", "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "tenant-admin"}},
            "addressType": "IPv6" if ":" in ip else "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True},
                           "targetRef": ref}],
            "ports": [{"name": "p", "port": port, "protocol": "TCP"}]}), force=True)


async def bait_node(t: AsyncClient, name: str, ip: str, port: int) -> None:
    """A tenant Node object whose kubelet, it says, is at ip:port."""
    await t.apply(from_dict({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}),
                  force=True)
    await t.patch(Node.Status, name, {"status": {
        "addresses": [{"type": "InternalIP", "address": ip}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}},
        patch_type=PatchType.MERGE)


async def baits(world: World, target: Target, tag: str) -> list[tuple[str, str]]:
    """(how, raw API path) for each way of making the tenant's API server talk to ``target``."""
    t = world.tenant.client()
    try:
        await bait_node(t, f"bait-{tag}", target.address, target.port)
        await bait_pod(t, f"bait-{tag}", target.address)
        await bait_service(t, f"bait-{tag}-ep", target.address, target.port, "Endpoints",
                           f"bait-{tag}")
        await bait_service(t, f"bait-{tag}-es", target.address, target.port, "EndpointSlice",
                           f"bait-{tag}")

        # services/proxy reads EndpointSlices from the API server's cache: the hand-made one,
        # and the one the tenant's controller-manager mirrors from the Endpoints.
        async def sliced() -> bool:
            for svc in (f"bait-{tag}-ep", f"bait-{tag}-es"):
                if not [s async for s in t.list(EndpointSlice, namespace="default",
                                                labels={"kubernetes.io/service-name": svc})]:
                    return False
            return True

        await eventually(sliced, 60, f"EndpointSlices of the bait-{tag} Services")
        await asyncio.sleep(2)
    finally:
        await t.close()
    s, path = target.scheme, target.path
    return [
        ("pods/proxy", f"/api/v1/namespaces/default/pods/{s}:bait-{tag}:{target.port}"
                       f"/proxy{path}"),
        ("services/proxy (Endpoints)",
         f"/api/v1/namespaces/default/services/{s}:bait-{tag}-ep:p/proxy{path}"),
        ("services/proxy (EndpointSlice)",
         f"/api/v1/namespaces/default/services/{s}:bait-{tag}-es:p/proxy{path}"),
        ("nodes/proxy", f"/api/v1/nodes/{s}:bait-{tag}:{target.port}/proxy{path}"),
    ]


def attempt(world: World, path: str) -> tuple[int, str]:
    got = tenant_kubectl(world, "get", "--raw", path, f"--request-timeout={ATTEMPT_TIMEOUT}s")
    return got.returncode, (got.stdout + got.stderr)[-600:]


def dropped(output: str) -> bool:
    """The tenant's API server found no way through: its dial timed out, or the request did
    (a dropped SYN is never answered)."""
    return any(s in output for s in ("i/o timeout", "deadline exceeded", "Client.Timeout",
                                     "context canceled", "Timeout exceeded"))


@contextlib.contextmanager
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=12) as p:
        yield p


async def test_the_tenant_api_server_is_no_door_into_the_admin_cluster(world: World) -> None:
    attempts: list[tuple[Target, str, str]] = []
    for i, target in enumerate(world.admin_targets):
        attempts += [(target, how, path) for how, path in await baits(world, target, f"a{i}")]
    loop = asyncio.get_running_loop()
    with pool() as p:
        results = await asyncio.gather(*[loop.run_in_executor(p, attempt, world, path)
                                         for _, _, path in attempts])
    through = [f"{how} to {target.what} ({target.address}:{target.port}): rc={rc} {out!r}"
               for (target, how, _), (rc, out) in zip(attempts, results, strict=True)
               if rc == 0 or not dropped(out)]
    assert not through, "\n".join(through)


async def test_the_same_requests_reach_the_tenants_own_worker(world: World) -> None:
    """The attempts above fail because of where they go, not because the paths are broken:
    aimed at the tenant's own worker they work, as do ``kubectl logs`` and ``exec``."""
    own = Target("the tenant's own pod", world.worker_pod_ip, 8080, "http")
    loop = asyncio.get_running_loop()
    paths = await baits(world, own, "own")
    # nodes/proxy to the real worker Node, whose kubelet trusts the tenant's API server.
    paths.append(("nodes/proxy (the worker)",
                  f"/api/v1/nodes/https:{world.worker_node}:10250/proxy/healthz"))
    with pool() as p:
        results = await asyncio.gather(*[loop.run_in_executor(p, attempt, world, path)
                                         for _, path in paths])
    for (how, _), (rc, out) in zip(paths, results, strict=True):
        if how == "nodes/proxy":
            # The API server speaks TLS to a "kubelet" whatever the scheme: the pod's plain
            # HTTP answer to its handshake shows the connection was made.
            assert "first record does not look like a TLS handshake" in out, out
            continue
        want = "ok" if "worker" in how else "tenant-own"
        assert rc == 0 and want in out, f"{how}: rc={rc} {out!r}"
    logs = tenant_kubectl(world, "logs", "-n", "default", "mine", "--request-timeout=30s")
    assert logs.returncode == 0, logs.stderr
    got = tenant_kubectl(world, "exec", "-n", "default", "mine", "--", "cat",
                         "/www/index.html")
    assert got.returncode == 0 and got.stdout.strip() == "tenant-own", got.stderr


async def test_its_own_datastore_port_opens_nothing_without_its_client_certificate(
        world: World) -> None:
    """The one admin address the policy lets the tenant's pods reach is its datastore's port
    (here etcd, which the tenant's kube-apiserver uses): asked to proxy there, the API server
    has no client certificate the datastore accepts, so the TLS handshake fails ("http2: client
    conn could not be established") and nothing is read."""
    paths = await baits(world, world.own_datastore, "own-ds")
    loop = asyncio.get_running_loop()
    with pool() as p:
        results = await asyncio.gather(*[loop.run_in_executor(p, attempt, world, path)
                                         for _, path in paths])
    # Reached (not dropped: the policy allows the port), refused at the handshake, nothing read
    # (etcd's /version would answer {"etcdserver": ...}).
    wrong = [f"{how}: rc={rc} {out!r}" for (how, _), (rc, out) in zip(paths, results, strict=True)
             if rc == 0 or "etcdserver" in out or dropped(out)
             or "error trying to reach service" not in out]
    assert not wrong, "\n".join(wrong)
