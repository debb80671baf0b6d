"""A TenantControlPlane author picks ``dataStoreSchema`` and ``dataStoreUsername`` freely, so on
a shared server they could name an account, role or database someone else made. ``ensure``
refuses to take such an object over (before changing anything), and ``delete`` leaves it
alone. Each test makes the foreign objects as the administrator, with data and a password,
and proves afterwards that they are exactly as they were and still work."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiomysql
import psycopg
import pytest
from psycopg import sql

from haku.datastore import Tenant, open_driver
from haku.datastore.base import NotOwned
from haku.datastore.etcd import EtcdDriver, prefix_of, range_end
from haku.datastore.mysql import META, MySQLDriver
from haku.datastore.postgres import MARKER, PostgresDriver
from haku.dev.cluster import DevCluster

from .conftest import connections, settings_for

NOT_OWNED = "already exists on the server and was not created by Haku"


def cases(foreign_schema: str, foreign_user: str, fresh: str) -> list[Tenant]:
    """The foreign space with a fresh user, a fresh space with the foreign user, and both."""
    pw = "ownerpw0123456789"
    return [Tenant(foreign_schema, fresh, pw), Tenant(fresh, foreign_user, pw),
            Tenant(foreign_schema, foreign_user, pw)]


# ---------------------------------------------------------------- PostgreSQL

PG_DB, PG_ROLE, PG_FRESH = "own-pg-db", "own-pg-role", "own-pg-fresh"
PG_PASSWORD = "foreignpw0123456789"


@pytest.fixture
async def pg(datastores_cluster: DevCluster) -> AsyncIterator[PostgresDriver]:
    driver = open_driver(settings_for(datastores_cluster, "postgres"))
    assert isinstance(driver, PostgresDriver)

    async def cleanup() -> None:
        await driver._run("cleaning up", [
            *((sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(d)), ())
              for d in (PG_DB, PG_FRESH)),
            *((sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(r)), ())
              for r in (PG_ROLE, PG_FRESH)),
        ])

    try:
        await cleanup()
        yield driver
    finally:
        await cleanup()
        await driver.close()


async def pg_as(cluster: DevCluster, role: str, password: str, db: str,
                statements: list[str]) -> list[Any]:
    """Log in as ``role`` and run ``statements`` in ``db``; rows of the last one."""
    conn_info = connections(cluster)["postgres"]
    host, port = conn_info["local_endpoints"][0].split(":")
    async with await psycopg.AsyncConnection.connect(
            host=host, port=int(port), user=role, password=password, dbname=db,
            sslmode="verify-full", sslrootcert=conn_info["ca_cert"], autocommit=True,
            connect_timeout=5) as conn:
        rows: list[Any] = []
        for statement in statements:
            cur = await conn.execute(statement.encode())
            rows = await cur.fetchall() if cur.description else []
        return rows


async def pg_state(driver: PostgresDriver, names: tuple[str, ...]
                   ) -> list[list[tuple[Any, ...]]]:
    """Roles (with their password hashes and comments) and databases (owner, ACL, comment)
    under ``names``, read as the administrator."""
    return await driver._run("state", [
        (sql.SQL("SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolcanlogin, "
                 "rolpassword, shobj_description(oid, 'pg_authid') FROM pg_authid "
                 "WHERE rolname = ANY(%s) ORDER BY 1"), (list(names),)),
        (sql.SQL("SELECT datname, pg_get_userbyid(datdba), datacl::text, "
                 "shobj_description(oid, 'pg_database') FROM pg_database "
                 "WHERE datname = ANY(%s) ORDER BY 1"), (list(names),)),
    ])


async def test_postgres_refuses_foreign_roles_and_databases(
    pg: PostgresDriver, datastores_cluster: DevCluster
) -> None:
    await pg._run("foreign objects", [
        (sql.SQL("CREATE ROLE {} WITH LOGIN PASSWORD {}").format(
            sql.Identifier(PG_ROLE), sql.Literal(PG_PASSWORD)), ()),
        (sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(PG_DB),
                                                       sql.Identifier(PG_ROLE)), ()),
    ])
    await pg_as(datastores_cluster, PG_ROLE, PG_PASSWORD, PG_DB, [
        "CREATE TABLE precious (v text)", "INSERT INTO precious VALUES ('treasure')"])
    names = (PG_DB, PG_ROLE, PG_FRESH)
    before = await pg_state(pg, names)
    assert before[1][0][1] == PG_ROLE  # the database's owner

    async def untouched() -> None:
        assert await pg_state(pg, names) == before  # nothing new, nothing changed
        assert await pg_as(datastores_cluster, PG_ROLE, PG_PASSWORD, PG_DB,
                           ["SELECT v FROM precious"]) == [("treasure",)]

    for tenant in cases(PG_DB, PG_ROLE, PG_FRESH):
        with pytest.raises(NotOwned, match=NOT_OWNED) as info:
            await pg.ensure_tenant(tenant)
        assert info.value.reason == "NotOwned"
        assert "spec.dataStoreSchema/dataStoreUsername" in str(info.value)
        await untouched()
        await pg.delete_tenant(tenant)
        await untouched()
    assert PG_DB not in await pg.list_tenants()


async def test_postgres_markers_and_the_legacy_rule(pg: PostgresDriver) -> None:
    """Haku's role carries the marker; a tenant made before roles were marked (its role
    unmarked, owning the tenant's marked database) is still Haku's: ensure marks it, and a
    delete removes it. A database merely owned by the tenant's *unmarked* role is not."""
    tenant = Tenant(PG_FRESH, PG_FRESH, "ownerpw0123456789")
    comment = sql.SQL("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles "
                      "WHERE rolname = %s")
    await pg.ensure_tenant(tenant)
    assert await pg._run("marker", [(comment, (PG_FRESH,))]) == [[(MARKER,)]]
    unmark = (sql.SQL("COMMENT ON ROLE {} IS NULL").format(sql.Identifier(PG_FRESH)), ())
    await pg._run("legacy", [unmark])
    await pg.ensure_tenant(tenant)  # legacy: accepted, and marked
    assert await pg._run("marker", [(comment, (PG_FRESH,))]) == [[(MARKER,)]]
    await pg._run("legacy", [unmark])
    await pg.delete_tenant(tenant)
    assert await pg_state(pg, (PG_FRESH,)) == [[], []]
    # An unmarked role owning an unmarked database of the tenant's name: someone else's.
    await pg._run("foreign", [
        (sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(PG_FRESH)), ()),
        (sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(PG_FRESH),
                                                       sql.Identifier(PG_FRESH)), ())])
    before = await pg_state(pg, (PG_FRESH,))
    with pytest.raises(NotOwned, match="PostgreSQL role"):
        await pg.ensure_tenant(tenant)
    await pg.delete_tenant(tenant)
    assert await pg_state(pg, (PG_FRESH,)) == before


