"""Ownership recorded in the datastore, keyed by the owning TenantControlPlane's uid.

Two TenantControlPlanes may name the same ``dataStoreSchema`` or ``dataStoreUsername``; only the
first one recorded holds it, the other is refused (``SchemaInUse``/``UserInUse``) and its
delete touches nothing of the holder's. etcd users are per incarnation, so a certificate of a
deleted tenant reaches nothing of a later tenant with the same user name. Every scenario runs
on the real servers, for each driver."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiomysql
import psycopg
import pytest
from psycopg import sql

from haku.datastore import Driver, Tenant, open_driver
from haku.datastore.base import InUse, NotOwned, SchemaInUse, UserInUse
from haku.datastore.etcd import EtcdDriver, owner_key, prefix_of, range_end
from haku.datastore.mysql import META, MySQLDriver, grant_pattern
from haku.datastore.postgres import PostgresDriver, owner_mark
from haku.dev.cluster import DevCluster

from .conftest import TenantClient, connections, settings_for, store_of

# TenantControlPlane uids (metadata.uid is a UUID).
OW = "0f9a2c1e-7b7d-4c55-9a51-5e2b8d6f0a01"  # the holder
OL = "6d1e9b3a-2f0c-4e8a-b7d4-91c3a5e7f102"  # the latecomer
ON = "c2b7e4f1-95d3-4a6b-8e0f-3d7a1b9c5e03"  # a later tenant on the same names
PW = {OW: "holderpw0123456789", OL: "latepw0123456789ab", ON: "newpw0123456789abcd"}

S, S2 = "inc-space", "inc-space2"
UW, UL, UN = "inc-uw", "inc-ul", "inc-un"
ALL_SCHEMAS = (S, S2)
ALL_USERS = (UW, UL, UN)
ALL_OWNERS = (OW, OL, ON)


def tenant(schema: str, user: str, owner: str | None, password: str = PW[OW]) -> Tenant:
    return Tenant(schema, user, password, owner=owner)


# ---------------------------------------------------------------- admin views

async def scrub(driver: Driver) -> None:
    """Remove, as the administrator, everything under the test's names (and their owner
    records), whoever made it."""
    if isinstance(driver, EtcdDriver):
        from aetcd import rpc

        users = {driver.legacy_user(Tenant(S, u)) for u in ALL_USERS}
        users |= {driver.physical_names(tenant(S, u, o))[1] for u in ALL_USERS
                  for o in ALL_OWNERS}
        for user in users:
            await driver._call("scrub", driver.auth.UserDelete,
                               rpc.AuthUserDeleteRequest(name=user),
                               tolerate=("user name not found",))
        for schema in ALL_SCHEMAS:
            prefix = prefix_of(schema)
            await driver.kv.DeleteRange(rpc.DeleteRangeRequest(key=prefix,
                                                               range_end=range_end(prefix)))
            await driver._call("scrub", driver.auth.RoleDelete,
                               rpc.AuthRoleDeleteRequest(role=schema),
                               tolerate=("role name not found",))
        for kind, names in (("schema", ALL_SCHEMAS), ("user", ALL_USERS)):
            for name in names:
                await driver.kv.DeleteRange(rpc.DeleteRangeRequest(key=owner_key(kind, name)))
        return
    if isinstance(driver, PostgresDriver):
        await driver._run("scrub", [
            *((sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(d)), ())
              for d in ALL_SCHEMAS),
            *((sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(r)), ())
              for r in ALL_USERS),
        ])
        return
    assert isinstance(driver, MySQLDriver)
    await driver._ensure_meta()
    await driver._run("scrub", [
        *((f"DROP DATABASE IF EXISTS `{d}`", ()) for d in ALL_SCHEMAS),
        *(("DROP USER IF EXISTS %s@'%%'", (u,)) for u in ALL_USERS),
        (f"DELETE FROM {META}.owners WHERE name IN (%s, %s, %s, %s, %s)",  # noqa: S608
         (*ALL_SCHEMAS, *ALL_USERS)),
        (f"DELETE FROM {META}.tenants WHERE db IN (%s, %s)",  # noqa: S608
         ALL_SCHEMAS),
    ])


async def snapshot(driver: Driver) -> Any:
    """Everything the server holds under the test's names, read as the administrator:
    accounts (with password hashes), grants, spaces (with their data), owner records."""
    if isinstance(driver, EtcdDriver):
        from aetcd import rpc

        users = set((await driver.auth.UserList(rpc.AuthUserListRequest())).users)
        roles = set((await driver.auth.RoleList(rpc.AuthRoleListRequest())).roles)
        ours = {u for u in users if u.startswith("inc-")}
        keys = {}
        for schema in ALL_SCHEMAS:
            prefix = prefix_of(schema)
            got = await driver.kv.Range(rpc.RangeRequest(key=prefix,
                                                          range_end=range_end(prefix)))
            keys[schema] = sorted((kv.key, kv.value) for kv in got.kvs)
        records = await driver.kv.Range(rpc.RangeRequest(
            key=b"haku.dev/owner/", range_end=range_end(b"haku.dev/owner/")))
        return (
            {u: sorted((await driver.auth.UserGet(rpc.AuthUserGetRequest(name=u))).roles)
             for u in sorted(ours)},
            {r: sorted((p.key, p.range_end, p.permType) for p in
                       (await driver.auth.RoleGet(rpc.AuthRoleGetRequest(role=r))).perm)
             for r in sorted(roles & set(ALL_SCHEMAS))},
            keys,
            sorted((kv.key, kv.value) for kv in records.kvs if b"/inc-" in kv.key))
    if isinstance(driver, PostgresDriver):
        return await driver._run("snapshot", [
            (sql.SQL("SELECT rolname, rolcanlogin, rolpassword, "
                     "shobj_description(oid, 'pg_authid') FROM pg_authid "
                     "WHERE rolname = ANY(%s) ORDER BY 1"), (list(ALL_USERS),)),
            (sql.SQL("SELECT datname, pg_get_userbyid(datdba), datacl::text, "
                     "shobj_description(oid, 'pg_database') FROM pg_database "
                     "WHERE datname = ANY(%s) ORDER BY 1"), (list(ALL_SCHEMAS),)),
        ])
    assert isinstance(driver, MySQLDriver)
    users = ", ".join(["%s"] * len(ALL_USERS))
    schemas = ", ".join(["%s"] * len(ALL_SCHEMAS))
    state = await driver._run("snapshot", [
        (f"SELECT User, Host, authentication_string FROM mysql.user "  # noqa: S608
         f"WHERE User IN ({users}) ORDER BY 1, 2", ALL_USERS),
        (f"SELECT Host, Db, User, Select_priv, Insert_priv FROM mysql.db "  # noqa: S608
         f"WHERE User IN ({users}) ORDER BY 1, 2, 3", ALL_USERS),
        (f"SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "  # noqa: S608
         f"WHERE SCHEMA_NAME IN ({schemas}) ORDER BY 1", ALL_SCHEMAS),
        (f"SELECT kind, name, owner FROM {META}.owners "  # noqa: S608
         f"WHERE name IN ({users}, {schemas}) ORDER BY 1, 2", (*ALL_USERS, *ALL_SCHEMAS)),
        (f"SELECT db, user FROM {META}.tenants WHERE db IN ({schemas}) "  # noqa: S608
         "ORDER BY 1", ALL_SCHEMAS),
    ])
    tables = []
    for (db,) in state[2]:
        (found,) = await driver._run("tables", [(
            "SELECT TABLE_NAME FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = %s ORDER BY 1", (db,))])
        tables.append((db, [r[0] for r in found]))
    return [*state, tables]


def accounts(driver: Driver, state: Any) -> set[str]:
    """The account (etcd user, PostgreSQL role, MariaDB user) names in a :func:`snapshot`."""
    if isinstance(driver, EtcdDriver):
        return set(state[0])
    return {row[0] for row in state[0]}


EMPTY: dict[str, Any] = {
    "etcd": ({}, {}, {S: [], S2: []}, []),
    "PostgreSQL": [[], []],
    "MySQL": [[], [], [], [], [], []],
}


@pytest.fixture
async def ds(driver: Driver) -> AsyncIterator[Driver]:
    await scrub(driver)
    try:
        yield driver
    finally:
        await scrub(driver)


async def second(cluster: DevCluster, driver: Driver) -> Driver:
    """Another driver (its own connection) on the same DataStore: another operator process."""
    return open_driver(settings_for(cluster, store_of(driver)))


# ---------------------------------------------------------------- tenants' own credentials

async def sql_login(cluster: DevCluster, store: str, user: str, password: str,
                    database: str | None, statements: list[str]) -> list[Any]:
    """Log in as a tenant's SQL account and run ``statements``; rows of the last one.
    Raises the server's refusal."""
    conn_info = connections(cluster)[store]
    host, port = conn_info["local_endpoints"][0].split(":")
    rows: list[Any] = []
    if store == "postgres":
        async with await psycopg.AsyncConnection.connect(
                host=host, port=int(port), user=user, password=password,
                dbname=database or "postgres", sslmode="verify-full",
                sslrootcert=conn_info["ca_cert"], autocommit=True, connect_timeout=5) as pg:
            for statement in statements:
                cur = await pg.execute(statement.encode())
                rows = await cur.fetchall() if cur.description else []
        return rows
    my = await aiomysql.connect(host=host, port=int(port), user=user, password=password,
                                db=database, autocommit=True, connect_timeout=5,
                                ssl=ssl.create_default_context(cafile=conn_info["ca_cert"]))
    try:
        async with my.cursor() as cur:
            for statement in statements:
                await cur.execute(statement)
                rows = list(await cur.fetchall())
        return rows
    finally:
        my.close()


