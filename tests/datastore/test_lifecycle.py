"""ensure is idempotent and resumes after an interruption (an exception, or a real SIGKILL of
the process running it); delete leaves nothing behind."""

from __future__ import annotations

from typing import Any

import pytest

from haku.datastore import DataStoreError, Driver, Tenant
from haku.datastore.etcd import EtcdDriver, prefix_of, range_end
from haku.datastore.mysql import META, MySQLDriver, grant_identifier
from haku.datastore.postgres import MARKER, PostgresDriver

T = Tenant("life-t", "life-u", "lifepw0123456789")
# An underscore in the database name: the grant footprint reads the escaped form.
U = Tenant("life_u", "life_u", "lifepw0123456789")


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

        db, role, acl, marks = await driver._run("footprint", [
            (sql.SQL("SELECT count(*) FROM pg_database WHERE datname = %s"), (schema,)),
            (sql.SQL("SELECT count(*) FROM pg_roles WHERE rolname = %s"), (user,)),
            (sql.SQL("SELECT datacl::text FROM pg_database WHERE datname = %s"), (schema,)),
            # Haku's ownership markers: the comments on the database and on the role.
            (sql.SQL("SELECT (SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                     "WHERE datname = %s), (SELECT shobj_description(oid, 'pg_authid') "
                     "FROM pg_roles WHERE rolname = %s)"), (schema, user)),
        ])
        return {"db": db[0][0], "role": role[0][0], "acl": acl[0][0] if acl else None,
                "marks": marks[0]}
    assert isinstance(driver, MySQLDriver)
    db, users, grants, meta = await driver._run("footprint", [
        ("SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (schema,)),
        ("SELECT count(*) FROM mysql.user WHERE User = %s", (user,)),
        # Grants are stored under the escaped name (w\_x), the exact-match form.
        ("SELECT count(*) FROM mysql.db WHERE User = %s AND Db = %s",
         (user, grant_identifier(schema)[1:-1].replace("``", "`"))),
        (f"SELECT count(*) FROM {META}.tenants WHERE db = %s", (schema,)),  # noqa: S608
    ])
    return {"db": db[0][0], "user": users[0][0], "grants": grants[0][0], "meta": meta[0][0]}


EMPTY = {
    "etcd": {"keys": 0, "role": False, "perms": [], "user": False, "grants": []},
    "PostgreSQL": {"db": 0, "role": 0, "acl": None, "marks": (None, None)},
    "MySQL": {"db": 0, "user": 0, "grants": 0, "meta": 0},
}


@pytest.mark.parametrize("tenant", [T, U], ids=["plain", "underscore"])
async def test_ensure_three_times_gives_one_state(driver: Driver, tenant: Tenant) -> None:
    await driver.delete_tenant(tenant)
    states = []
    for _ in range(3):
        await driver.ensure_tenant(tenant)
        states.append(await footprint(driver, tenant))
    assert states[0] == states[1] == states[2]
    assert states[0] != EMPTY[driver.driver]
    if isinstance(driver, MySQLDriver):
        assert states[0] == {"db": 1, "user": 1, "grants": 1, "meta": 1}
    schema, _ = driver.physical_names(tenant)
    assert (await driver.list_tenants()).count(schema) == 1
    if isinstance(driver, PostgresDriver):
        # aclitems look like grantee=privileges/grantor; PUBLIC's have an empty grantee.
        items = states[0]["acl"].strip("{}").split(",")
        assert items and not [i for i in items if i.startswith("=")], items
        assert states[0]["marks"] == (MARKER, MARKER)  # database and role are Haku's
    await driver.delete_tenant(tenant)


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


# Runs one driver operation in a child process and stops, before statement/RPC number CUT, to
# print "paused" and wait for the parent's SIGKILL: the connection dies with the process,
# mid-operation, exactly as when an operator pod is killed.
CHILD = """
import asyncio, pickle, sys
from haku.datastore import open_driver

settings, tenant, operation, cut = pickle.loads(sys.stdin.buffer.read())

async def main():
    driver = open_driver(settings)
    done = [0]

    async def step():
        if done[0] == cut:
            print("paused", flush=True)
            await asyncio.sleep(3600)
        done[0] += 1

    if driver.driver == "etcd":
        call = driver._call
        async def counted_call(*args, **kwargs):
            await step()
            return await call(*args, **kwargs)
        driver._call = counted_call
    else:
        run = driver._run
        async def counted_run(doing, statements):
            results = []
            for statement in statements:
                await step()
                results += await run(doing, [statement])
            return results
        driver._run = counted_run
    await getattr(driver, operation)(tenant)
    print("finished", flush=True)

asyncio.run(main())
"""


async def run_and_kill(settings: Any, tenant: Tenant, operation: str, cut: int) -> bool:
    """Run ``operation`` in a child; SIGKILL it before step ``cut``. True if it was killed
    (False: the operation has fewer steps and finished)."""
    import asyncio
    import pickle
    import signal
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdin and proc.stdout
    proc.stdin.write(pickle.dumps((settings, tenant, operation, cut)))
    proc.stdin.close()
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    if line == "paused":
        assert proc.returncode == -signal.SIGKILL
        return True
    assert line == "finished", (line, (await proc.stderr.read()).decode()[-2000:])  # type: ignore[union-attr]
    return False


async def test_ensure_and_delete_resume_after_a_real_kill(
    driver: Driver, datastores_cluster: Any
) -> None:
    """SIGKILL a process running ensure (then delete) before each of its steps; the next
    ensure (delete) in another process completes it. Some kills must leave a partial state,
    or the test would prove nothing."""
    from .conftest import settings_for, store_of

    settings = settings_for(datastores_cluster, store_of(driver))
    killed = Tenant("kill-t", "kill-u", "killpw0123456789")
    await driver.delete_tenant(killed)
    await driver.ensure_tenant(killed)
    complete = await footprint(driver, killed)
    await driver.delete_tenant(killed)
    empty = EMPTY[driver.driver]
    assert complete != empty
    partial = {"ensure_tenant": 0, "delete_tenant": 0}
    cut = 0
    while True:
        was_killed = await run_and_kill(settings, killed, "ensure_tenant", cut)
        left = await footprint(driver, killed)
        partial["ensure_tenant"] += left not in (empty, complete)
        await driver.ensure_tenant(killed)
        assert await footprint(driver, killed) == complete, cut

        await driver.delete_tenant(killed)  # back to nothing, then ensure completely in the
        await driver.ensure_tenant(killed)  # parent so the delete below starts from complete
        deleted_killed = await run_and_kill(settings, killed, "delete_tenant", cut)
        left = await footprint(driver, killed)
        partial["delete_tenant"] += left not in (empty, complete)
        await driver.delete_tenant(killed)
        assert await footprint(driver, killed) == empty, cut
        if not (was_killed or deleted_killed):
            break
        cut += 1
    assert cut >= 3
    assert partial["ensure_tenant"] > 0 and partial["delete_tenant"] > 0, partial
