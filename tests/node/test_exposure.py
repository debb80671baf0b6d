"""Traefik in the dev cluster (``haku dev exposure up``) carries tenants' API traffic by host
name: three tenants behind the one Ingress port (spec.controlPlane.ingress, class nginx,
annotation ``nginx.ingress.kubernetes.io/ssl-passthrough``) and three behind the one Gateway
port (spec.controlPlane.gateway, TLSRoutes on the Gateway haku-exposure/tenants). Each host
name reaches its own tenant and no other: kubectl with the tenant's admin.conf (whose server is
the host name), the certificate presented for each name (its tenant's CA, the name in its SANs;
no other tenant's CA verifies it), and a ConfigMap written through each name read back only
there. A dev worker joins one Ingress tenant and another one Gateway tenant through their host
names (kubeadm's discovery, the kubelet and kube-proxy all dial it). ``haku dev exposure
down`` takes Traefik away again. The names resolve to the admin node IP through Haku's
block of /etc/hosts (``haku dev exposure hosts``), removed afterwards."""

from __future__ import annotations

import asyncio
import socket
import ssl
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Pod
from lightkube.resources.networking_v1 import Ingress

from haku.controller.steps.gateway import TLSRoute
from haku.dev import exposure, samples
from haku.dev import worker as workers
from haku.dev.cluster import DevCluster
from haku.tenant.access import TenantAccess

from .helpers import add_worker, client, eventually, kubectl, pod_ready, wait_tenant_ready

NS = "exposure"
VERSION = "v1.37.2"
DOMAIN = "haku.test"  # RFC 6761: never a real name
INGRESS_TENANTS = ("ing1", "ing2", "ing3")
GATEWAY_TENANTS = ("gw1", "gw2", "gw3")
JOINED = ("ing1", "gw1")  # the tenants a worker joins through their host names


def hostname(tenant: str) -> str:
    return f"{tenant}.{NS}.{DOMAIN}"


@dataclass
class Setup:
    cluster: DevCluster
    tenants: dict[str, TenantAccess]
    kubeconfigs: dict[str, Path]
    timings: dict[str, float]


def _tenant(name: str) -> dict[str, Any]:
    doc = samples.tenant_control_plane(name, NS, "dev-etcd", VERSION, addons=name in JOINED)
    cp = doc["spec"]["controlPlane"]
    if name in INGRESS_TENANTS:
        cp["ingress"] = exposure.ingress_spec(hostname(name))
    else:
        cp["gateway"] = exposure.gateway_spec(hostname(name))
    return doc


@pytest.fixture(scope="module")
async def setup(running_operator: DevCluster) -> AsyncIterator[Setup]:
    cluster = running_operator
    layout = cluster.layout
    timings: dict[str, float] = {}
    names = [hostname(t) for t in (*INGRESS_TENANTS, *GATEWAY_TENANTS)]
    names.append(f"nobody.{NS}.{DOMAIN}")  # resolves, routes to no tenant
    started = time.monotonic()
    report = await asyncio.to_thread(exposure.up, layout, lambda line: print(line, flush=True))
    timings["exposure up"] = time.monotonic() - started
    print(f"exposure up: {report}", flush=True)
    before = exposure.hosts_names(exposure.HOSTS.read_text())
    exposure.add_hosts(names, layout.node_ip)
    c = client(cluster)
    workdir = Path(tempfile.mkdtemp(prefix="haku-exposure-"))
    try:
        started = time.monotonic()
        for name in (*INGRESS_TENANTS, *GATEWAY_TENANTS):
            await c.apply(from_dict(_tenant(name)), force=True)
        ready = await asyncio.gather(*(wait_tenant_ready(c, NS, name, timeout=480)
                                       for name in (*INGRESS_TENANTS, *GATEWAY_TENANTS)))
        timings["six tenants Ready"] = time.monotonic() - started
        tenants = {t.name: t for t in ready}
        kubeconfigs = {}
        for name, tenant in tenants.items():
            path = workdir / f"{name}.kubeconfig"
            path.write_text(yaml.safe_dump(tenant.kubeconfig))
            path.chmod(0o600)
            kubeconfigs[name] = path
        yield Setup(cluster, tenants, kubeconfigs, timings)
    finally:
        await c.close()
        await asyncio.to_thread(workers.remove_all, layout)
        exposure.set_hosts(before, layout.node_ip)
        print(f"timings: {timings}", flush=True)
    # `haku dev exposure down` leaves the cluster as it found it (the CRDs stay).
    gone = await asyncio.to_thread(exposure.down, layout)
    assert "namespace/haku-exposure" in gone and "ingressclass.networking.k8s.io/nginx" in gone
    assert not [p for p in kubectl(cluster, "get", "pods", "-A", "-o", "name").stdout.split()
                if "traefik" in p]