async def write_data(cluster: DevCluster, driver: Driver, t: Tenant, workdir: Path) -> None:
    """As the tenant itself: a key (etcd) or a table with a row (SQL) in its space."""
    store = store_of(driver)
    schema, user = driver.physical_names(t)
    workdir.mkdir(parents=True, exist_ok=True)
    if store == "etcd":
        client = TenantClient(cluster, store, driver, t, workdir)
        assert await client.write_read(f"/{schema}/registry/precious") == "ok"
        return
    assert t.password
    await sql_login(cluster, store, user, t.password, schema, [
        "CREATE TABLE precious (v VARCHAR(20))", "INSERT INTO precious VALUES ('treasure')"])


async def reads_data(cluster: DevCluster, driver: Driver, t: Tenant) -> bool:
    schema, user = driver.physical_names(t)
    assert t.password
    rows = await sql_login(cluster, store_of(driver), user, t.password, schema,
                           ["SELECT v FROM precious"])
    return rows == [("treasure",)]


async def sql_refused(cluster: DevCluster, store: str, user: str, password: str,
                      database: str | None) -> str:
    """The server's refusal of a login as ``user`` (fails the test if it is accepted)."""
    try:
        await sql_login(cluster, store, user, password, database, ["SELECT 1"])
    except (psycopg.Error, aiomysql.Error) as e:
        return str(e)
    raise AssertionError(f"{user!r} still logs in to {database!r}")


