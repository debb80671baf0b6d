"""Two tenants on each shared datastore: each reaches its own space and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from aetcd import rpc

from haku.datastore import Driver, Tenant
from haku.datastore.etcd import COMPACT_REV_KEY, CompactRound, EtcdDriver
from haku.dev.cluster import DevCluster

from .conftest import TenantClient, fresh_tenants, store_of

A = Tenant("iso-a", "iso-a", "pa55a0123456789")
B = Tenant("iso-b", "iso-b", "pa55b0123456789")


@pytest.fixture
async def two_tenants(driver: Driver) -> Driver:
    return await fresh_tenants(driver, A, B)


async def test_each_tenant_reaches_only_its_own_space(
    two_tenants: Driver, datastores_cluster: DevCluster, tmp_path: Path
) -> None:
    driver = two_tenants
    store = store_of(driver)
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    as_a = TenantClient(datastores_cluster, store, driver, A, a_dir)
    as_b = TenantClient(datastores_cluster, store, driver, B, b_dir)
    try:
        if store == "etcd":
            assert await as_a.write_read("/iso-a/registry/x") == "ok"
            assert await as_b.write_read("/iso-b/registry/x") == "ok"
            # The other's prefix, and prefix tricks around one's own.
            for key in ("/iso-b/registry/x", "/iso-a0", "/iso-aa/x", "/iso-", "/", "/iso-a"):
                assert "permission denied" in await as_a.write_read(key), key
            assert "permission denied" in await as_b.write_read("/iso-a/registry/x")
            # Reads: B's key exists (written above); A asks for it every way it can, and the
            # other way round. Each read is refused and never returns the other's key.
            for me, other in ((as_a, "iso-b"), (as_b, "iso-a")):
                theirs = f"/{other}/registry/x"
                for args in (["get", theirs], ["get", "--prefix", f"/{other}/"],
                             ["get", "--prefix", "/iso-"], ["get", "--prefix", "/"],
                             ["get", "", "--from-key"], ["get", "/", "\xff"],
                             ["get", "--prefix", f"/{other}/", "--count-only"],
                             ["get", "--prefix", f"/{other}/", "--keys-only"]):
                    rc, out, err = await me.etcdctl(*args)
                    assert rc != 0 and "permission denied" in err, (me.tenant.schema, args,
                                                                     out, err)
                    assert theirs not in out, (me.tenant.schema, args, out)
            # Each still reads its own key, so the refusals above are about the other's.
            for me, own in ((as_a, "/iso-a/registry/x"), (as_b, "/iso-b/registry/x")):
                rc, out, _ = await me.etcdctl("get", "--prefix", own.rsplit("/", 1)[0] + "/")
                assert rc == 0 and own in out
            # The compaction record (kube-apiserver's compact_rev_key: a revision number,
            # written by the operator's compaction): each tenant reads exactly that key, may
            # not write it (a write would stall or fake everyone's compaction) and may not
            # compact (etcd allows that to its administrator only).
            assert isinstance(driver, EtcdDriver)
            await driver.compact_round(CompactRound())  # the key exists (written or not now)
            written = (await driver.kv.Range(rpc.RangeRequest(key=COMPACT_REV_KEY))).kvs[0]
            for me in (as_a, as_b):
                rc, out, err = await me.etcdctl("get", "compact_rev_key", "--print-value-only")
                assert rc == 0 and out.strip() == written.value.decode(), (out, err)
                assert "permission denied" in await me.write_read("compact_rev_key")
                rc, _, err = await me.etcdctl("compaction", "1")
                assert rc != 0 and "permission denied" in err, err
                for key in ("compact_rev_key2", "compact_rev_ke", "compact"):
                    assert "permission denied" in await me.write_read(key), key
                rc, _, err = await me.etcdctl("get", "--prefix", "compact")
                assert rc != 0 and "permission denied" in err
        else:
            own_a, _ = driver.physical_names(A)
            own_b, _ = driver.physical_names(B)
            assert await as_a.write_read(own_a) == "ok"
            assert await as_b.write_read(own_b) == "ok"
            for other in (own_b, "postgres" if store == "postgres" else "mysql", "haku_meta"):
                refusal = await as_a.write_read(other)
                assert refusal != "ok", other
                if other == own_b:
                    assert ("CONNECT privilege" in refusal or "Access denied" in refusal), refusal
            refusal = await as_b.write_read(own_a)
            assert "CONNECT privilege" in refusal or "Access denied" in refusal, refusal
    finally:
        for t in (A, B):
            await driver.delete_tenant(t)


async def test_a_tenant_password_is_its_own(
    two_tenants: Driver, datastores_cluster: DevCluster, tmp_path: Path
) -> None:
    driver = two_tenants
    store = store_of(driver)
    if store == "etcd":
        pytest.skip("etcd tenants authenticate by certificate; see test_etcd_identity")
    own_a, _ = driver.physical_names(A)
    impostor = Tenant(A.schema, A.user, B.password)
    refusal = await TenantClient(datastores_cluster, store, driver, impostor,
                                 tmp_path).write_read(own_a)
    assert "password authentication failed" in refusal or "Access denied" in refusal
    for t in (A, B):
        await driver.delete_tenant(t)
