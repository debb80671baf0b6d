"""Hostile names are stored literally or under a stable derived name, never executed; a
datastore that cannot be used says why."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from haku.datastore import Driver, Tenant, open_driver
from haku.datastore.base import (
    AuthenticationFailed,
    InvalidName,
    TLSFailure,
    Unreachable,
    physical_name,
)
from haku.dev.cluster import DevCluster
from haku.render import pki

from .conftest import TenantClient, settings_for, store_of

HOSTILE = [
    'q"; DROP DATABASE postgres; --',
    "b`; DROP DATABASE mysql; --",
    "s'; DELETE FROM mysql.user; --",
    "semi;colon",
    "x" * 200,
    "MiXeD-Case",
    "slash/../../root",
]


@pytest.mark.parametrize("name", HOSTILE)
async def test_hostile_names_provision_isolate_and_delete(
    driver: Driver, datastores_cluster: DevCluster, tmp_path: Path, name: str
) -> None:
    store = store_of(driver)
    tenant = Tenant(name, name, "hostilepw0123456")
    bystander = Tenant("bystander", "bystander", "bystanderpw01234")
    await driver.ensure_tenant(bystander)
    try:
        await driver.ensure_tenant(tenant)
        schema, user = driver.physical_names(tenant)
        assert driver.physical_names(tenant) == (schema, user)  # stable
        assert schema in await driver.list_tenants()
        client = TenantClient(datastores_cluster, store, driver, tenant, tmp_path)
        space = f"/{schema}/registry/x" if store == "etcd" else schema
        assert await client.write_read(space) == "ok"
        other = "/bystander/registry/x" if store == "etcd" else "bystander"
        assert await client.write_read(other) != "ok"
        if store == "etcd" and "/" not in name and len(name) <= 64:
            assert (schema, user) == (name, name)  # etcd stores it literally
        await driver.delete_tenant(tenant)
        assert schema not in await driver.list_tenants()
        # Nothing was executed: the servers' own databases and the bystander are intact.
        assert "bystander" in await driver.list_tenants()
        await driver.check()
    finally:
        await driver.delete_tenant(tenant)
        await driver.delete_tenant(bystander)


def test_physical_names_are_literal_when_allowed_and_derived_otherwise() -> None:
    import re

    safe = re.compile(r"[a-z0-9-]+")
    assert physical_name("tenant-a", 32, safe) == "tenant-a"
    long = physical_name("a" * 40, 32, safe)
    assert len(long) <= 32 and long == physical_name("a" * 40, 32, safe)
    assert physical_name("a" * 40, 32, safe) != physical_name("a" * 41, 32, safe)
    odd = physical_name("Weird'Name", 32, safe)
    assert re.fullmatch(r"eird_ame-[0-9a-f]{10}|_eird_ame-[0-9a-f]{10}", odd) or \
        re.fullmatch(r"[a-z0-9_-]+-[0-9a-f]{10}", odd.replace("_", "-"))
    assert physical_name("Weird'Name", 32, safe) != physical_name("weird'name", 32, safe)
    with pytest.raises(InvalidName, match="control characters"):
        Tenant("bad\nname", "u")
    with pytest.raises(InvalidName, match="empty"):
        Tenant("", "u")


async def test_an_unreachable_datastore_is_named_as_such(datastores_cluster: DevCluster) -> None:
    for store in ("etcd", "postgres", "mariadb"):
        settings = settings_for(datastores_cluster, store, endpoints=("127.0.0.1:9",))
        d = open_driver(settings)
        try:
            with pytest.raises(Unreachable) as info:
                await d.check()
            assert "127.0.0.1" in str(info.value) or "connect" in str(info.value).lower()
        finally:
            await d.close()


async def test_wrong_credentials_are_named_as_such(datastores_cluster: DevCluster) -> None:
    for store in ("postgres", "mariadb"):
        d = open_driver(settings_for(datastores_cluster, store, password="wrong"))
        try:
            with pytest.raises(AuthenticationFailed):
                await d.check()
        finally:
            await d.close()
    # etcd: a valid certificate for a user that is not an administrator.
    base = settings_for(datastores_cluster, "etcd")
    assert base.ca_cert and base.ca_key
    ca = pki.KeyPair(base.ca_cert, base.ca_key)
    nobody = pki.issue(ca, "not-root", pki.Usage.CLIENT, algorithm=pki.KeyAlgorithm.ECDSA_P256)
    d = open_driver(replace(base, client_cert=nobody.cert_pem, client_key=nobody.key_pem))
    try:
        with pytest.raises(AuthenticationFailed, match="user name not found"):
            await d.check()
    finally:
        await d.close()
    # etcd: a certificate from a CA the server does not trust.
    stranger_ca = pki.new_ca("stranger", pki.KeyAlgorithm.ECDSA_P256)
    forged = pki.issue(stranger_ca, "root", pki.Usage.CLIENT,
                       algorithm=pki.KeyAlgorithm.ECDSA_P256)
    d = open_driver(replace(base, client_cert=forged.cert_pem, client_key=forged.key_pem))
    try:
        with pytest.raises((TLSFailure, Unreachable)):
            await d.check()
    finally:
        await d.close()