def refused(err: str) -> bool:
    """etcdctl's refusal of a certificate whose user is gone or lacks the permission."""
    return any(m in err for m in ("permission denied", "user name not found",
                                  "authentication failed", "invalid auth token"))


# ---------------------------------------------------------------- the stolen delete (point 1)

async def test_a_refused_tenant_deletes_nothing_of_the_holder(
    ds: Driver, datastores_cluster: DevCluster, tmp_path: Path
) -> None:
    """W holds schema S with user uW. L (another TenantControlPlane) asks for S with user uL
    and is refused; L's cleanup deletes Tenant(S, uL): W's user, space, grants and data stay.
    W's own delete then removes all of it, and W's old credentials open nothing, not even
    the space when a later tenant takes S."""
    driver, cluster, store = ds, datastores_cluster, store_of(ds)
    w = tenant(S, UW, OW, PW[OW])
    late = tenant(S, UL, OL, PW[OL])
    await driver.ensure_tenant(w)
    await write_data(cluster, driver, w, tmp_path / "w")
    before = await snapshot(driver)
    assert before != EMPTY[driver.driver]

    with pytest.raises(SchemaInUse) as info:
        await driver.ensure_tenant(late)
    assert info.value.holder == OW and info.value.reason == "SchemaInUse"
    assert OW in str(info.value) and "spec.dataStoreSchema" in str(info.value)
    assert await snapshot(driver) == before  # refused before any change
    await driver.delete_tenant(late)
    assert await snapshot(driver) == before  # nothing of W's touched
    assert await driver.holder(w) == (OW, OW)
    assert await driver.verify_tenant(w)
    if store == "etcd":
        client = TenantClient(cluster, store, driver, w, tmp_path / "w")
        rc, out, err = await client.etcdctl("get", f"/{S}/registry/precious",
                                            "--print-value-only")
        assert (rc, out.strip()) == (0, "v"), err
    else:
        assert await reads_data(cluster, driver, w)

    await driver.delete_tenant(w)
    assert await snapshot(driver) == EMPTY[driver.driver]
    assert await driver.holder(w) == (None, None)
    # A later tenant takes S: W's old credentials reach neither it nor anything else.
    later = tenant(S, UN, ON, PW[ON])
    await driver.ensure_tenant(later)
    await write_data(cluster, driver, later, tmp_path / "n")
    _, w_user = driver.physical_names(w)
    if store == "etcd":
        client = TenantClient(cluster, store, driver, w, tmp_path / "w")  # W's certificate
        for args in (["get", f"/{S}/registry/precious"], ["get", "--prefix", f"/{S}/"],
                     ["put", f"/{S}/registry/x", "v"], ["get", "", "--from-key"]):
            rc, out, err = await client.etcdctl(*args)
            assert rc != 0 and refused(err), (args, out, err)
            assert "precious" not in out
    else:
        for database in (S, None):
            refusal = await sql_refused(cluster, store, w_user, PW[OW], database)
            assert "password authentication failed" in refusal or "Access denied" in refusal
        assert await reads_data(cluster, driver, later)
    await driver.delete_tenant(later)
    assert await snapshot(driver) == EMPTY[driver.driver]


