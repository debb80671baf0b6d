"""PostgreSQL: one database and one login role per tenant, reached by kine.

Statements are composed with ``psycopg.sql`` (identifiers and literals quoted by psycopg),
never by string formatting. Unlike Kamaji, CONNECT is revoked from PUBLIC, so one tenant's
role cannot even open another tenant's database. Names that would reach the server's own
databases or roles (``postgres``, ``template0/1``, ``pg_*``, the DataStore's admin role) are
refused before any statement. Known limit: PUBLIC keeps its default CONNECT on ``postgres``
and ``template1`` (Haku does not change server-wide defaults), so a tenant role can connect
there and list database and role names; see docs/datastores.md for the hardening.

Ownership: Haku takes over and drops only what it created. A role is Haku's iff its comment
(``shobj_description(oid, 'pg_authid')``) is :data:`MARKER`; ``CREATE ROLE`` and ``COMMENT ON
ROLE`` run in one transaction, so no kill leaves an unmarked role of Haku's. A database is
Haku's iff its comment is :data:`MARKER`, or its owner is the tenant's (Haku) role, which covers
a kill between ``CREATE DATABASE … OWNER`` and its ``COMMENT``. Legacy rule: tenants made before
roles were marked have an unmarked role; such a role counts as Haku's when it owns the tenant's
own database and that database carries the marker, and the next ensure (or delete) marks it.
Anything else that already exists under the tenant's names is refused with
:class:`~haku.datastore.base.NotOwned` before any change, and left untouched by delete.

Which tenant owns them: with an owner, the comments are ``haku tenant <uid>``
(:func:`owner_mark`; :data:`MARKER` is then the legacy mark, no owner recorded). The role is
created with its mark in one transaction and ``CREATE DATABASE … OWNER`` fails if the database
exists, so the first writer wins; a database without its mark is its owner role's. Legacy
roles are marked by :func:`adopt_role`, a compare-and-set under an advisory lock.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import pq, sql

from haku.datastore import kine_table
from haku.datastore.base import (
    AuthenticationFailed,
    DataStoreError,
    Entry,
    InUse,
    InvalidName,
    NotOwned,
    PermissionDenied,
    PrivateFiles,
    SchemaInUse,
    SpaceNotEmpty,
    Tenant,
    TenantConnection,
    TLSFailure,
    Unreachable,
    Usage,
    UserInUse,
    check_tls_material,
    legacy_pair,
    not_owned,
    physical_name,
    refuse_reserved,
)
from haku.datastore.settings import Settings

# kine lowercases the database path of its endpoint, so tenant databases are lower case.
DATABASE_CHARS = re.compile(r"[^\x00-\x1f\x7fA-Z]+")
ROLE_CHARS = re.compile(r"[^\x00-\x1f\x7f]+")
NAME_LIMIT = 63  # NAMEDATALEN - 1: longer names are silently truncated by the server
MARKER = "haku-tenant"  # legacy: Haku's, no owner recorded
OWNER_MARK = "haku tenant "  # + the owner's uid
Statement = sql.SQL | sql.Composed
CONNECT_TIMEOUT = 10
RESERVED_DATABASES = ("postgres", "template0", "template1")
RESERVED_ROLES = ("postgres",)
RESERVED_ROLE_PREFIXES = ("pg_",)  # the server's predefined roles


def _map_error(e: psycopg.Error, doing: str) -> DataStoreError:
    text = f"{doing}: {str(e).strip()}"
    low = text.lower()
    if isinstance(e, psycopg.OperationalError):
        if "password authentication failed" in low or "no pg_hba.conf entry" in low:
            return AuthenticationFailed(text)
        if "ssl" in low or "certificate" in low:
            return TLSFailure(text)
        return Unreachable(text)
    if isinstance(e, psycopg.errors.InsufficientPrivilege):
        return PermissionDenied(text)
    return DataStoreError(text)


def owner_mark(owner: str) -> str:
    """The comment recording ``owner`` on a tenant's role and database."""
    return OWNER_MARK + owner


