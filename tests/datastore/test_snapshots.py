"""Snapshots of one tenant's keyspace, and loading them into another space, on every driver.

A real kube-apiserver writes the source tenant (through kine for SQL); its snapshot is loaded
into a new tenant on every driver, where another real kube-apiserver must serve the same
objects, their resourceVersions in the same order.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator

import pytest

from haku.datastore import Driver, Entry, SpaceNotEmpty, Tenant, kine_table, open_driver
from haku.datastore.etcd import EtcdDriver
from haku.datastore.etcd import rpc as etcd_rpc
from haku.dev.cluster import DevCluster

from .apiserver import TenantAPIServer
from .conftest import DRIVERS, settings_for

OWNER = "0d3c8e7a-5b1f-4c2d-9e6a-7f8b9c0d1e2f"
CONFIGMAPS = 60


def source_tenant(store: str) -> Tenant:
    return Tenant(f"snap-src-{store}", f"snap-src-{store}", "snappw0123456789", owner=OWNER)


def target_tenant(src: str, dst: str) -> Tenant:
    owner = f"0d3c8e7a-5b1f-4c2d-9e6a-{src[:3]}{dst[:3]}000000"
    return Tenant(f"snap-{src[:3]}-{dst[:3]}", f"snap-{src[:3]}-{dst[:3]}",
                  "snappw0123456789", owner=owner)


def configmaps(n: int) -> str:
    items = [{"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": f"cm-{i:03d}", "namespace": "moved"},
              "data": {"i": str(i), "blob": "x" * (i * 17 % 900)}} for i in range(n)]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def objects(server: TenantAPIServer) -> dict[str, tuple[int, dict[str, str]]]:
    """The ConfigMaps of namespace ``moved``: name -> (resourceVersion, data)."""
    got = server.kubectl("get", "configmaps", "-n", "moved", "-o", "json")
    assert got.returncode == 0, got.stderr
    return {i["metadata"]["name"]: (int(i["metadata"]["resourceVersion"]), i.get("data") or {})
            for i in json.loads(got.stdout)["items"] if i["metadata"]["name"].startswith("cm-")}


def apply(server: TenantAPIServer, document: str) -> None:
    import subprocess

    done = subprocess.run([str(server.bins["kubernetes"] / "kubectl"),
                           f"--kubeconfig={server.kubeconfig}", "apply", "-f", "-"],
                          input=document, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr


EVENT = json.dumps({
    "apiVersion": "v1", "kind": "Event", "metadata": {"name": "moved-event", "namespace": "moved"},
    "involvedObject": {"kind": "ConfigMap", "name": "cm-000", "namespace": "moved"},
    "reason": "Testing", "message": "an Event: kube-apiserver stores it with a lease",
    "type": "Normal"})


class Source:
    def __init__(self, store: str, driver: Driver, tenant: Tenant,
                 seen: dict[str, tuple[int, dict[str, str]]]) -> None:
        self.store, self.driver, self.tenant, self.seen = store, driver, tenant, seen


@pytest.fixture(scope="module")
def sources(datastores_cluster: DevCluster) -> Iterator[dict[str, Source]]:
    """One tenant per driver, written by a real kube-apiserver (then stopped): CONFIGMAPS
    ConfigMaps, some updated after others (so revision order is not name order), one
    deleted, and an Event."""

    async def make(store: str) -> Source:
        driver = open_driver(settings_for(datastores_cluster, store))
        tenant = source_tenant(store)
        await driver.delete_tenant(tenant)
        await driver.ensure_tenant(tenant)
        server = TenantAPIServer(datastores_cluster.bins, driver.tenant_connection(tenant),
                                 f"src-{store}")
        await asyncio.to_thread(server.start)
        try:
            assert server.kubectl("create", "namespace", "moved").returncode == 0
            await asyncio.to_thread(apply, server, configmaps(CONFIGMAPS))
            for name in ("cm-007", "cm-003", "cm-007"):
                done = server.kubectl("label", "configmap", "-n", "moved", name,
                                      f"touched={len(name)}", "--overwrite")
                assert done.returncode == 0, done.stderr
                patched = server.kubectl("patch", "configmap", "-n", "moved", name, "--type",
                                         "merge", "-p", json.dumps({"data": {"late": name}}))
                assert patched.returncode == 0, patched.stderr
            assert server.kubectl("delete", "configmap", "-n", "moved",
                                  "cm-011").returncode == 0
            await asyncio.to_thread(apply, server, EVENT)
            seen = objects(server)
        finally:
            server.stop()
        return Source(store, driver, tenant, seen)

    async def make_all() -> dict[str, Source]:
        return {s: await make(s) for s in DRIVERS}

    loop = asyncio.new_event_loop()
    made = loop.run_until_complete(make_all())
    yield made

    async def cleanup() -> None:
        for s in made.values():
            await s.driver.delete_tenant(s.tenant)
            await s.driver.close()

    loop.run_until_complete(cleanup())
    loop.close()


async def collect(entries: AsyncIterator[Entry]) -> list[Entry]:
    return [e async for e in entries]


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(DRIVERS, DRIVERS)))
async def test_a_snapshot_loaded_elsewhere_serves_the_same_objects_in_the_same_order(
        src: str, dst: str, sources: dict[str, Source], datastores_cluster: DevCluster
) -> None:
    # The module's sources were written on another event loop: use fresh drivers here.
    source = open_driver(settings_for(datastores_cluster, src))
    target = open_driver(settings_for(datastores_cluster, dst))
    tenant = target_tenant(src, dst)
    seen = sources[src].seen
    assert len(seen) == CONFIGMAPS - 1 and seen["cm-007"][1]["late"] == "cm-007"
    server = None
    try:
        await target.delete_tenant(tenant)
        await target.ensure_tenant(tenant)
        entries = await collect(source.snapshot(sources[src].tenant))
        revisions = [e.revision for e in entries]
        assert revisions == sorted(revisions), "a snapshot comes in revision order"
        assert len(set(e.key for e in entries)) == len(entries)
        assert any(e.key.startswith(b"/events/moved/") and e.ttl > 0 for e in entries), \
            "the Event keeps a lease"
        assert all(not e.key.startswith(b"/events/") or e.ttl > 0 for e in entries)

        async def replay() -> AsyncIterator[Entry]:
            for e in entries:
                yield e

        assert await target.load(tenant, replay()) == len(entries)
        server = TenantAPIServer(datastores_cluster.bins, target.tenant_connection(tenant),
                                 f"{src[:3]}-{dst[:3]}")
        await asyncio.to_thread(server.start)
        restored = objects(server)
        assert {k: v[1] for k, v in restored.items()} == {k: v[1] for k, v in seen.items()}
        order = sorted(seen, key=lambda k: seen[k][0])
        moved = [restored[k][0] for k in order]
        if dst == "etcd":
            # New revisions from the target etcd, in the same order (keys loaded by one Txn
            # share one).
            assert moved == sorted(moved)
        else:
            # kine's table keeps the revisions themselves.
            assert moved == [seen[k][0] for k in order]
        # The restored tenant goes on: a new write is newer than everything restored.
        made = server.kubectl("create", "configmap", "-n", "moved", "after-restore",
                              "--from-literal=a=b")
        assert made.returncode == 0, made.stderr
        after = server.kubectl("get", "configmap", "-n", "moved", "after-restore", "-o",
                               "jsonpath={.metadata.resourceVersion}")
        assert int(after.stdout) > max(moved)
        events = server.kubectl("get", "events", "-n", "moved", "-o", "name")
        assert "event/moved-event" in events.stdout.split()
    finally:
        if server is not None:
            server.stop()
        await target.delete_tenant(tenant)
        await source.close()
        await target.close()


def space(store: str, name: str) -> Tenant:
    owner = f"1f2e3d4c-0000-4000-8000-{store[:3]}0000000"
    return Tenant(name, name, "snappw0123456789", owner=owner)


def seed(n: int) -> list[Entry]:
    return [Entry(f"/configmaps/big/k-{i:05d}".encode(), f"v{i}".encode() * 3, 100 + 2 * i)
            for i in range(n)]


async def feed(entries: list[Entry]) -> AsyncIterator[Entry]:
    for e in entries:
        yield e


async def write_behind(driver: Driver, tenant: Tenant, key: bytes, value: bytes | None) -> None:
    """A write by "the tenant's API server" while a snapshot is being read (None deletes)."""
    if isinstance(driver, EtcdDriver):
        schema, _ = driver.physical_names(tenant)
        full = f"/{schema}".encode() + key
        if value is None:
            await driver.kv.DeleteRange(etcd_rpc.DeleteRangeRequest(key=full))
        else:
            await driver.kv.Put(etcd_rpc.PutRequest(key=full, value=value))
        return
    name = (kine_table.ROOT + key).decode()
    conn = await driver._as_tenant(tenant, "writing behind")  # type: ignore[attr-defined]
    statement = ("INSERT INTO kine (id, name, created, deleted, create_revision, prev_revision, "
                 "lease, value, old_value) SELECT MAX(id) + 1, %s, 0, %s, 0, "
                 "COALESCE(MAX(CASE WHEN name = %s THEN id END), 0), 0, %s, NULL FROM kine")
    params = (name, 1 if value is None else 0, name, value or b"")
    if driver.driver == "PostgreSQL":
        async with conn:
            await conn.set_autocommit(True)
            await conn.execute(statement, params)
    else:
        try:
            async with conn.cursor() as cur:  # aiomysql takes no bytes: ASCII values as text
                await cur.execute(statement, (*params[:3], (value or b"").decode()))
        finally:
            conn.close()


@pytest.mark.parametrize("store", DRIVERS)
async def test_a_snapshot_is_one_moment_across_pages_while_writes_go_on(
        store: str, datastores_cluster: DevCluster) -> None:
    driver = open_driver(settings_for(datastores_cluster, store))
    tenant = space(store, f"snap-pages-{store}")
    want = seed(2 * kine_table.PAGE + 500)
    try:
        await driver.delete_tenant(tenant)
        await driver.ensure_tenant(tenant)
        assert await collect(driver.snapshot(tenant)) == [], "never written: empty"
        assert await driver.load(tenant, feed(want)) == len(want)
        got: list[Entry] = []
        async for e in driver.snapshot(tenant):
            got.append(e)
            if len(got) == 10:  # the first page is read: the rest is written meanwhile
                await write_behind(driver, tenant, want[-1].key, b"changed")
                await write_behind(driver, tenant, want[-2].key, None)
                await write_behind(driver, tenant, b"/configmaps/big/new", b"new")
        assert [(e.key, e.value) for e in got] == [(e.key, e.value) for e in want]
        if store != "etcd":
            assert [e.revision for e in got] == [e.revision for e in want]
        now = {e.key: e.value for e in await collect(driver.snapshot(tenant))}
        assert now[want[-1].key] == b"changed" and want[-2].key not in now
        assert now[b"/configmaps/big/new"] == b"new" and len(now) == len(want)
        with pytest.raises(SpaceNotEmpty):
            await driver.load(tenant, feed(seed(1)))
        await driver.clear(tenant)
        assert await collect(driver.snapshot(tenant)) == []
        assert await driver.load(tenant, feed(want[:5])) == 5, "cleared: loads again"
    finally:
        await driver.delete_tenant(tenant)
        await driver.close()


@pytest.mark.parametrize("store", DRIVERS)
async def test_a_load_keeps_each_key_s_time_to_live(store: str,
                                                    datastores_cluster: DevCluster) -> None:
    driver = open_driver(settings_for(datastores_cluster, store))
    tenant = space(store, f"snap-ttl-{store}")
    try:
        await driver.delete_tenant(tenant)
        await driver.ensure_tenant(tenant)
        entries = [Entry(b"/events/a/x", b"e", 10, ttl=3600), Entry(b"/events/a/y", b"e", 11,
                                                                     ttl=120),
                   Entry(b"/pods/a/p", b"p", 12)]
        await driver.load(tenant, feed(entries))
        got = {e.key: e.ttl for e in await collect(driver.snapshot(tenant))}
        assert 3500 < got[b"/events/a/x"] <= 3600 and 60 < got[b"/events/a/y"] <= 120
        assert got[b"/pods/a/p"] == 0
    finally:
        await driver.delete_tenant(tenant)
        await driver.close()



@pytest.mark.parametrize("store", DRIVERS)
async def test_large_objects_go_both_ways(store: str, datastores_cluster: DevCluster) -> None:
    """Pages and loads are bounded by bytes too: values near etcd's request limit (Helm
    release Secrets, large CRDs) are read and written, not refused by gRPC or etcd."""
    driver = open_driver(settings_for(datastores_cluster, store))
    a, b = space(store, f"snap-big-a-{store}"), space(store, f"snap-big-b-{store}")
    want = [Entry(f"/secrets/big/s-{i:03d}".encode(), bytes([i % 251]) * 900_000, 10 + i)
            for i in range(10)]
    want += [Entry(f"/configmaps/big/c-{i:03d}".encode(), b"c" * 20_000, 100 + i)
             for i in range(200)]
    try:
        for t in (a, b):
            await driver.delete_tenant(t)
            await driver.ensure_tenant(t)
        assert await driver.load(a, feed(want)) == len(want)
        got = await collect(driver.snapshot(a))
        # (etcd: keys loaded by one Txn share a revision, ordered by key within it)
        assert {e.key: e.value for e in got} == {e.key: e.value for e in want}
        assert len(got) == len(want)
        assert await driver.load(b, feed(got)) == len(want)
        again = await collect(driver.snapshot(b))
        assert {e.key: e.value for e in again} == {e.key: e.value for e in want}
    finally:
        for t in (a, b):
            await driver.delete_tenant(t)
        await driver.close()