async def test_a_refused_user_deletes_nothing_of_the_holder(
    ds: Driver, datastores_cluster: DevCluster, tmp_path: Path
) -> None:
    """The same with the user: L names W's user with another schema, is refused with
    UserInUse, and its delete leaves W as it was."""
    driver = ds
    w = tenant(S, UW, OW, PW[OW])
    late = tenant(S2, UW, OL, PW[OL])
    await driver.ensure_tenant(w)
    await write_data(datastores_cluster, driver, w, tmp_path)
    before = await snapshot(driver)
    with pytest.raises(UserInUse) as info:
        await driver.ensure_tenant(late)
    assert info.value.holder == OW and info.value.reason == "UserInUse"
    assert "spec.dataStoreUsername" in str(info.value)
    assert await snapshot(driver) == before
    await driver.delete_tenant(late)
    assert await snapshot(driver) == before
    assert await driver.verify_tenant(w)
    await driver.delete_tenant(w)
    assert await snapshot(driver) == EMPTY[driver.driver]


# ---------------------------------------------------------------- first writer wins

@pytest.mark.parametrize("contested", ["schema", "user"])
async def test_concurrent_ensures_of_one_name_one_wins(
    ds: Driver, datastores_cluster: DevCluster, contested: str
) -> None:
    """Two operator processes (two drivers, two connections) ensure tenants of different
    owners naming the same schema (or user) at the same time: exactly one succeeds, the other
    is refused with the winner's uid and recorded nothing."""
    driver = ds
    other = await second(datastores_cluster, driver)
    try:
        for round_ in range(4):
            if contested == "schema":
                a, b = tenant(S, UW, OW, PW[OW]), tenant(S, UL, OL, PW[OL])
            else:
                a, b = tenant(S, UW, OW, PW[OW]), tenant(S2, UW, OL, PW[OL])
            pair = [(driver, a), (other, b)]
            if round_ % 2:
                pair.reverse()
            results = await asyncio.gather(*(d.ensure_tenant(t) for d, t in pair),
                                           return_exceptions=True)
            won = [t for (_, t), r in zip(pair, results, strict=True) if r is None]
            lost = [(t, r) for (_, t), r in zip(pair, results, strict=True) if r is not None]
            assert len(won) == 1 and len(lost) == 1, results
            winner, (loser, error) = won[0], lost[0]
            expected = SchemaInUse if contested == "schema" else UserInUse
            assert isinstance(error, expected), repr(error)
            assert error.holder == winner.owner
            assert await driver.verify_tenant(winner)
            assert not await driver.verify_tenant(loser)
            # The loser holds nothing: not the other name either, and no account.
            schema_holder, user_holder = await driver.holder(loser)
            if contested == "schema":
                assert (schema_holder, user_holder) == (winner.owner, None)
            else:
                assert (schema_holder, user_holder) == (None, winner.owner)
            before = await snapshot(driver)
            loser_user = driver.physical_names(loser)[1]
            if loser_user != driver.physical_names(winner)[1]:
                assert loser_user not in accounts(driver, before)
            await driver.delete_tenant(loser)
            assert await snapshot(driver) == before
            assert await driver.verify_tenant(winner)
            await driver.delete_tenant(winner)
            assert await snapshot(driver) == EMPTY[driver.driver], round_
    finally:
        await other.close()


