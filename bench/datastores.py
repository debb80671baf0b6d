"""Benchmark of the datastore drivers on the real servers; prints one JSON document.

Per driver: provision N tenants (default 200) and delete them again, at a given concurrency,
and the cost of one tenant's usage query with 100 keys/rows of 1 KiB in its space.
Run as root: ``make bench`` or ``.venv/bin/python bench/datastores.py [--tenants N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from aetcd import rpc

from haku.datastore import Driver, Tenant, open_driver
from haku.datastore.etcd import EtcdDriver
from haku.datastore.mysql import MySQLDriver
from haku.datastore.postgres import PostgresDriver
from haku.dev.cluster import DevCluster
from haku.dev.datastores import driver_settings
from haku.dev.layout import Layout

ROWS, ROW_BYTES, SAMPLED = 100, 1024, 20


async def fill(driver: Driver, tenant: Tenant) -> None:
    """Put ROWS entries of ROW_BYTES in the tenant's space, as kine or kube-apiserver would."""
    schema, _ = driver.physical_names(tenant)
    value = b"x" * ROW_BYTES
    if isinstance(driver, EtcdDriver):
        for i in range(ROWS):
            await driver.kv.Put(rpc.PutRequest(key=f"/{schema}/registry/k{i}".encode(),
                                               value=value))
        return
    if isinstance(driver, PostgresDriver):
        async with await psycopg.AsyncConnection.connect(
                dbname=schema, autocommit=True, **driver.conninfo) as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS kine (id serial, value bytea)")
            async with conn.cursor() as cur:
                await cur.executemany("INSERT INTO kine (value) VALUES (%s)",
                                      [(value,)] * ROWS)
        return
    assert isinstance(driver, MySQLDriver)
    await driver._run("fill", [
        (f"CREATE TABLE IF NOT EXISTS `{schema}`.kine (id INT AUTO_INCREMENT PRIMARY KEY, "
         "value TEXT)", ()),
        # Text, not bytes: aiomysql 0.3 cannot escape bytes with PyMySQL 1.2.
        *[(f"INSERT INTO `{schema}`.kine (value) VALUES (%s)", (value.decode(),))  # noqa: S608
          for _ in range(ROWS)],
    ])


async def measure(driver: Driver, tenants: int, concurrency: int) -> dict[str, Any]:
    batch = [Tenant(f"bench-{i:04d}", f"bench-{i:04d}", f"benchpw{i:04d}abcdef")
             for i in range(tenants)]
    limit = asyncio.Semaphore(concurrency)

    async def each(fn: Any, t: Tenant) -> None:
        async with limit:
            await fn(t)

    for t in batch:  # a clean start
        await driver.delete_tenant(t)
    started = time.perf_counter()
    await asyncio.gather(*(each(driver.ensure_tenant, t) for t in batch))
    provision_s = time.perf_counter() - started
    started = time.perf_counter()
    await asyncio.gather(*(each(driver.ensure_tenant, t) for t in batch))
    reensure_s = time.perf_counter() - started

    usage_ms = []
    for t in batch[:SAMPLED]:
        await fill(driver, t)
        t0 = time.perf_counter()
        usage = await driver.usage(t)
        usage_ms.append((time.perf_counter() - t0) * 1000)
        assert usage.keys == ROWS, (t, usage)

    started = time.perf_counter()
    await asyncio.gather(*(each(driver.delete_tenant, t) for t in batch))
    delete_s = time.perf_counter() - started
    left = [s for s in await driver.list_tenants() if s.startswith("bench-")]
    return {
        "tenants": tenants,
        "concurrency": concurrency,
        "provision_s": round(provision_s, 2),
        "provision_per_s": round(tenants / provision_s, 1),
        "re_ensure_per_s": round(tenants / reensure_s, 1),
        "delete_s": round(delete_s, 2),
        "delete_per_s": round(tenants / delete_s, 1),
        "usage_ms": {"p50": round(statistics.median(usage_ms), 1),
                     "max": round(max(usage_ms), 1),
                     "space": f"{ROWS} entries of {ROW_BYTES} B"},
        "left_after_delete": len(left),
    }


async def run(cluster: DevCluster, tenants: int, concurrency: int) -> dict[str, Any]:
    results = {}
    for store in ("etcd", "postgres", "mariadb"):
        driver = open_driver(driver_settings(cluster.layout, store))
        try:
            results[store] = {"server": await driver.check(),
                              **await measure(driver, tenants, concurrency)}
        finally:
            await driver.close()
        print(f"{store}: done", file=sys.stderr, flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--state-dir", default="/var/lib/haku/bench-datastores")
    args = parser.parse_args()
    cluster = DevCluster(Layout.datastores_only(Path(args.state_dir)),
                         printer=lambda line: print(line, file=sys.stderr, flush=True))
    cluster.down(purge=True)
    cluster.up()
    try:
        results = asyncio.run(run(cluster, args.tenants, args.concurrency))
    finally:
        cluster.down(purge=True)
    print(json.dumps({"benchmark": "datastores", "cpus": os.cpu_count(),
                      "drivers": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