def marked_owner(comment: str | None) -> str | None:
    """The owner a comment records (None for the legacy :data:`MARKER`, none or another)."""
    if comment is not None and comment.startswith(OWNER_MARK):
        return comment[len(OWNER_MARK):]
    return None


def _haku_comment(comment: str | None) -> bool:
    return comment == MARKER or marked_owner(comment) is not None


@dataclass(frozen=True)
class Found:
    """What the server holds under a tenant's names, and which of it is Haku's."""

    role_oid: int | None  # None: no such role
    role_super: bool
    role_comment: str | None
    db_exists: bool
    db_owner: int | None
    db_comment: str | None
    db_owner_comment: str | None  # of the role owning the database
    role_other_dbs: int  # databases other than the tenant's that the role owns

    @property
    def role_marked(self) -> bool:
        """Marked as Haku's: with an owner, or with the legacy :data:`MARKER`."""
        return self.role_oid is not None and _haku_comment(self.role_comment)

    @property
    def role_holder(self) -> str | None:
        return marked_owner(self.role_comment) if self.role_oid is not None else None

    @property
    def db_holder(self) -> str | None:
        """The owner on the database's comment, else on the comment of the role owning it
        (a kill between CREATE DATABASE … OWNER and its COMMENT)."""
        if not self.db_exists:
            return None
        return marked_owner(self.db_comment) or marked_owner(self.db_owner_comment)

    @property
    def role_ours(self) -> bool:
        """Marked, or (legacy, before roles were marked) the owner of the tenant's database
        that carries the marker."""
        return self.role_oid is not None and (self.role_marked or (
            self.db_exists and _haku_comment(self.db_comment)
            and self.db_owner == self.role_oid))

    @property
    def db_ours(self) -> bool:
        """Marked, or owned by the tenant's own Haku role (a kill between CREATE DATABASE
        and its COMMENT) or by a role recorded for an owner."""
        return self.db_exists and (_haku_comment(self.db_comment) or (
            self.role_ours and self.db_owner == self.role_oid)
            or self.db_holder is not None)


_CONFLICTS = (psycopg.errors.DuplicateObject, psycopg.errors.DuplicateDatabase,
              psycopg.errors.UniqueViolation)
ATTEMPTS = 4
HELD = "HK001"  # SQLSTATE the adoption block raises when another owner holds the role


def _conflict(e: DataStoreError) -> bool:
    """CREATE ROLE or CREATE DATABASE lost to someone who made the object meanwhile."""
    return isinstance(e.__cause__, _CONFLICTS)


def _held_by(e: DataStoreError) -> str | None:
    cause = e.__cause__
    if isinstance(cause, psycopg.Error) and cause.sqlstate == HELD and cause.diag.message_primary:
        return marked_owner(cause.diag.message_primary)
    return None


def adopt_role(role: str, owner: str) -> sql.Composed:
    """One statement that records ``owner`` on the legacy role ``role``, first writer wins:
    under a transaction-level advisory lock on the role's name it reads the comment again
    and raises SQLSTATE :data:`HELD` (message: the other owner's mark) if another owner's
    mark is there."""
    body = sql.SQL("""
DECLARE held text;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended({key}, 0));
  SELECT shobj_description(oid, 'pg_authid') INTO held FROM pg_roles WHERE rolname = {name};
  IF starts_with(held, {prefix}) AND held <> {mark} THEN
    RAISE EXCEPTION USING ERRCODE = {code}, MESSAGE = held;
  END IF;
  IF held IS DISTINCT FROM {mark} THEN
    EXECUTE format('COMMENT ON ROLE %I IS %L', {name}, {mark});
  END IF;
END""").format(key=sql.Literal(f"haku.dev/owner/role/{role}"), name=sql.Literal(role),
               prefix=sql.Literal(OWNER_MARK), mark=sql.Literal(owner_mark(owner)),
               code=sql.Literal(HELD)).as_string(None)
    return sql.SQL("DO {}").format(sql.Literal(body))


