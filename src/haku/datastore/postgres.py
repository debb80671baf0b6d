"""PostgreSQL: one database and one login role per tenant, reached by kine.

Statements are composed with ``psycopg.sql`` (identifiers and literals quoted by psycopg),
never by string formatting. Unlike Kamaji, CONNECT is revoked from PUBLIC, so one tenant's
role cannot even open another tenant's database. Names that would reach the server's own
databases or roles (``postgres``, ``template0/1``, ``pg_*``, the DataStore's admin role) are
refused before any statement. Known limit: PUBLIC keeps its default CONNECT on ``postgres``
and ``template1`` (Haku does not change server-wide defaults), so a tenant role can connect
there and list database and role names; see docs/datastores.md for the hardening.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

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
            except psycopg.Error as e:
                raise _map_error(e, doing) from e
            return results

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
        role_exists, db_exists = await self._run(doing, [
            (sql.SQL("SELECT rolsuper FROM pg_roles WHERE rolname = %s"), (role,)),
            (sql.SQL("SELECT 1 FROM pg_database WHERE datname = %s"), (db,)),
        ])
        if role_exists and role_exists[0][0]:
            raise InvalidName(f"the tenant user {tenant.user!r} is the existing superuser role "
                              f"{role!r}, not a tenant's; choose another name")
        verb = "ALTER" if role_exists else "CREATE"
        steps: list[tuple[Statement, tuple[Any, ...]]] = [(
            sql.SQL(verb + " ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                    "PASSWORD {}").format(R, sql.Literal(tenant.password)), ())]
        if db_exists:
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
        db, role = self.physical_names(tenant)
        await self._run(f"deleting PostgreSQL tenant {db!r}", [
            (sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)), ()),
            (sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)), ()),
        ])

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