def _served(host: str, port: int, server_name: str, ca: bytes) -> x509.Certificate:
    """The certificate served at ``host:port`` for SNI ``server_name``, verified against
    ``ca`` alone and checked to name ``server_name`` (ssl.SSLCertVerificationError if not)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca.decode())
    with socket.create_connection((host, port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def test_every_host_name_reaches_its_own_tenant_through_one_port(setup: Setup) -> None:
    cluster, tenants = setup.cluster, setup.tenants
    ports = {name: int(t.endpoint.rpartition(":")[2]) for name, t in tenants.items()}
    assert {ports[n] for n in INGRESS_TENANTS} == {exposure.INGRESS_PORT}
    assert {ports[n] for n in GATEWAY_TENANTS} == {exposure.GATEWAY_PORT}
    for name, tenant in tenants.items():
        assert tenant.endpoint == f"{hostname(name)}:{ports[name]}"
        assert tenant.kubeconfig["clusters"][0]["cluster"]["server"] == \
            f"https://{hostname(name)}:{ports[name]}"

    # kubectl with each tenant's admin.conf (server: its host name): its own API answers,
    # and a ConfigMap written there is seen there only.
    for name, path in setup.kubeconfigs.items():
        done = kubectl(cluster, "get", "--raw", "/version", kubeconfig=path)
        assert '"gitVersion": "v1.37.2"' in done.stdout, done.stdout
        kubectl(cluster, "create", "configmap", "whoami", "-n", "default",
                f"--from-literal=tenant={name}", kubeconfig=path)
    for name, path in setup.kubeconfigs.items():
        got = kubectl(cluster, "get", "configmap", "whoami", "-n", "default",
                      "-o", "jsonpath={.data.tenant}", kubeconfig=path)
        assert got.stdout == name

    # The certificate behind each name: its tenant's, for that name; no other tenant's CA
    # verifies it (no cross-talk); a name no route claims reaches no tenant.
    node_ip = cluster.layout.node_ip
    for name, tenant in tenants.items():
        cert = _served(node_ip, ports[name], hostname(name), tenant.ca_pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert hostname(name) in sans.get_values_for_type(x509.DNSName)
        for other, other_tenant in tenants.items():
            if other != name:
                with pytest.raises(ssl.SSLCertVerificationError):
                    _served(node_ip, ports[name], hostname(name), other_tenant.ca_pem)
    for port in (exposure.INGRESS_PORT, exposure.GATEWAY_PORT):
        for tenant in tenants.values():
            with pytest.raises((ssl.SSLError, OSError)):
                _served(node_ip, port, f"nobody.{NS}.{DOMAIN}", tenant.ca_pem)


async def test_the_controller_reports_on_the_routes_and_ingresses(setup: Setup) -> None:
    c = client(setup.cluster)
    try:
        for name in GATEWAY_TENANTS:
            route = (await c.get(TLSRoute, name, namespace=NS)).to_dict()
            (parent,) = route["status"]["parents"]
            assert parent["controllerName"] == exposure.GATEWAY_CONTROLLER
            conds = {x["type"]: x["status"] for x in parent["conditions"]}
            assert conds["Accepted"] == "True" and conds["ResolvedRefs"] == "True"
        node_ip = setup.cluster.layout.node_ip

        async def published() -> bool:
            for name in INGRESS_TENANTS:
                ing = await c.get(Ingress, name, namespace=NS)
                lb = ing.status.loadBalancer if ing.status else None
                if not lb or not [e for e in lb.ingress or [] if e.ip == node_ip]:
                    return False
            return True

        await eventually(published, 60, "the Ingresses' status to name the node IP")
    finally:
        await c.close()


@pytest.mark.parametrize("joined", JOINED)
async def test_a_worker_joins_through_the_host_name(setup: Setup, joined: str) -> None:
    tenant = setup.tenants[joined]
    port = exposure.INGRESS_PORT if joined in INGRESS_TENANTS else exposure.GATEWAY_PORT
    started = time.monotonic()
    result = await add_worker(setup.cluster, tenant)
    setup.timings[f"worker join {joined}"] = time.monotonic() - started
    assert result.worker.endpoint == f"{hostname(joined)}:{port}"
    path = setup.kubeconfigs[joined]
    nodes = kubectl(setup.cluster, "get", "nodes", "-o", "name", kubeconfig=path).stdout.split()
    assert nodes == [f"node/{result.worker.node_name}"]
    # The worker's kubelet and kube-proxy dial the tenant by its host name too.
    kubelet_conf = yaml.safe_load(workers.worker_paths(
        setup.cluster.layout, result.worker.index).kubelet_kubeconfig.read_text())
    assert kubelet_conf["clusters"][0]["cluster"]["server"] == f"https://{hostname(joined)}:{port}"
    tc = tenant.client()
    try:
        async def kube_proxy_ready() -> bool:
            pods = [p async for p in tc.list(Pod, namespace="kube-system",
                                             labels={"k8s-app": "kube-proxy"})]
            return bool(pods) and all(map(pod_ready, pods))

        await eventually(kube_proxy_ready, 120, "kube-proxy Ready on the worker")
    finally:
        await tc.close()

    def synced() -> bool:  # its informers listed Services and EndpointSlices via the name
        logs = kubectl(setup.cluster, "logs", "-n", "kube-system", "-l", "k8s-app=kube-proxy",
                       "--tail=-1", kubeconfig=path, check=False)
        return "Caches are synced" in logs.stdout

    deadline = time.monotonic() + 60
    while not synced():
        assert time.monotonic() < deadline, "kube-proxy on the worker never synced its caches"
        await asyncio.sleep(1)
    print(f"worker {result.worker.name} joined {joined} in "
          f"{setup.timings[f'worker join {joined}']:.1f}s; "
          f"kubeadm: {result.joined_line}", flush=True)
