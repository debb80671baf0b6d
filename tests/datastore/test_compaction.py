"""The operator's compaction of an etcd DataStore, on the real etcd: kube-apiserver's rounds,
run as the administrator, and what a tenant may do with the record."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aetcd import rpc

from haku.datastore import Tenant, open_driver
from haku.datastore.etcd import COMPACT_REV_KEY, CompactRound, EtcdDriver
from haku.dev.cluster import DevCluster

from .conftest import TenantClient, fresh_tenants, settings_for

T = Tenant("compact-t", "compact-t", "pa55c0123456789")
SCRATCH = b"haku-test/compaction/x"  # outside every tenant's prefix: the administrator's


@pytest.fixture
async def etcd(datastores_cluster: DevCluster) -> AsyncIterator[EtcdDriver]:
    d = open_driver(settings_for(datastores_cluster, "etcd"))
    assert isinstance(d, EtcdDriver)
    yield d
    await d.kv.DeleteRange(rpc.DeleteRangeRequest(key=SCRATCH))
    await d.close()


async def record(etcd: EtcdDriver) -> tuple[int, bytes]:
    kvs = (await etcd.kv.Range(rpc.RangeRequest(key=COMPACT_REV_KEY))).kvs
    return (kvs[0].version, kvs[0].value) if kvs else (0, b"")


async def put(etcd: EtcdDriver, value: bytes) -> int:
    return int((await etcd.kv.Put(rpc.PutRequest(key=SCRATCH, value=value))).header.revision)


async def test_a_round_compacts_to_what_the_round_before_saw(etcd: EtcdDriver) -> None:
    old = await put(etcd, b"1")
    await put(etcd, b"2")  # revision `old` of the key is history now
    first = await etcd.compact_round(CompactRound())  # takes the turn, or learns it
    assert (await record(etcd))[0] == first.version
    done = await etcd.compact_round(first)
    assert done.compacted == first.revision > old, (first, done)
    # The record says how far, for every tenant API server watching it ...
    version, value = await record(etcd)
    assert (version, int(value)) == (done.version, done.compacted)
    # ... and etcd did compact: the old revision of the key is gone, the latest is there.
    with pytest.raises(grpc.aio.AioRpcError, match="compacted"):
        await etcd.kv.Range(rpc.RangeRequest(key=SCRATCH, revision=old))
    now = await etcd.kv.Range(rpc.RangeRequest(key=SCRATCH))
    assert now.kvs[0].value == b"2"


async def test_a_compactor_behind_another_takes_no_turn_and_learns_the_version(
        etcd: EtcdDriver) -> None:
    ours = await etcd.compact_round(CompactRound())
    ours = await etcd.compact_round(ours)  # this one holds the turn now
    version, value = await record(etcd)
    target = await put(etcd, b"3")
    stale = await etcd.compact_round(CompactRound(version=version - 1, revision=target))
    assert stale == CompactRound(version=version, revision=stale.revision, compacted=0)
    assert await record(etcd) == (version, value)  # unchanged: no write, no compaction
    # Compacting again to a revision already compacted is no error.
    behind = await etcd.compact_round(CompactRound(version=version, revision=1))
    assert behind.compacted == 1 and behind.version == version + 1


async def test_a_tenant_reads_the_record_and_may_neither_write_it_nor_compact(
        etcd: EtcdDriver, datastores_cluster: DevCluster, tmp_path: Path) -> None:
    await fresh_tenants(etcd, T)
    try:
        await etcd.compact_round(CompactRound())
        _, value = await record(etcd)
        me = TenantClient(datastores_cluster, "etcd", etcd, T, tmp_path)
        rc, out, err = await me.etcdctl("get", "compact_rev_key", "--print-value-only")
        assert rc == 0 and out.strip() == value.decode(), (out, err)
        assert "permission denied" in await me.write_read("compact_rev_key")
        rc, _, err = await me.etcdctl("del", "compact_rev_key")
        assert rc != 0 and "permission denied" in err
        rc, _, err = await me.etcdctl("compaction", "1")
        assert rc != 0 and "permission denied" in err
    finally:
        await etcd.delete_tenant(T)


async def test_a_role_that_could_write_the_record_is_cut_back_to_reading(
        etcd: EtcdDriver, datastores_cluster: DevCluster, tmp_path: Path) -> None:
    """The Haku before the operator compacted granted tenants readwrite on the record."""
    await fresh_tenants(etcd, T)
    try:
        schema, _ = etcd.physical_names(T)
        await etcd.auth.RoleGrantPermission(rpc.AuthRoleGrantPermissionRequest(
            name=schema, perm=rpc.Permission(permType=rpc.Permission.READWRITE,
                                             key=COMPACT_REV_KEY)))
        me = TenantClient(datastores_cluster, "etcd", etcd, T, tmp_path)
        assert await me.write_read("compact_rev_key") == "ok"  # what it could do
        assert not await etcd.verify_tenant(T)
        assert await etcd.list_tenants() and schema in await etcd.list_tenants()
        await etcd.ensure_tenant(T)
        assert await etcd.verify_tenant(T)
        assert "permission denied" in await me.write_read("compact_rev_key")
        rc, _, err = await me.etcdctl("get", "compact_rev_key")
        assert rc == 0, err
    finally:
        await etcd.delete_tenant(T)