# ---------------------------------------------------------------- per-incarnation etcd users

async def test_an_old_etcd_certificate_reaches_nothing_of_a_new_tenant(
    ds: Driver, datastores_cluster: DevCluster, tmp_path: Path
) -> None:
    """Certificates live 365 days and cannot be revoked. A tenant's certificate names its
    per-incarnation etcd user, deleted with it: after the tenant is gone and another tenant
    (another owner) uses the same schema and user names, the old certificate is refused on
    the new tenant's keys and everywhere else, and the new one works."""
    driver, cluster = ds, datastores_cluster
    if not isinstance(driver, EtcdDriver):
        pytest.skip("SQL tenants log in with a password, set anew by each tenant")
    from haku.render import pki

    old, new = tenant(S, UW, OW), tenant(S, UW, ON)
    assert driver.physical_names(old)[0] == driver.physical_names(new)[0] == S
    old_user, new_user = driver.physical_names(old)[1], driver.physical_names(new)[1]
    assert old_user != new_user and old_user.startswith(f"{UW}.") and len(old_user) <= 64

    await driver.ensure_tenant(old)
    old_client = TenantClient(cluster, "etcd", driver, old, tmp_path / "old")
    (tmp_path / "old").mkdir()
    assert await old_client.write_read(f"/{S}/registry/old") == "ok"
    assert pki.common_name(pki.KeyPair((tmp_path / "old" / "tls.crt").read_bytes(),
                                       (tmp_path / "old" / "tls.key").read_bytes())) == old_user
    await driver.delete_tenant(old)

    await driver.ensure_tenant(new)
    (tmp_path / "new").mkdir()
    new_client = TenantClient(cluster, "etcd", driver, new, tmp_path / "new")
    assert await new_client.write_read(f"/{S}/registry/new") == "ok"
    for args in (["get", f"/{S}/registry/new"], ["get", "--prefix", f"/{S}/"],
                 ["put", f"/{S}/registry/new", "stolen"], ["del", f"/{S}/registry/new"],
                 ["get", "", "--from-key"], ["get", "--prefix", "haku.dev/"]):
        rc, out, err = await old_client.etcdctl(*args)
        assert rc != 0 and refused(err), (args, out, err)
        assert "registry/new" not in out
    rc, out, err = await new_client.etcdctl("get", f"/{S}/registry/new", "--print-value-only")
    assert (rc, out.strip()) == (0, "v"), err
    # The tenant's own certificate cannot read the owner records either (no leading '/').
    rc, out, err = await new_client.etcdctl("get", "--prefix", "haku.dev/")
    assert rc != 0 and "permission denied" in err, (out, err)
    await driver.delete_tenant(new)
    assert await snapshot(driver) == EMPTY["etcd"]


async def test_without_owners_the_old_certificate_would_read_the_new_tenant(
    ds: Driver, datastores_cluster: DevCluster, tmp_path: Path
) -> None:
    """The bug the per-incarnation users fix, shown with tenants without owner (Haku before
    owners): the same user name, so the old certificate reads the new tenant's keys. Proves
    the refusals above come from the user names, not from a broken client."""
    driver, cluster = ds, datastores_cluster
    if not isinstance(driver, EtcdDriver):
        pytest.skip("etcd only")
    old = new = Tenant(S, UW)
    await driver.ensure_tenant(old)
    (tmp_path / "old").mkdir()
    old_client = TenantClient(cluster, "etcd", driver, old, tmp_path / "old")
    assert await old_client.write_read(f"/{S}/registry/old") == "ok"
    await driver.delete_tenant(old)
    await driver.ensure_tenant(new)
    from aetcd import rpc

    await driver.kv.Put(rpc.PutRequest(key=f"/{S}/registry/new".encode(), value=b"secret"))
    rc, out, err = await old_client.etcdctl("get", f"/{S}/registry/new", "--print-value-only")
    assert (rc, out.strip()) == (0, "secret"), err
    await driver.delete_tenant(new)


# ---------------------------------------------------------------- legacy tenants

