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

from .conftest import TenantClient, fresh_tenants, settings_for, store_of

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


# ---------------------------------------------------------------- reserved names

async def server_state(driver: Driver) -> object:
    """Accounts, roles, grants and spaces of the whole server, read as the admin."""
    from haku.datastore.etcd import EtcdDriver
    from haku.datastore.mysql import MySQLDriver
    from haku.datastore.postgres import PostgresDriver

    if isinstance(driver, EtcdDriver):
        from aetcd import rpc

        users = (await driver.auth.UserList(rpc.AuthUserListRequest())).users
        roles = (await driver.auth.RoleList(rpc.AuthRoleListRequest())).roles
        return (
            {u: sorted((await driver.auth.UserGet(rpc.AuthUserGetRequest(name=u))).roles)
             for u in users},
            {r: sorted((p.key, p.range_end, p.permType) for p in
                       (await driver.auth.RoleGet(rpc.AuthRoleGetRequest(role=r))).perm)
             for r in roles})
    if isinstance(driver, PostgresDriver):
        from psycopg import sql

        return await driver._run("state", [
            (sql.SQL("SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolcanlogin, "
                     "rolvaliduntil FROM pg_roles ORDER BY 1"), ()),
            (sql.SQL("SELECT datname, datdba, datacl::text, "
                     "shobj_description(oid, 'pg_database') FROM pg_database ORDER BY 1"), ()),
        ])
    assert isinstance(driver, MySQLDriver)
    return await driver._run("state", [
        ("SELECT User, Host, authentication_string FROM mysql.user ORDER BY 1, 2", ()),
        ("SELECT Host, Db, User FROM mysql.db ORDER BY 1, 2, 3", ()),
        ("SHOW DATABASES", ()),
    ])


def reserved_cases(driver: Driver) -> list[tuple[str, str]]:
    """(schema, user) pairs that name the server's own spaces or accounts."""
    from haku.datastore.etcd import EtcdDriver
    from haku.datastore.postgres import PostgresDriver

    ok = "rsv-ok"
    if isinstance(driver, EtcdDriver):
        return [("root", ok), (ok, "root"), (ok, driver.admin_user)]
    admin = driver.settings.username  # type: ignore[attr-defined]
    if isinstance(driver, PostgresDriver):
        return [("postgres", ok), ("template0", ok), ("template1", ok), (ok, "postgres"),
                (ok, admin), (ok, "pg_monitor"), (ok, "pg_read_all_data"), (ok, "pg_anything")]
    return [("mysql", ok), ("sys", ok), ("information_schema", ok), ("performance_schema", ok),
            ("haku_meta", ok), ("MySQL", ok), ("Information_Schema", ok), (ok, admin),
            (ok, "root"), (ok, "mysql.sys"), (ok, "mariadb.sys"), (ok, "mysql.session"),
            (ok, "mysql.infoschema")]


async def test_reserved_names_are_refused_before_any_statement(driver: Driver) -> None:
    cases = reserved_cases(driver)
    before = await server_state(driver)
    for schema, user in cases:
        tenant = Tenant(schema, user, "reservedpw012345")
        for operation in (driver.ensure_tenant, driver.delete_tenant, driver.usage):
            with pytest.raises(InvalidName, match="is reserved"):
                await operation(tenant)  # type: ignore[operator]
    assert await server_state(driver) == before
    await driver.check()  # Haku's own identity still works


# ---------------------------------------------------------------- MySQL grant wildcards

async def test_mysql_grants_cover_exactly_one_database(
    datastores_cluster: DevCluster, tmp_path: Path
) -> None:
    """In GRANT, ``_`` and ``%`` are wildcards: unescaped, ``w_x`` would also reach ``wax``
    and a schema of underscores every database of that length."""
    driver = open_driver(settings_for(datastores_cluster, "mariadb"))
    names = ["w_x", "wax", "___", "w%x", "w1x"]
    tenants = {n: Tenant(n, f"wild{i}", f"wildpw{i}0123456789") for i, n in enumerate(names)}
    try:
        await fresh_tenants(driver, *tenants.values())
        databases = {n: driver.physical_names(t)[0] for n, t in tenants.items()}
        assert databases["w_x"] == "w_x" and databases["___"] == "___"
        for n, t in tenants.items():
            client = TenantClient(datastores_cluster, "mariadb", driver, t, tmp_path)
            assert await client.write_read(databases[n]) == "ok", n
            for other, db in databases.items():
                if other == n:
                    continue
                refusal = await client.write_read(db)
                assert "Access denied" in refusal, (n, other, refusal)
    finally:
        for t in tenants.values():
            await driver.delete_tenant(t)
        await driver.close()


async def test_a_mysql_password_kine_cannot_carry_is_refused_before_any_statement(
    datastores_cluster: DevCluster
) -> None:
    from haku.datastore.base import DataStoreError

    driver = open_driver(settings_for(datastores_cluster, "mariadb"))
    try:
        before = await server_state(driver)
        with pytest.raises(DataStoreError, match="kine's DSN"):
            await driver.ensure_tenant(Tenant("dsn-pw", "dsn-pw", "pass@word/x"))
        assert await server_state(driver) == before
    finally:
        await driver.close()


async def test_ensure_revokes_a_wildcard_grant_left_by_an_earlier_haku(
    datastores_cluster: DevCluster
) -> None:
    """Tenants provisioned before the escaping hold a grant on the unescaped name, which is a
    wildcard; the next ensure revokes it and keeps only the exact one."""
    from haku.datastore.mysql import MySQLDriver, quote_identifier

    driver = open_driver(settings_for(datastores_cluster, "mariadb"))
    assert isinstance(driver, MySQLDriver)
    tenant = Tenant("lg_x", "lg_x", "legacypw01234567")
    grants = "SELECT Db FROM mysql.db WHERE User = 'lg_x' ORDER BY Db"
    try:
        await driver.ensure_tenant(tenant)
        await driver._run("legacy", [(f"GRANT SELECT ON {quote_identifier('lg_x')}.* TO "
                                      "'lg_x'@'%'", ())])  # no parameters: % is literal
        (rows,) = await driver._run("grants", [(grants, ())])
        assert sorted(r[0] for r in rows) == ["lg\\_x", "lg_x"]
        await driver.ensure_tenant(tenant)
        (rows,) = await driver._run("grants", [(grants, ())])
        assert [r[0] for r in rows] == ["lg\\_x"]
    finally:
        await driver.delete_tenant(tenant)
        await driver.close()
