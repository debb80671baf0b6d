"""Drivers connected to the datastores tier, and clients that act as a tenant would."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomysql
import psycopg
import pytest

from haku.datastore import Driver, Tenant, open_driver
from haku.datastore.settings import Settings
from haku.dev.cluster import DevCluster
from haku.dev.datastores import driver_settings, read_connections

DRIVERS = ("etcd", "postgres", "mariadb")


def connections(cluster: DevCluster) -> dict[str, Any]:
    return read_connections(cluster.layout)


def settings_for(cluster: DevCluster, store: str, **override: Any) -> Settings:
    return driver_settings(cluster.layout, store, **override)


@pytest.fixture(params=DRIVERS)
async def driver(request: pytest.FixtureRequest,
                 datastores_cluster: DevCluster) -> AsyncIterator[Driver]:
    d = open_driver(settings_for(datastores_cluster, request.param))
    yield d
    await d.close()


class TenantClient:
    """Acts with a tenant's own credentials: writes and reads "its" data in a given space."""

    def __init__(self, cluster: DevCluster, store: str, driver: Driver, tenant: Tenant,
                 workdir: Path) -> None:
        self.cluster, self.store, self.driver, self.tenant = cluster, store, driver, tenant
        self.workdir = workdir
        self.conn = connections(cluster)[store]

    async def write_read(self, space: str) -> str:
        """Write then read back in ``space`` (an etcd key, or a database name); 'ok' or the
        server's refusal."""
        if self.store == "etcd":
            return await self._etcd(space)
        if self.store == "postgres":
            return await self._postgres(space)
        return await self._mysql(space)

    async def etcdctl(self, *args: str) -> tuple[int, str, str]:
        """Run etcdctl with the tenant's own certificate: (exit code, stdout, stderr)."""
        import asyncio

        from haku.datastore.etcd import EtcdDriver

        assert isinstance(self.driver, EtcdDriver)
        if not (self.workdir / "tls.crt").exists():
            files = self.driver.tenant_connection(self.tenant).files
            for name, data in files.items():
                (self.workdir / name).write_bytes(data)
        etcdctl = str(self.cluster.layout.bin / "etcdctl")
        base = [etcdctl, f"--endpoints=https://{self.conn['local_endpoints'][0]}",
                f"--cacert={self.workdir / 'ca.crt'}", f"--cert={self.workdir / 'tls.crt'}",
                f"--key={self.workdir / 'tls.key'}", "--command-timeout=5s"]
        proc = await asyncio.create_subprocess_exec(
            *base, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode().strip()

    async def _etcd(self, key: str) -> str:
        rc, _, err = await self.etcdctl("put", key, "v")
        if rc != 0:
            return err
        rc, out, err = await self.etcdctl("get", key, "--print-value-only")
        return "ok" if out.strip() == "v" else err or "missing"

    async def sql(self, database: str, statements: list[str]) -> None:
        """Run ``statements`` in ``database`` as the tenant (errors propagate)."""
        host, port = self.conn["local_endpoints"][0].split(":")
        _, user = self.driver.physical_names(self.tenant)
        if self.store == "postgres":
            async with await psycopg.AsyncConnection.connect(
                    host=host, port=int(port), user=user, password=self.tenant.password,
                    dbname=database, sslmode="verify-full", sslrootcert=self.conn["ca_cert"],
                    autocommit=True, connect_timeout=5) as pg:
                for statement in statements:
                    await pg.execute(statement.encode())
            return
        ctx = ssl.create_default_context(cafile=self.conn["ca_cert"])
        my = await aiomysql.connect(host=host, port=int(port), user=user,
                                    password=self.tenant.password, db=database, ssl=ctx,
                                    autocommit=True, connect_timeout=5)
        try:
            async with my.cursor() as cur:
                for statement in statements:
                    await cur.execute(statement)
        finally:
            my.close()

    async def _postgres(self, database: str) -> str:
        _, role = self.driver.physical_names(self.tenant)
        host, port = self.conn["local_endpoints"][0].split(":")
        try:
            async with await psycopg.AsyncConnection.connect(
                    host=host, port=int(port), user=role, password=self.tenant.password,
                    dbname=database, sslmode="verify-full", sslrootcert=self.conn["ca_cert"],
                    autocommit=True, connect_timeout=5) as conn:
                await conn.execute("CREATE TABLE IF NOT EXISTS probe (v text)")
                await conn.execute("INSERT INTO probe VALUES ('v')")
                cur = await conn.execute("SELECT v FROM probe LIMIT 1")
                row = await cur.fetchone()
                return "ok" if row and row[0] == "v" else "missing"
        except psycopg.Error as e:
            return str(e).strip()

    async def _mysql(self, database: str) -> str:
        _, user = self.driver.physical_names(self.tenant)
        host, port = self.conn["local_endpoints"][0].split(":")
        ctx = ssl.create_default_context(cafile=self.conn["ca_cert"])
        try:
            conn = await aiomysql.connect(host=host, port=int(port), user=user,
                                          password=self.tenant.password, db=database, ssl=ctx,
                                          autocommit=True, connect_timeout=5)
        except Exception as e:  # the refusal is the answer
            return str(e)
        try:
            async with conn.cursor() as cur:
                await cur.execute("CREATE TABLE IF NOT EXISTS probe (v TEXT)")
                await cur.execute("INSERT INTO probe VALUES ('v')")
                await cur.execute("SELECT v FROM probe LIMIT 1")
                row = await cur.fetchone()
                return "ok" if row and row[0] == "v" else "missing"
        except Exception as e:
            return str(e)
        finally:
            conn.close()


async def fresh_tenants(driver: Driver, *tenants: Tenant) -> Driver:
    """``tenants`` provisioned from nothing (whatever an earlier run left is deleted first)."""
    for t in tenants:
        await driver.delete_tenant(t)
        await driver.ensure_tenant(t)
    return driver


def store_of(driver: Driver) -> str:
    return {"etcd": "etcd", "PostgreSQL": "postgres", "MySQL": "mariadb"}[driver.driver]