async def test_a_legacy_tenant_is_adopted_by_the_first_owner(
    ds: Driver, datastores_cluster: DevCluster, tmp_path: Path
) -> None:
    """A tenant made before owners were recorded (owner=None) is adopted, data and all, by
    the first ensure with an owner; then another owner is refused for its schema and for its
    user, and the adopter's delete removes everything (on etcd, the old un-tagged user too)."""
    driver, cluster, store = ds, datastores_cluster, store_of(ds)
    legacy = Tenant(S, UW, PW[OW])
    await driver.ensure_tenant(legacy)
    await write_data(cluster, driver, legacy, tmp_path / "legacy")
    assert await driver.holder(legacy) == (None, None)
    assert await driver.verify_tenant(legacy)
    adopter = replace(legacy, owner=OW)
    assert not await driver.verify_tenant(adopter)
    await driver.ensure_tenant(adopter)
    assert await driver.holder(adopter) == (OW, OW)
    assert await driver.verify_tenant(adopter)
    assert not await driver.verify_tenant(legacy)
    if store == "etcd":
        # The old un-tagged user keeps working until the tenant's pods use the new one.
        assert isinstance(driver, EtcdDriver)
        assert driver.physical_names(adopter)[1] != driver.legacy_user(adopter)
        (tmp_path / "adopter").mkdir()
        client = TenantClient(cluster, store, driver, adopter, tmp_path / "adopter")
        rc, out, err = await client.etcdctl("get", f"/{S}/registry/precious",
                                            "--print-value-only")
        assert (rc, out.strip()) == (0, "v"), err
    else:
        assert await reads_data(cluster, driver, adopter)

    before = await snapshot(driver)
    refusals: list[tuple[Tenant, type[InUse]]] = [
        (replace(legacy, owner=OL), SchemaInUse), (tenant(S, UL, OL), SchemaInUse),
        (tenant(S2, UW, OL), UserInUse)]
    for late, expected in refusals:
        with pytest.raises(expected) as info:
            await driver.ensure_tenant(late)
        assert info.value.holder == OW
        await driver.delete_tenant(late)
        assert await snapshot(driver) == before, late
    # Without an owner (an old Haku) the adopted tenant is refused too, and left alone.
    with pytest.raises(SchemaInUse):
        await driver.ensure_tenant(legacy)
    await driver.delete_tenant(legacy)
    assert await snapshot(driver) == before

    await driver.delete_tenant(adopter)
    assert await snapshot(driver) == EMPTY[driver.driver]
    if store != "etcd":
        _, user = driver.physical_names(adopter)
        await sql_refused(cluster, store, user, PW[OW], None)


async def test_a_legacy_tenant_is_deleted_by_its_owner_without_adoption(ds: Driver) -> None:
    """The controller deletes a TenantControlPlane made before owners: delete with the owner
    removes the legacy tenant of exactly these names, and that of no other names."""
    driver = ds
    legacy = Tenant(S, UW, PW[OW])
    await driver.ensure_tenant(legacy)
    before = await snapshot(driver)
    # Same schema, another user; same user, another schema: not this legacy tenant's names.
    for other in (tenant(S, UL, OL), tenant(S2, UW, OL)):
        await driver.delete_tenant(other)
        assert await snapshot(driver) == before, other
    await driver.delete_tenant(replace(legacy, owner=OW))
    assert await snapshot(driver) == EMPTY[driver.driver]


async def test_a_legacy_space_of_another_user_is_not_adopted(ds: Driver) -> None:
    """A legacy space belongs with its legacy user: another user's tenant adopting it would
    leave the old user with access. Refused (NotOwned, naming why) before any change."""
    driver = ds
    legacy = Tenant(S, UW, PW[OW])
    await driver.ensure_tenant(legacy)
    before = await snapshot(driver)
    with pytest.raises(NotOwned, match="before it recorded owners"):
        await driver.ensure_tenant(tenant(S, UL, OL))
    assert await snapshot(driver) == before
    await driver.delete_tenant(legacy)


# ---------------------------------------------------------------- verify_tenant

async def test_verify_tenant(ds: Driver) -> None:
    """True after ensure; False for another owner, and after any piece is removed by hand;
    ensure repairs it."""
    driver = ds
    w = tenant(S, UW, OW)
    assert not await driver.verify_tenant(w)
    await driver.ensure_tenant(w)
    assert await driver.verify_tenant(w)
    assert not await driver.verify_tenant(replace(w, owner=OL))
    assert not await driver.verify_tenant(replace(w, owner=None))
    assert await driver.verify_tenant(replace(w, password="another-password-123"))
    schema, user = driver.physical_names(w)

    for piece in breakages(driver, schema, user):
        await piece()
        assert not await driver.verify_tenant(w), piece.__doc__
        await driver.ensure_tenant(w)
        assert await driver.verify_tenant(w), piece.__doc__
    await driver.delete_tenant(w)
    assert not await driver.verify_tenant(w)