# ---------------------------------------------------------------- MariaDB

MY_DB, MY_USER, MY_FRESH = "own-my-db", "own-my-user", "own-my-fresh"
MY_PASSWORD = "foreignpw0123456789"


@pytest.fixture
async def my(datastores_cluster: DevCluster) -> AsyncIterator[MySQLDriver]:
    driver = open_driver(settings_for(datastores_cluster, "mariadb"))
    assert isinstance(driver, MySQLDriver)

    async def cleanup() -> None:
        await driver._ensure_meta()
        await driver._run("cleaning up", [
            *((f"DROP DATABASE IF EXISTS `{d}`", ()) for d in (MY_DB, MY_FRESH)),
            *(("DROP USER IF EXISTS %s@'%%'", (u,)) for u in (MY_USER, MY_FRESH)),
            (f"DELETE FROM {META}.tenants WHERE db IN (%s, %s) OR user IN (%s, %s)",  # noqa: S608
             (MY_DB, MY_FRESH, MY_USER, MY_FRESH)),
        ])

    try:
        await cleanup()
        yield driver
    finally:
        await cleanup()
        await driver.close()


async def my_as(cluster: DevCluster, user: str, password: str, db: str,
                statements: list[str]) -> list[Any]:
    conn_info = connections(cluster)["mariadb"]
    host, port = conn_info["local_endpoints"][0].split(":")
    conn = await aiomysql.connect(
        host=host, port=int(port), user=user, password=password, db=db,
        ssl=ssl.create_default_context(cafile=conn_info["ca_cert"]), autocommit=True,
        connect_timeout=5)
    try:
        rows: list[Any] = []
        async with conn.cursor() as cur:
            for statement in statements:
                await cur.execute(statement)
                rows = list(await cur.fetchall())
        return rows
    finally:
        conn.close()