class PostgresDriver:
    driver = "PostgreSQL"

    def __init__(self, settings: Settings) -> None:
        if not settings.username:
            raise DataStoreError(f"DataStore {settings.name}: PostgreSQL needs basicAuth")
        self.settings = settings
        self.host, port = settings.endpoints[0].rsplit(":", 1)
        self.host = self.host.strip("[]")
        self.port = int(port)
        check_tls_material(ca_cert=settings.ca_cert, client_cert=settings.client_cert,
                           client_key=settings.client_key)
        self._files = PrivateFiles("haku-pg-")
        self.conninfo: dict[str, Any] = {
            "host": self.host, "port": self.port, "user": settings.username,
            "password": settings.password or "", "connect_timeout": CONNECT_TIMEOUT,
            "application_name": "haku",
        }
        if settings.ca_cert:
            self.conninfo |= {"sslmode": "verify-full",
                              "sslrootcert": self._files.write("ca.crt", settings.ca_cert)}
        if settings.client_cert and settings.client_key:
            self.conninfo |= {"sslcert": self._files.write("tls.crt", settings.client_cert),
                              "sslkey": self._files.write("tls.key", settings.client_key)}
        self._lock = asyncio.Lock()
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def _connection(self, doing: str) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = await psycopg.AsyncConnection.connect(
                    dbname="postgres", autocommit=True, **self.conninfo)
            except psycopg.Error as e:
                raise _map_error(e, doing) from e
        return self._conn

    async def _run(self, doing: str, statements: list[tuple[Statement, tuple[Any, ...]]]
                   ) -> list[list[tuple[Any, ...]]]:
        """Run statements in order on the admin connection; rows of each."""
        async with self._lock:
            conn = await self._connection(doing)
            results = []
            try:
                for statement, params in statements:
                    cur = await conn.execute(statement, params or None)
                    results.append(await cur.fetchall() if cur.description else [])
            except BaseException as e:
                if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                    # Cut inside BEGIN … COMMIT (or mid-statement): drop the connection, so
                    # the server rolls the transaction back and the next call starts clean.
                    self._conn = None
                    conn.pgconn.finish()
                if isinstance(e, psycopg.Error):
                    raise _map_error(e, doing) from e
                raise
            return results

    async def _inspect(self, doing: str, db: str, role: str) -> Found:
        """Read only, one statement: the role and database under the tenant's names, their
        comments, and the comment of the role owning the database."""
        (rows,) = await self._run(doing, [(sql.SQL(
            "SELECT r.oid, r.rolsuper, shobj_description(r.oid, 'pg_authid'), "
            "d.oid IS NOT NULL, d.datdba, shobj_description(d.oid, 'pg_database'), "
            "shobj_description(d.datdba, 'pg_authid'), "
            "(SELECT count(*) FROM pg_database o WHERE o.datdba = r.oid AND o.datname <> %s) "
            "FROM (SELECT 1) AS one LEFT JOIN pg_roles r ON r.rolname = %s "
            "LEFT JOIN pg_database d ON d.datname = %s"), (db, role, db))])
        oid, superuser, role_comment, db_exists, db_owner, db_comment, owner_comment, others \
            = rows[0]
        return Found(role_oid=None if oid is None else int(oid), role_super=bool(superuser),
                     role_comment=role_comment, db_exists=bool(db_exists),
                     db_owner=None if db_owner is None else int(db_owner),
                     db_comment=db_comment, db_owner_comment=owner_comment,
                     role_other_dbs=int(others or 0))

    def physical_names(self, tenant: Tenant) -> tuple[str, str]:
        """(database, role); :class:`InvalidName` for the server's own databases and roles
        and the DataStore's admin role (checked before any statement runs)."""
        db = physical_name(tenant.schema, NAME_LIMIT, DATABASE_CHARS)
        role = physical_name(tenant.user, NAME_LIMIT, ROLE_CHARS)
        refuse_reserved(db, tenant.schema, "schema (PostgreSQL database)", RESERVED_DATABASES)
        refuse_reserved(role, tenant.user, "user (PostgreSQL role)",
                        (*RESERVED_ROLES, self.settings.username or "postgres"),
                        prefixes=RESERVED_ROLE_PREFIXES)
        return db, role

    async def check(self) -> str:
        """Reachable, the password accepted, and the user a superuser. CREATEROLE and CREATEDB
        are not enough: each tenant's role owns its database, and only a superuser or a
        member of that role may create a database for it or revoke PUBLIC's CONNECT on it."""
        (rows,) = await self._run("checking PostgreSQL", [(
            sql.SQL("SELECT current_setting('server_version'), rolsuper, rolcreaterole, "
                    "rolcreatedb FROM pg_roles WHERE rolname = current_user"), ())])
        version, superuser, createrole, createdb = rows[0]
        if not superuser:
            held = [a for a, v in (("CREATEROLE", createrole), ("CREATEDB", createdb)) if v]
            raise PermissionDenied(
                f"PostgreSQL user {self.settings.username!r} is not a superuser (it holds "
                f"{' and '.join(held) or 'neither CREATEROLE nor CREATEDB'}): Haku needs "
                "SUPERUSER, since each tenant's role owns its database (CREATEROLE and "
                "CREATEDB are not enough: the owner must be a role Haku's user is a member of)")
        return f"PostgreSQL {version}"

    def _refuse(self, tenant: Tenant, db: str, role: str, found: Found) -> None:
        """Every refusal of ensure, before any change: the superuser, another recorded owner
        (:class:`SchemaInUse`, :class:`UserInUse`; any owner for a tenant without one),
        foreign objects (:class:`NotOwned`), and legacy objects that go with another
        tenant's names."""
        if found.role_super:
            raise InvalidName(f"the tenant user {tenant.user!r} is the existing superuser role "
                              f"{role!r}, not a tenant's; choose another name")
        if found.db_holder is not None and found.db_holder != tenant.owner:
            raise SchemaInUse(tenant.schema, found.db_holder, f"PostgreSQL database {db!r}")
        if found.role_holder is not None and found.role_holder != tenant.owner:
            raise UserInUse(tenant.user, found.role_holder, f"PostgreSQL role {role!r}")
        if found.role_oid is not None and not found.role_ours:
            raise not_owned("PostgreSQL role", role)
        if found.db_exists and not found.db_ours:
            raise not_owned("PostgreSQL database", db)
        if tenant.owner is None:
            return
        if found.role_oid is not None and found.role_holder is None and found.role_other_dbs:
            raise legacy_pair("PostgreSQL role", role, "it owns another database")
        if found.db_exists and found.db_holder is None and found.db_owner != found.role_oid:
            raise legacy_pair("PostgreSQL database", db, f"it is not owned by the role {role!r}")

    async def ensure_tenant(self, tenant: Tenant) -> None:
        """Refusals first; then the role (created and marked with the owner in one
        transaction; a legacy role is marked by :func:`adopt_role`), the database (CREATE
        DATABASE … OWNER the role: whoever creates it first holds it), grants, and the
        database's mark. Losing either CREATE to a concurrent ensure means reading again:
        another owner's object is refused, and a role this call made is dropped again."""
        if not tenant.password:
            raise DataStoreError("a PostgreSQL tenant needs a password")
        db, role = self.physical_names(tenant)
        D, R = sql.Identifier(db), sql.Identifier(role)
        doing = f"provisioning PostgreSQL tenant {db!r}"
        mark = MARKER if tenant.owner is None else owner_mark(tenant.owner)
        attributes = sql.SQL("WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}"
                             ).format(sql.Literal(tenant.password))
        mark_role = (sql.SQL("COMMENT ON ROLE {} IS {}").format(R, sql.Literal(mark)), ())
        created_role = False
        for attempt in range(ATTEMPTS):
            found = await self._inspect(doing, db, role)
            try:
                self._refuse(tenant, db, role, found)
                steps: list[tuple[Statement, tuple[Any, ...]]] = []
                if found.role_oid is None:
                    # Role DDL is transactional: the role exists only together with its mark.
                    await self._run(doing, [(sql.SQL("BEGIN"), ()),
                                            (sql.SQL("CREATE ROLE {} ").format(R) + attributes,
                                             ()),
                                            mark_role,
                                            (sql.SQL("COMMIT"), ())])
                    created_role = True
                else:
                    if found.role_comment != mark:
                        if tenant.owner is not None and found.role_holder is None:
                            steps.append((adopt_role(role, tenant.owner), ()))
                        else:
                            steps.append(mark_role)  # a tenant made before roles were marked
                    steps.append((sql.SQL("ALTER ROLE {} ").format(R) + attributes, ()))
                if found.db_exists:
                    steps.append((sql.SQL("ALTER DATABASE {} OWNER TO {}").format(D, R), ()))
                else:
                    steps.append((sql.SQL("CREATE DATABASE {} OWNER {}").format(D, R), ()))
                steps += [
                    # New databases let PUBLIC connect: only the tenant's role may.
                    (sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(D), ()),
                    (sql.SQL("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {} TO {}"
                             ).format(D, R), ()),
                    (sql.SQL("COMMENT ON DATABASE {} IS {}").format(D, sql.Literal(mark)), ()),
                ]
                await self._run(doing, steps)
                return
            except DataStoreError as e:
                held = _held_by(e)
                if held is None and _conflict(e) and attempt < ATTEMPTS - 1:
                    continue  # made by someone else meanwhile: read again
                refusal = e if held is None else UserInUse(tenant.user, held,
                                                           f"PostgreSQL role {role!r}")
                if created_role and isinstance(refusal, InUse | NotOwned):
                    # This call's role, made before it lost the database: it holds nothing.
                    await self._run(doing, [(sql.SQL("DROP ROLE IF EXISTS {}").format(R), ())])
                if refusal is e:
                    raise
                raise refusal from e
        raise AssertionError("unreachable")

    async def delete_tenant(self, tenant: Tenant) -> None:
        """Drops the database, then the role, each only if it is Haku's (see the module's
        docstring) and recorded as ``tenant.owner``'s or, legacy, of exactly this tenant's
        names; anything of someone else's (or another owner's) is left alone."""
        db, role = self.physical_names(tenant)
        D, R = sql.Identifier(db), sql.Identifier(role)
        doing = f"deleting PostgreSQL tenant {db!r}"
        found = await self._inspect(doing, db, role)
        owner = tenant.owner
        if owner is None:
            role_ours = found.role_ours and found.role_holder is None
            db_ours = found.db_ours and found.db_holder is None
        else:
            role_ours = found.role_holder == owner or (
                found.role_holder is None and found.role_ours and not found.role_other_dbs)
            db_ours = found.db_holder == owner or (
                found.db_holder is None and found.db_ours and role_ours
                and found.db_owner == found.role_oid)
        steps: list[tuple[Statement, tuple[Any, ...]]] = []
        if role_ours and found.role_comment != (MARKER if owner is None else owner_mark(owner)):
            # Legacy role: mark it first, so that a delete cut after DROP DATABASE still knows
            # the role is Haku's (and, with an owner, this owner's).
            steps.append((adopt_role(role, owner), ()) if owner is not None else (
                sql.SQL("COMMENT ON ROLE {} IS {}").format(R, sql.Literal(MARKER)), ()))
        if db_ours:
            steps.append((sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(D), ()))
        if role_ours:
            steps.append((sql.SQL("DROP ROLE IF EXISTS {}").format(R), ()))
        if not steps:
            return
        try:
            await self._run(doing, steps)
        except DataStoreError as e:
            if _held_by(e) is None:
                raise  # else another owner adopted the role meanwhile: not ours to drop

    async def verify_tenant(self, tenant: Tenant) -> bool:
        """One statement: the role and database exist, both marked for ``tenant.owner``, the
        database owned by the role, which may log in, is no superuser and holds CONNECT,
        CREATE and TEMPORARY on it, and PUBLIC cannot connect."""
        db, role = self.physical_names(tenant)
        (rows,) = await self._run(f"verifying PostgreSQL tenant {db!r}", [(sql.SQL(
            "SELECT shobj_description(r.oid, 'pg_authid'), "
            "shobj_description(d.oid, 'pg_database'), "
            "r.rolcanlogin AND NOT r.rolsuper AND d.datdba = r.oid "
            "AND has_database_privilege(r.oid, d.oid, 'CONNECT') "
            "AND has_database_privilege(r.oid, d.oid, 'CREATE') "
            "AND has_database_privilege(r.oid, d.oid, 'TEMPORARY') "
            "AND NOT has_database_privilege('public', d.oid, 'CONNECT') "
            "FROM (SELECT 1) AS one LEFT JOIN pg_roles r ON r.rolname = %s "
            "LEFT JOIN pg_database d ON d.datname = %s"), (role, db))])
        role_comment, db_comment, granted = rows[0]
        mark = MARKER if tenant.owner is None else owner_mark(tenant.owner)
        return role_comment == mark and db_comment == mark and bool(granted)

    async def holder(self, tenant: Tenant) -> tuple[str | None, str | None]:
        db, role = self.physical_names(tenant)
        found = await self._inspect(f"reading the owners of PostgreSQL tenant {db!r}", db, role)
        return found.db_holder, found.role_holder

    async def list_tenants(self) -> list[str]:
        (rows,) = await self._run("listing PostgreSQL tenants", [(
            sql.SQL("SELECT datname FROM pg_database "
                    "WHERE shobj_description(oid, 'pg_database') = %s "
                    "OR starts_with(shobj_description(oid, 'pg_database'), %s) "
                    "ORDER BY datname"),
            (MARKER, OWNER_MARK))])
        return [r[0] for r in rows]

    async def usage(self, tenant: Tenant) -> Usage:
        db, _ = self.physical_names(tenant)
        (size,) = await self._run(f"measuring PostgreSQL tenant {db!r}", [(
            sql.SQL("SELECT pg_database_size(oid) FROM pg_database WHERE datname = %s"),
            (db,))])
        if not size:
            raise DataStoreError(f"PostgreSQL tenant database {db!r} does not exist")
        rows = 0
        try:
            async with await psycopg.AsyncConnection.connect(
                    dbname=db, autocommit=True, **self.conninfo) as conn:
                cur = await conn.execute(kine_table.POSTGRES_TABLE_EXISTS)
                found = await cur.fetchone()
                if found and found[0]:
                    cur = await conn.execute("SELECT count(*) FROM public.kine")
                    counted = await cur.fetchone()
                    rows = int(counted[0]) if counted else 0
        except psycopg.Error as e:
            raise _map_error(e, f"counting rows of tenant {db!r}") from e
        return Usage(bytes=int(size[0][0]), keys=rows)

    async def _as_tenant(self, tenant: Tenant, doing: str) -> psycopg.AsyncConnection[Any]:
        """A connection to the tenant's database as the tenant's own role (snapshots read and
        write only what the tenant itself could; tables it creates are its own)."""
        db, role = self.physical_names(tenant)
        if not tenant.password:
            raise DataStoreError("a PostgreSQL tenant needs a password")
        info = {k: v for k, v in self.conninfo.items() if k not in ("sslcert", "sslkey")}
        info |= {"user": role, "password": tenant.password}
        try:
            return await psycopg.AsyncConnection.connect(dbname=db, **info)
        except psycopg.Error as e:
            raise _map_error(e, doing) from e

    async def snapshot(self, tenant: Tenant) -> AsyncIterator[Entry]:
        db, _ = self.physical_names(tenant)
        doing = f"reading a snapshot of PostgreSQL tenant {db!r}"
        conn = await self._as_tenant(tenant, doing)
        try:
            async with conn:
                await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
                await conn.set_read_only(True)
                async with conn.transaction():
                    cur = await conn.execute(kine_table.POSTGRES_TABLE_EXISTS)
                    exists = await cur.fetchone()
                    if not (exists and exists[0]):
                        return
                    after = 0
                    while True:
                        cur = await conn.execute(kine_table.SNAPSHOT_PAGE,
                                                 kine_table.snapshot_params(after))
                        rows = await cur.fetchall()
                        for row in rows:
                            yield kine_table.entry(row)
                        if len(rows) < kine_table.PAGE:
                            return
                        after = int(rows[-1][0])
        except psycopg.Error as e:
            raise _map_error(e, doing) from e

    async def load(self, tenant: Tenant, entries: AsyncIterable[Entry]) -> int:
        db, _ = self.physical_names(tenant)
        doing = f"loading PostgreSQL tenant {db!r}"
        conn = await self._as_tenant(tenant, doing)
        written = 0
        try:
            async with conn:
                await conn.set_autocommit(True)
                for statement in kine_table.POSTGRES_SCHEMA:
                    await conn.execute(statement)
                cur = await conn.execute(kine_table.ANY_KEY, (kine_table.LOW, kine_table.HIGH))
                if await cur.fetchone():
                    raise SpaceNotEmpty(f"the PostgreSQL database {db!r} already holds keys")
                cur = await conn.execute(kine_table.LAST_ID)
                last = await cur.fetchone()
                revisions = kine_table.Revisions(int(last[0]) if last else 0)
                batch: list[tuple[object, ...]] = []

                async def flush() -> None:
                    async with conn.transaction(), conn.cursor() as cur:
                        await cur.executemany(kine_table.INSERT, batch)
                    batch.clear()

                async for entry in entries:
                    batch.append(kine_table.insert_row(entry, revisions))
                    written += 1
                    if len(batch) >= kine_table.INSERT_BATCH:
                        await flush()
                if batch:
                    await flush()
                if written:
                    await conn.execute(kine_table.POSTGRES_RESYNC)
        except psycopg.Error as e:
            raise _map_error(e, doing) from e
        return written

    async def clear(self, tenant: Tenant) -> None:
        db, _ = self.physical_names(tenant)
        doing = f"clearing PostgreSQL tenant {db!r}"
        conn = await self._as_tenant(tenant, doing)
        try:
            async with conn:
                await conn.set_autocommit(True)
                cur = await conn.execute(kine_table.POSTGRES_TABLE_EXISTS)
                exists = await cur.fetchone()
                if exists and exists[0]:
                    await conn.execute(kine_table.CLEAR, (kine_table.LOW, kine_table.HIGH))
        except psycopg.Error as e:
            raise _map_error(e, doing) from e

    def tenant_connection(self, tenant: Tenant) -> TenantConnection:
        db, role = self.physical_names(tenant)
        if not tenant.password:
            raise DataStoreError("a PostgreSQL tenant needs a password")
        endpoint = (f"postgres://{quote(role, safe='')}:{quote(tenant.password, safe='')}"
                    f"@{self.settings.endpoints[0]}/{quote(db, safe='')}")
        files = {"ca.crt": self.settings.ca_cert} if self.settings.ca_cert else {}
        return TenantConnection(driver=self.driver, kine_endpoint=endpoint, files=files)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        self._files.cleanup()