def breakages(driver: Driver, schema: str, user: str) -> list[Any]:
    """Ways an administrator (or a cut operation) can take one piece of a tenant away."""
    if isinstance(driver, EtcdDriver):
        from aetcd import rpc

        async def revoke_role() -> None:
            """the user's role"""
            await driver.auth.UserRevokeRole(rpc.AuthUserRevokeRoleRequest(name=user,
                                                                          role=schema))

        async def revoke_permission() -> None:
            """the role's permission"""
            prefix = prefix_of(schema)
            await driver.auth.RoleRevokePermission(rpc.AuthRoleRevokePermissionRequest(
                role=schema, key=prefix, range_end=range_end(prefix)))

        async def delete_user() -> None:
            """the user"""
            await driver.auth.UserDelete(rpc.AuthUserDeleteRequest(name=user))

        async def delete_record() -> None:
            """the schema's owner record"""
            await driver.kv.DeleteRange(rpc.DeleteRangeRequest(key=owner_key("schema", schema)))

        return [revoke_role, revoke_permission, delete_user, delete_record]
    if isinstance(driver, PostgresDriver):
        D, R = sql.Identifier(schema), sql.Identifier(user)

        async def revoke_connect() -> None:
            """CONNECT"""
            await driver._run("break", [(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}")
                                         .format(D, R), ())])

        async def public_connect() -> None:
            """PUBLIC's CONNECT back"""
            await driver._run("break", [(sql.SQL("GRANT CONNECT ON DATABASE {} TO PUBLIC")
                                         .format(D), ())])

        async def drop_database() -> None:
            """the database"""
            await driver._run("break", [(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(D),
                                         ())])

        async def unmark() -> None:
            """the database's owner mark (set back to the legacy marker)"""
            await driver._run("break", [(sql.SQL("COMMENT ON DATABASE {} IS 'haku-tenant'")
                                         .format(D), ())])

        return [revoke_connect, public_connect, drop_database, unmark]
    assert isinstance(driver, MySQLDriver)
    # (A removed MariaDB owner record is not repaired: the user or database it recorded then
    # looks like someone else's, NotOwned, as Haku cannot tell otherwise.)

    async def revoke_insert() -> None:
        """INSERT"""
        await driver._run("break", [(f"REVOKE INSERT ON `{grant_pattern(schema)}`.* "
                                     "FROM %s@'%%'", (user,))])

    async def drop_database_my() -> None:
        """the database"""
        await driver._run("break", [(f"DROP DATABASE `{schema}`", ())])

    async def drop_user() -> None:
        """the user"""
        await driver._run("break", [("DROP USER %s@'%%'", (user,))])

    return [revoke_insert, drop_database_my, drop_user]


# ---------------------------------------------------------------- backends' own rules

async def test_postgres_marks_carry_the_owner(ds: Driver) -> None:
    if not isinstance(ds, PostgresDriver):
        pytest.skip("PostgreSQL only")
    await ds.ensure_tenant(tenant(S, UW, OW))
    (marks,) = await ds._run("marks", [(sql.SQL(
        "SELECT (SELECT shobj_description(oid, 'pg_database') FROM pg_database "
        "WHERE datname = %s), (SELECT shobj_description(oid, 'pg_authid') FROM pg_roles "
        "WHERE rolname = %s)"), (S, UW))])
    assert marks == [(owner_mark(OW), owner_mark(OW))] == [(f"haku tenant {OW}",) * 2]
    assert S in await ds.list_tenants()
    # A kill between CREATE DATABASE … OWNER and its COMMENT: the database is the owner's
    # through its role.
    await ds._run("unmark", [(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(
        sql.Identifier(S)), ())])
    assert await ds.holder(tenant(S, UW, OW)) == (OW, OW)
    with pytest.raises(SchemaInUse):
        await ds.ensure_tenant(tenant(S, UL, OL))
    await ds.ensure_tenant(tenant(S, UW, OW))
    assert await ds.verify_tenant(tenant(S, UW, OW))
    await ds.delete_tenant(tenant(S, UW, OW))
    assert await snapshot(ds) == EMPTY["PostgreSQL"]


