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
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import pq, sql

from haku.datastore.base import (
    AuthenticationFailed,
    DataStoreError,
    InvalidName,
    PermissionDenied,
    PrivateFiles,
    Tenant,
    TenantConnection,
    TLSFailure,
    Unreachable,
    Usage,
    check_tls_material,
    not_owned,
    physical_name,
    refuse_reserved,
)
from haku.datastore.settings import Settings

# kine lowercases the database path of its endpoint, so tenant databases are lower case.
DATABASE_CHARS = re.compile(r"[^\x00-\x1f\x7fA-Z]+")
ROLE_CHARS = re.compile(r"[^\x00-\x1f\x7f]+")
NAME_LIMIT = 63  # NAMEDATALEN - 1: longer names are silently truncated by the server
MARKER = "haku-tenant"
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


@dataclass(frozen=True)
class Found:
    """What the server holds under a tenant's names, and which of it is Haku's."""

    role_oid: int | None  # None: no such role
    role_super: bool
    role_marked: bool
    db_exists: bool
    db_owner: int | None
    db_marked: bool

    @property
    def role_ours(self) -> bool:
        """Marked, or (legacy, before roles were marked) the owner of the tenant's database
        that carries the marker."""
        return self.role_oid is not None and (self.role_marked or (
            self.db_exists and self.db_marked and self.db_owner == self.role_oid))

    @property
    def db_ours(self) -> bool:
        """Marked, or owned by the tenant's own Haku role (a kill between CREATE DATABASE
        and its COMMENT)."""
        return self.db_exists and (self.db_marked or (
            self.role_ours and self.db_owner == self.role_oid))


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
        """Read only: the role and database under the tenant's names, and their markers."""
        roles, dbs = await self._run(doing, [
            (sql.SQL("SELECT oid, rolsuper, shobj_description(oid, 'pg_authid') "
                     "FROM pg_roles WHERE rolname = %s"), (role,)),
            (sql.SQL("SELECT datdba, shobj_description(oid, 'pg_database') "
                     "FROM pg_database WHERE datname = %s"), (db,)),
        ])
        return Found(role_oid=int(roles[0][0]) if roles else None,
                     role_super=bool(roles and roles[0][1]),
                     role_marked=bool(roles and roles[0][2] == MARKER),
                     db_exists=bool(dbs), db_owner=int(dbs[0][0]) if dbs else None,
                     db_marked=bool(dbs and dbs[0][1] == MARKER))

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

    async def ensure_tenant(self, tenant: Tenant) -> None:
        if not tenant.password:
            raise DataStoreError("a PostgreSQL tenant needs a password")
        db, role = self.physical_names(tenant)
        D, R = sql.Identifier(db), sql.Identifier(role)
        doing = f"provisioning PostgreSQL tenant {db!r}"
        found = await self._inspect(doing, db, role)
        # Every refusal comes before the first change.
        if found.role_super:
            raise InvalidName(f"the tenant user {tenant.user!r} is the existing superuser role "
                              f"{role!r}, not a tenant's; choose another name")
        if found.role_oid is not None and not found.role_ours:
            raise not_owned("PostgreSQL role", role)
        if found.db_exists and not found.db_ours:
            raise not_owned("PostgreSQL database", db)
        attributes = sql.SQL("WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}"
                             ).format(sql.Literal(tenant.password))
        mark_role = (sql.SQL("COMMENT ON ROLE {} IS {}").format(R, sql.Literal(MARKER)), ())
        steps: list[tuple[Statement, tuple[Any, ...]]]
        if found.role_oid is None:
            # Role DDL is transactional: the role exists only together with its marker.
            steps = [(sql.SQL("BEGIN"), ()),
                     (sql.SQL("CREATE ROLE {} ").format(R) + attributes, ()),
                     mark_role,
                     (sql.SQL("COMMIT"), ())]
        else:
            steps = [(sql.SQL("ALTER ROLE {} ").format(R) + attributes, ())]
            if not found.role_marked:
                steps.append(mark_role)  # a tenant made before roles were marked
        if found.db_exists:
            steps.append((sql.SQL("ALTER DATABASE {} OWNER TO {}").format(D, R), ()))
        else:
            steps.append((sql.SQL("CREATE DATABASE {} OWNER {}").format(D, R), ()))
        steps += [
            # New databases let PUBLIC connect: only the tenant's role may.
            (sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(D), ()),
            (sql.SQL("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {} TO {}").format(D, R), ()),
            (sql.SQL("COMMENT ON DATABASE {} IS {}").format(D, sql.Literal(MARKER)), ()),
        ]
        await self._run(doing, steps)

    async def delete_tenant(self, tenant: Tenant) -> None:
        """Drops the database and the role only if they are Haku's (see the module's
        docstring); a role or database of someone else's under these names is left alone."""
        db, role = self.physical_names(tenant)
        D, R = sql.Identifier(db), sql.Identifier(role)
        doing = f"deleting PostgreSQL tenant {db!r}"
        found = await self._inspect(doing, db, role)
        steps: list[tuple[Statement, tuple[Any, ...]]] = []
        if found.role_ours and not found.role_marked:
            # Legacy role, Haku's only through the database about to go: mark it first, so
            # a delete cut after DROP DATABASE still knows the role is Haku's.
            steps.append((sql.SQL("COMMENT ON ROLE {} IS {}").format(R, sql.Literal(MARKER)),
                          ()))
        if found.db_ours:
            steps.append((sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(D), ()))
        if found.role_ours:
            steps.append((sql.SQL("DROP ROLE IF EXISTS {}").format(R), ()))
        if steps:
            await self._run(doing, steps)

    async def list_tenants(self) -> list[str]:
        (rows,) = await self._run("listing PostgreSQL tenants", [(
            sql.SQL("SELECT datname FROM pg_database "
                    "WHERE shobj_description(oid, 'pg_database') = %s ORDER BY datname"),
            (MARKER,))])
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
                cur = await conn.execute("SELECT to_regclass('public.kine') IS NOT NULL")
                found = await cur.fetchone()
                if found and found[0]:
                    cur = await conn.execute("SELECT count(*) FROM public.kine")
                    counted = await cur.fetchone()
                    rows = int(counted[0]) if counted else 0
        except psycopg.Error as e:
            raise _map_error(e, f"counting rows of tenant {db!r}") from e
        return Usage(bytes=int(size[0][0]), keys=rows)

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
