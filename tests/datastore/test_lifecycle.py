"""ensure is idempotent and resumes after an interruption; delete leaves nothing behind."""

from __future__ import annotations

from typing import Any

import pytest

from haku.datastore import DataStoreError, Driver, Tenant
from haku.datastore.etcd import EtcdDriver, prefix_of, range_end
from haku.datastore.mysql import META, MySQLDriver
from haku.datastore.postgres import PostgresDriver

T = Tenant("life-t", "life-u", "lifepw0123456789")


async def footprint(driver: Driver, tenant: Tenant) -> dict[str, Any]:
    """Everything the backend holds for ``tenant``, read with the admin connection."""
    schema, user = driver.physical_names(tenant)
    if isinstance(driver, EtcdDriver):
        from aetcd import rpc

        prefix = prefix_of(schema)
        keys = await driver.kv.Range(rpc.RangeRequest(key=prefix, range_end=range_end(prefix),
                                                      count_only=True))
        roles = await driver.auth.RoleList(rpc.AuthRoleListRequest())
        users = await driver.auth.UserList(rpc.AuthUserListRequest())
        grants: list[str] = []
        if user in users.users:
            got = await driver.auth.UserGet(rpc.AuthUserGetRequest(name=user))
            grants = list(got.roles)
        perms: list[tuple[bytes, bytes]] = []
        if schema in roles.roles:
            role = await driver.auth.RoleGet(rpc.AuthRoleGetRequest(role=schema))
            perms = [(p.key, p.range_end) for p in role.perm]
        return {"keys": keys.count, "role": schema in roles.roles, "perms": perms,
                "user": user in users.users, "grants": grants}
    if isinstance(driver, PostgresDriver):
        from psycopg import sql

        db, role, acl = await driver._run("footprint", [
            (sql.SQL("SELECT count(*) FROM pg_database WHERE datname = %s"), (schema,)),
            (sql.SQL("SELECT count(*) FROM pg_roles WHERE rolname = %s"), (user,)),
            (sql.SQL("SELECT datacl::text FROM pg_database WHERE datname = %s"), (schema,)),
        ])
        return {"db": db[0][0], "role": role[0][0], "acl": acl[0][0] if acl else None}
    assert isinstance(driver, MySQLDriver)
    db, users, grants, meta = await driver._run("footprint", [
        ("SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (schema,)),
        ("SELECT count(*) FROM mysql.user WHERE User = %s", (user,)),
        ("SELECT count(*) FROM mysql.db WHERE User = %s AND Db = %s", (user, schema)),
        (f"SELECT count(*) FROM {META}.tenants WHERE db = %s", (schema,)),  # noqa: S608
    ])
    return {"db": db[0][0], "user": users[0][0], "grants": grants[0][0], "meta": meta[0][0]}


EMPTY = {
    "etcd": {"keys": 0, "role": False, "perms": [], "user": False, "grants": []},
    "PostgreSQL": {"db": 0, "role": 0, "acl": None},
    "MySQL": {"db": 0, "user": 0, "grants": 0, "meta": 0},
}


async def test_ensure_three_times_gives_one_state(driver: Driver) -> None:
    await driver.delete_tenant(T)
    states = []
    for _ in range(3):
        await driver.ensure_tenant(T)
        states.append(await footprint(driver, T))
    assert states[0] == states[1] == states[2]
    assert states[0] != EMPTY[driver.driver]
    schema, _ = driver.physical_names(T)
    assert (await driver.list_tenants()).count(schema) == 1
    if isinstance(driver, PostgresDriver):
        # aclitems look like grantee=privileges/grantor; PUBLIC's have an empty grantee.
        items = states[0]["acl"].strip("{}").split(",")
        assert items and not [i for i in items if i.startswith("=")], items
    await driver.delete_tenant(T)


async def test_delete_leaves_no_trace_and_may_repeat(driver: Driver) -> None:
    await driver.ensure_tenant(T)
    if isinstance(driver, EtcdDriver):
        from aetcd import rpc

        await driver.kv.Put(rpc.PutRequest(key=b"/life-t/registry/pods/x", value=b"data"))
    await driver.delete_tenant(T)
    assert await footprint(driver, T) == EMPTY[driver.driver]
    schema, _ = driver.physical_names(T)
    assert schema not in await driver.list_tenants()
    await driver.delete_tenant(T)  # nothing left to delete: still fine


class Interrupted(Exception):
    pass


def interrupt_after(driver: Driver, calls: int) -> None:
    """Make the driver's admin connection die after ``calls`` more statements or RPCs."""
    remaining = [calls]
    if isinstance(driver, EtcdDriver):
        original = driver._call

        async def call(*args: Any, **kwargs: Any) -> Any:
            if remaining[0] == 0:
                raise Interrupted
            remaining[0] -= 1
            return await original(*args, **kwargs)

        driver._call = call  # type: ignore[method-assign]
        return
    original_run = driver._run  # type: ignore[attr-defined]

    async def run(doing: str, statements: list[Any]) -> Any:
        results = []
        for statement in statements:  # one statement at a time, so the cut can fall anywhere
            if remaining[0] == 0:
                raise Interrupted
            remaining[0] -= 1
            results += await original_run(doing, [statement])
        return results

    driver._run = run  # type: ignore[attr-defined]


@pytest.mark.parametrize("cut", range(7))
async def test_ensure_and_delete_resume_after_an_interruption(
    driver: Driver, cut: int, datastores_cluster: Any
) -> None:
    from .conftest import settings_for, store_of

    settings = settings_for(datastores_cluster, store_of(driver))
    from haku.datastore import open_driver

    await driver.delete_tenant(T)
    await driver.ensure_tenant(T)
    complete = await footprint(driver, T)
    await driver.delete_tenant(T)

    broken = open_driver(settings)
    interrupt_after(broken, cut)
    try:
        await broken.ensure_tenant(T)
    except Interrupted:
        pass
    finally:
        await broken.close()
    await driver.ensure_tenant(T)  # a fresh attempt completes what was cut short
    assert await footprint(driver, T) == complete

    broken = open_driver(settings)
    interrupt_after(broken, cut)
    try:
        await broken.delete_tenant(T)
    except Interrupted:
        pass
    finally:
        await broken.close()
    await driver.delete_tenant(T)
    assert await footprint(driver, T) == EMPTY[driver.driver]


async def test_a_tenant_without_password_is_refused_on_sql(driver: Driver) -> None:
    if isinstance(driver, EtcdDriver):
        pytest.skip("etcd tenants have no password")
    with pytest.raises(DataStoreError, match="needs a password"):
        await driver.ensure_tenant(Tenant("nopw", "nopw"))


async def test_many_tenants_at_once(driver: Driver) -> None:
    """Concurrent provisioning races inside etcd's auth store ("revision of auth store is
    old"); the driver retries, so every tenant is made and removed."""
    import asyncio

    count = 80 if isinstance(driver, EtcdDriver) else 16  # CREATE DATABASE is slow
    batch = [Tenant(f"many-{i:02d}", f"many-{i:02d}", f"manypw{i:02d}0123456")
             for i in range(count)]
    for _ in range(2):
        await asyncio.gather(*(driver.ensure_tenant(t) for t in batch))
        held = await driver.list_tenants()
        assert all(driver.physical_names(t)[0] in held for t in batch)
        await asyncio.gather(*(driver.delete_tenant(t) for t in batch))
        held = await driver.list_tenants()
        assert not [t for t in batch if driver.physical_names(t)[0] in held]