async def test_postgres_adopting_a_role_is_a_compare_and_set(ds: Driver) -> None:
    """A legacy role is recorded by one statement that re-reads its comment under a lock: if
    another owner recorded itself since ensure's read, it fails naming that owner (ensure
    turns that into UserInUse) and changes nothing."""
    if not isinstance(ds, PostgresDriver):
        pytest.skip("PostgreSQL only")
    from haku.datastore.base import DataStoreError
    from haku.datastore.postgres import MARKER, _held_by, adopt_role

    comment = (sql.SQL("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles "
                       "WHERE rolname = %s"), (UW,))
    await ds.ensure_tenant(Tenant(S, UW, PW[OW]))  # legacy
    assert await ds._run("mark", [comment]) == [[(MARKER,)]]
    await ds._run("adopt", [(adopt_role(UW, OW), ())])
    assert await ds._run("mark", [comment]) == [[(owner_mark(OW),)]]
    await ds._run("again", [(adopt_role(UW, OW), ())])  # its own: nothing to do
    with pytest.raises(DataStoreError) as info:
        await ds._run("stolen", [(adopt_role(UW, OL), ())])
    assert _held_by(info.value) == OW
    assert await ds._run("mark", [comment]) == [[(owner_mark(OW),)]]
    await ds.delete_tenant(tenant(S, UW, OW))
    assert await snapshot(ds) == EMPTY["PostgreSQL"]


async def test_mariadb_owner_records_tell_case_apart(ds: Driver) -> None:
    """Owner records compare names exactly: `Inc-Space` and `inc-space` are two schemas of
    two owners (haku_meta.tenants, case-insensitive, could not hold both)."""
    if not isinstance(ds, MySQLDriver):
        pytest.skip("MariaDB only")
    (rows,) = await ds._run("case", [("SELECT @@lower_case_table_names", ())])
    if int(rows[0][0]) != 0:
        pytest.skip("this server folds database names to lower case")
    upper = tenant("Inc-Space", UW, OW)
    lower = tenant(S, UL, OL, PW[OL])
    try:
        await ds.ensure_tenant(upper)
        await ds.ensure_tenant(lower)
        assert await ds.holder(upper) == (OW, OW)
        assert await ds.holder(lower) == (OL, OL)
        assert await ds.verify_tenant(upper) and await ds.verify_tenant(lower)
        assert {"Inc-Space", S} <= set(await ds.list_tenants())
        await ds.delete_tenant(lower)
        assert await ds.verify_tenant(upper)
        assert await ds.holder(lower) == (None, None)
    finally:
        await ds.delete_tenant(upper)
        await ds.delete_tenant(lower)
    assert await ds.holder(upper) == (None, None)


# ---------------------------------------------------------------- cut short, with owners

async def test_owned_ensure_and_delete_resume_after_a_real_kill(
    ds: Driver, datastores_cluster: DevCluster
) -> None:
    """As tests/datastore/test_lifecycle.py does without owners: SIGKILL a process running
    ensure (then delete) of an owned tenant before each of its steps; another process
    completes it, with its owner records (or their removal). Some kills must leave a partial
    state, or the test would prove nothing."""
    from .test_lifecycle import footprint, run_and_kill

    driver = ds
    settings = settings_for(datastores_cluster, store_of(driver))
    t = tenant(S, UW, OW)

    async def state() -> Any:
        return await footprint(driver, t), await driver.holder(t)

    empty = await state()
    await driver.ensure_tenant(t)
    complete = await state()
    await driver.delete_tenant(t)
    assert complete != empty and complete[1] == (OW, OW) and empty[1] == (None, None)
    partial = {"ensure_tenant": 0, "delete_tenant": 0}
    cut = 0
    while True:
        ensure_killed = await run_and_kill(settings, t, "ensure_tenant", cut)
        partial["ensure_tenant"] += await state() not in (empty, complete)
        await driver.ensure_tenant(t)
        assert await state() == complete, cut
        assert await driver.verify_tenant(t), cut
        delete_killed = await run_and_kill(settings, t, "delete_tenant", cut)
        partial["delete_tenant"] += await state() not in (empty, complete)
        await driver.delete_tenant(t)
        assert await state() == empty, cut
        if not (ensure_killed or delete_killed):
            break
        cut += 1
    assert await snapshot(driver) == EMPTY[driver.driver]
    assert cut >= 3 and partial["ensure_tenant"] > 0 and partial["delete_tenant"] > 0, partial
