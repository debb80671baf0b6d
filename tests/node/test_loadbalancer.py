"""A LoadBalancer tenant with a real implementation (issue 17): MetalLB in L2 mode in the dev
cluster (``haku dev loadbalancer``). Without an address pool the tenant waits
(``WaitingForLoadBalancer``); once the pool exists MetalLB assigns an address from it, the
tenant's endpoint and kubeconfigs use it, kubectl reaches the tenant through it, and a dev
worker joins the tenant through it."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Node, Service

from haku.api.resources import TenantControlPlane
from haku.dev import loadbalancer, samples, toolchain
from haku.dev import worker as workers
from haku.dev.cluster import DevCluster
from haku.dev.versions import KUBERNETES_VERSION, Versions

from .helpers import add_worker, client, eventually, kubectl, wait_tenant_ready

NS = "loadbalancers"
TENANT = "lb"


@pytest.fixture(scope="module")
async def metallb(running_operator: DevCluster) -> AsyncIterator[DevCluster]:
    """MetalLB installed (without its pool) for this module, removed after it."""
    cluster = running_operator
    await asyncio.to_thread(loadbalancer.ensure, cluster.layout,
                            lambda line: print(line, flush=True), with_pool=False)
    yield cluster
    directory = toolchain.components(Versions.from_env())["metallb"].directory(
        toolchain.cache_root())
    await asyncio.to_thread(loadbalancer.delete, cluster.layout, directory)


async def test_a_load_balancer_tenant_gets_its_address_from_metallb_and_a_worker_joins(
        metallb: DevCluster, tmp_path: Path) -> None:
    cluster = metallb
    c = client(cluster)
    doc = samples.tenant_control_plane(TENANT, NS, "dev-etcd", KUBERNETES_VERSION,
                                       service_type="LoadBalancer", addons=True)
    await c.apply(from_dict(doc), force=True)
    worker = None
    try:
        async def waiting() -> bool:
            got = (await c.get(TenantControlPlane, TENANT, namespace=NS)).to_dict()
            found = [x for x in (got.get("status") or {}).get("conditions") or []
                     if x["type"] == "ControlPlaneAvailable"]
            return bool(found and found[0]["reason"] == "WaitingForLoadBalancer")

        await eventually(waiting, 60, "WaitingForLoadBalancer (no pool yet)")

        await asyncio.to_thread(loadbalancer.apply_pool, cluster.layout)
        tenant = await wait_tenant_ready(c, NS, TENANT, timeout=180)
        svc = await c.get(Service, TENANT, namespace=NS)
        ingress = svc.status.loadBalancer.ingress if svc.status and svc.status.loadBalancer \
            else None
        assert ingress and ingress[0].ip, svc.status
        address = ingress[0].ip
        assert ipaddress.ip_address(address) in ipaddress.ip_network(loadbalancer.POOL)
        status = (await c.get(TenantControlPlane, TENANT, namespace=NS)).to_dict()["status"]
        assert status["controlPlaneEndpoint"] == f"{address}:6443"
        assert tenant.kubeconfig["clusters"][0]["cluster"]["server"] == \
            f"https://{address}:6443"
        # MetalLB's speaker announces it: its record of the announcement names the Service.
        async def announced() -> bool:
            got = kubectl(cluster, "-n", loadbalancer.NAMESPACE, "get", "servicel2statuses",
                          "-o", "yaml", check=False).stdout
            return f"name: {TENANT}" in got and f"namespace: {NS}" in got

        await eventually(announced, 60, "a ServiceL2Status of the tenant's Service")

        config = tmp_path / "tenant.kubeconfig"
        config.write_text(yaml.safe_dump(tenant.kubeconfig))
        assert "namespace/default" in kubectl(cluster, "get", "ns", "-o", "name",
                                              kubeconfig=config).stdout.split()

        # A dev worker joins through the address (its default route leads to the admin node).
        worker = await add_worker(cluster, tenant)
        assert worker.worker.endpoint == f"{address}:6443"
        node = await tenant.client().get(Node, worker.worker.node_name)
        assert any(cond.type == "Ready" and cond.status == "True"
                   for cond in node.status.conditions or [])
    finally:
        if worker is not None:
            await asyncio.to_thread(workers.remove, cluster.layout, worker.worker.name)
        await c.delete(TenantControlPlane, TENANT, namespace=NS)
