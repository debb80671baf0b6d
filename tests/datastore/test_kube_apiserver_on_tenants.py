"""A real kube-apiserver on each tenant's space: etcd by prefix, SQL through kine."""

from __future__ import annotations

import asyncio

from haku.datastore import Driver, Tenant
from haku.datastore.etcd import EtcdDriver
from haku.dev.cluster import DevCluster

from .apiserver import TenantAPIServer

# As the operator makes them: owned by a TenantControlPlane uid (on etcd, the certificate's CN
# is then the per-incarnation user).
A = Tenant("kapi-a", "kapi-a", "kapipwa012345678", owner="5b0c7e2a-1d4f-4a9b-8c3e-0f6a2d9b7e11")
B = Tenant("kapi-b", "kapi-b", "kapipwb012345678", owner="9e4d1a6c-3b2f-4e7a-a5d8-7c1f0b3e9a22")


async def test_namespaces_live_in_their_own_tenant(
    driver: Driver, datastores_cluster: DevCluster
) -> None:
    servers = {}
    try:
        for t in (A, B):
            await driver.delete_tenant(t)
            await driver.ensure_tenant(t)
            servers[t.schema] = TenantAPIServer(datastores_cluster.bins,
                                                driver.tenant_connection(t), t.schema)
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers.values()))
        a, b = servers["kapi-a"], servers["kapi-b"]
        made = a.kubectl("create", "namespace", "only-in-a")
        assert made.returncode == 0, made.stderr
        in_a = a.kubectl("get", "ns", "-o", "name").stdout.split()
        in_b = b.kubectl("get", "ns", "-o", "name").stdout.split()
        assert "namespace/only-in-a" in in_a
        assert "namespace/kube-system" in in_b and "namespace/only-in-a" not in in_b
        missing = b.kubectl("get", "ns", "only-in-a")
        assert missing.returncode != 0 and "NotFound" in missing.stderr
        # The data landed in A's space, as A's usage shows.
        usage_a = await driver.usage(A)
        assert usage_a.keys > 0 and usage_a.bytes > 0
        if isinstance(driver, EtcdDriver):
            assert a.connection.etcd_prefix == "/kapi-a"
            assert driver.physical_names(A)[1].startswith("kapi-a.")
    finally:
        for s in servers.values():
            s.stop()
        for t in (A, B):
            await driver.delete_tenant(t)
    assert driver.physical_names(A)[0] not in await driver.list_tenants()