async def my_state(driver: MySQLDriver) -> list[Any]:
    """Accounts (with password hashes), their grants, databases and bookkeeping rows under
    the test's names."""
    users = (MY_USER, MY_FRESH)
    dbs = (MY_DB, MY_FRESH)
    state = await driver._run("state", [
        ("SELECT User, Host, authentication_string FROM mysql.user "
         "WHERE User IN (%s, %s) ORDER BY 1, 2", users),
        ("SELECT Host, Db, User FROM mysql.db WHERE User IN (%s, %s) ORDER BY 1, 2, 3", users),
        ("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
         "WHERE SCHEMA_NAME IN (%s, %s) ORDER BY 1", dbs),
        (f"SELECT * FROM {META}.tenants WHERE db IN (%s, %s) OR user IN (%s, %s)",  # noqa: S608
         (*dbs, *users)),
    ])
    grants: list[Any] = []
    if any(row[0] == MY_USER for row in state[0]):
        (grants,) = await driver._run("grants", [("SHOW GRANTS FOR %s@'%%'", (MY_USER,))])
    return [*state, sorted(grants)]


async def test_mariadb_refuses_foreign_users_and_databases(
    my: MySQLDriver, datastores_cluster: DevCluster
) -> None:
    await my._run("foreign objects", [
        ("CREATE USER %s@'%%' IDENTIFIED BY %s", (MY_USER, MY_PASSWORD)),
        (f"CREATE DATABASE `{MY_DB}`", ()),
        (f"GRANT ALL PRIVILEGES ON `{MY_DB}`.* TO %s@'%%'", (MY_USER,)),
    ])
    await my_as(datastores_cluster, MY_USER, MY_PASSWORD, MY_DB, [
        "CREATE TABLE precious (v TEXT)", "INSERT INTO precious VALUES ('treasure')"])
    before = await my_state(my)
    assert before[0] and before[2] and not before[3]

    async def untouched() -> None:
        assert await my_state(my) == before
        assert await my_as(datastores_cluster, MY_USER, MY_PASSWORD, MY_DB,
                           ["SELECT v FROM precious"]) == [("treasure",)]

    for tenant in cases(MY_DB, MY_USER, MY_FRESH):
        with pytest.raises(NotOwned, match=NOT_OWNED) as info:
            await my.ensure_tenant(tenant)
        assert info.value.reason == "NotOwned"
        await untouched()
        await my.delete_tenant(tenant)
        await untouched()
    assert MY_DB not in await my.list_tenants()


async def test_mariadb_records_its_intent_before_creating(my: MySQLDriver) -> None:
    """A tenant cut right after its bookkeeping row (before CREATE USER) is resumed; a
    database or user Haku made is never unrecorded."""
    tenant = Tenant(MY_FRESH, MY_FRESH, "ownerpw0123456789")
    await my._run("intent only", [(
        f"INSERT INTO {META}.tenants VALUES (%s, %s, %s, %s)",  # noqa: S608
        (MY_FRESH, MY_FRESH, MY_FRESH, MY_FRESH))])
    await my.ensure_tenant(tenant)
    assert MY_FRESH in await my.list_tenants()
    await my.delete_tenant(tenant)
    state = await my_state(my)
    assert state[:4] == [[], [], [], []]


# ---------------------------------------------------------------- etcd

ETCD_ROLE, ETCD_USER, ETCD_FRESH = "own-etcd-role", "own-etcd-user", "own-etcd-fresh"
ETCD_EXTRA = "own-etcd-extra"  # a role held by the foreign user
ETCD_DATA = "own-etcd-data"  # keys under /own-etcd-data/ with no role of that name


