"""usage() is exact: an empty tenant reads 0 keys (etcd) or rows (SQL: no kine table yet), N
entries written to A raise A by exactly N and leave B as it was (for PostgreSQL B's row count;
its byte size is file-level and moves with the server's own housekeeping)."""

from __future__ import annotations

from pathlib import Path

import pytest

from haku.datastore import Driver, Tenant, Usage
from haku.datastore.etcd import EtcdDriver
from haku.datastore.postgres import PostgresDriver
from haku.dev.cluster import DevCluster

from .conftest import TenantClient, fresh_tenants, store_of

A = Tenant("use-a", "use-a", "usepwa0123456789")
B = Tenant("use-b", "use-b", "usepwb0123456789")
N = 7


@pytest.fixture
async def two_tenants(driver: Driver) -> Driver:
    return await fresh_tenants(driver, A, B)


async def test_usage_counts_exactly_what_a_tenant_wrote(
    two_tenants: Driver, datastores_cluster: DevCluster, tmp_path: Path
) -> None:
    driver = two_tenants
    try:
        empty_a, empty_b = await driver.usage(A), await driver.usage(B)
        # No kine table yet (SQL) or no key (etcd): zero rows/keys.
        assert empty_a.keys == 0 and empty_b.keys == 0
        if isinstance(driver, EtcdDriver):
            assert empty_a == Usage(bytes=0, keys=0)
            client = TenantClient(datastores_cluster, "etcd", driver, A, tmp_path)
            written = 0
            for i in range(N):
                key, value = f"/use-a/registry/k{i}", "v" * (i + 1)
                rc, _, err = await client.etcdctl("put", key, value)
                assert rc == 0, err
                written += len(key) + len(value)
            after = await driver.usage(A)
            assert after == Usage(bytes=written, keys=N)
        else:
            # The table kine would create, written with the tenant's own credentials.
            client = TenantClient(datastores_cluster, store_of(driver), driver, A, tmp_path)
            own_a, _ = driver.physical_names(A)
            await client.sql(own_a, ["CREATE TABLE kine (id INTEGER PRIMARY KEY, v TEXT)"])
            assert (await driver.usage(A)).keys == 0  # the table alone adds no row
            await client.sql(own_a, [f"INSERT INTO kine VALUES ({i}, 'v{i}')"  # noqa: S608
                                     for i in range(N)])
            after = await driver.usage(A)
            assert after.keys == N
            assert after.bytes >= empty_a.bytes
        after_b = await driver.usage(B)
        assert after_b.keys == empty_b.keys == 0
        if isinstance(driver, PostgresDriver):
            # pg_database_size counts files, which the server's own catalog housekeeping grows
            # in a fresh database: rows are exact, bytes are not compared.
            assert after_b.bytes > 0
        else:
            assert after_b == empty_b
    finally:
        for t in (A, B):
            await driver.delete_tenant(t)