@pytest.fixture
async def etcd(datastores_cluster: DevCluster) -> AsyncIterator[EtcdDriver]:
    from aetcd import rpc

    driver = open_driver(settings_for(datastores_cluster, "etcd"))
    assert isinstance(driver, EtcdDriver)

    async def cleanup() -> None:
        for role in (ETCD_ROLE, ETCD_EXTRA, ETCD_FRESH, ETCD_DATA):
            await driver._call("cleanup", driver.auth.RoleDelete,
                               rpc.AuthRoleDeleteRequest(role=role),
                               tolerate=("role name not found",))
        for user in (ETCD_USER, ETCD_FRESH):
            await driver._call("cleanup", driver.auth.UserDelete,
                               rpc.AuthUserDeleteRequest(name=user),
                               tolerate=("user name not found",))
        for schema in (ETCD_ROLE, ETCD_FRESH, ETCD_DATA, "elsewhere"):
            prefix = prefix_of(schema)
            await driver.kv.DeleteRange(rpc.DeleteRangeRequest(key=prefix,
                                                               range_end=range_end(prefix)))

    try:
        await cleanup()
        yield driver
    finally:
        await cleanup()
        await driver.close()


async def etcd_state(driver: EtcdDriver) -> object:
    from aetcd import rpc

    users = (await driver.auth.UserList(rpc.AuthUserListRequest())).users
    roles = (await driver.auth.RoleList(rpc.AuthRoleListRequest())).roles
    keys = {}
    for schema in (ETCD_ROLE, ETCD_FRESH, ETCD_DATA, "elsewhere"):
        prefix = prefix_of(schema)
        got = await driver.kv.Range(rpc.RangeRequest(key=prefix, range_end=range_end(prefix)))
        keys[schema] = sorted((kv.key, kv.value) for kv in got.kvs)
    return (
        {u: sorted((await driver.auth.UserGet(rpc.AuthUserGetRequest(name=u))).roles)
         for u in users if u in (ETCD_USER, ETCD_FRESH)},
        {r: sorted((p.key, p.range_end, p.permType) for p in
                   (await driver.auth.RoleGet(rpc.AuthRoleGetRequest(role=r))).perm)
         for r in roles if r in (ETCD_ROLE, ETCD_EXTRA, ETCD_FRESH, ETCD_DATA)},
        keys)


async def test_etcd_refuses_foreign_roles_users_and_data(etcd: EtcdDriver) -> None:
    from aetcd import rpc

    def readwrite(schema: str) -> rpc.Permission:
        prefix = prefix_of(schema)
        return rpc.Permission(permType=rpc.Permission.READWRITE, key=prefix,
                              range_end=range_end(prefix))

    a = etcd.auth
    # A role named like a schema, with its own prefix and one more; a user holding an extra
    # role; data under a prefix that has no role of its name.
    await a.RoleAdd(rpc.AuthRoleAddRequest(name=ETCD_ROLE))
    for perm in (readwrite(ETCD_ROLE), readwrite("elsewhere")):
        await a.RoleGrantPermission(rpc.AuthRoleGrantPermissionRequest(name=ETCD_ROLE,
                                                                       perm=perm))
    await a.RoleAdd(rpc.AuthRoleAddRequest(name=ETCD_EXTRA))
    await a.RoleGrantPermission(rpc.AuthRoleGrantPermissionRequest(
        name=ETCD_EXTRA, perm=readwrite("elsewhere")))
    await a.UserAdd(rpc.AuthUserAddRequest(name=ETCD_USER,
                                           options=rpc.UserAddOptions(no_password=True)))
    await a.UserGrantRole(rpc.AuthUserGrantRoleRequest(user=ETCD_USER, role=ETCD_EXTRA))
    for key in (f"/{ETCD_ROLE}/precious", "/elsewhere/precious", f"/{ETCD_DATA}/precious"):
        await etcd.kv.Put(rpc.PutRequest(key=key.encode(), value=b"treasure"))
    before = await etcd_state(etcd)

    tenants = [*cases(ETCD_ROLE, ETCD_USER, ETCD_FRESH),
               Tenant(ETCD_DATA, ETCD_FRESH)]
    for tenant in tenants:
        with pytest.raises(NotOwned, match=NOT_OWNED) as info:
            await etcd.ensure_tenant(tenant)
        assert info.value.reason == "NotOwned"
        assert await etcd_state(etcd) == before
        await etcd.delete_tenant(tenant)
        assert await etcd_state(etcd) == before
    assert ETCD_ROLE not in await etcd.list_tenants()

    # The fresh names alone are free: provisioned, then deleted without touching the rest.
    fresh = Tenant(ETCD_FRESH, ETCD_FRESH)
    await etcd.ensure_tenant(fresh)
    assert ETCD_FRESH in await etcd.list_tenants()
    await etcd.delete_tenant(fresh)
    assert await etcd_state(etcd) == before
