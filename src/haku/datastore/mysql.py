"""MySQL / MariaDB (MySQL protocol): one database and one user per tenant, reached by kine.

Account names and passwords travel as string literals escaped by PyMySQL (it honours
NO_BACKSLASH_ESCAPES); database names are backtick-quoted identifiers. In GRANT and REVOKE
the server reads ``_`` and ``%`` in a database name as wildcards (```w_x`.*`` would also cover
``wax``), so there they are escaped (``w\\_x``); CREATE and DROP take the name literally.
User names are kept within MySQL's 32-character limit, and to characters kine's DSN parser
takes literally, by stable derived names. MySQL 8 has no per-database comments, so Haku
records its tenants in a bookkeeping table, ``haku_meta.tenants``; tenants are granted nothing
on ``haku_meta`` (the isolation test checks that a tenant cannot open it). Names that would
reach the server's own databases or accounts are refused (:data:`RESERVED_DATABASES`,
:data:`RESERVED_USERS`). Only MariaDB is tested.

Ownership: ``haku_meta.tenants`` is also Haku's record of what it created. Its row is written
*first*, as the intent, before ``CREATE USER`` and ``CREATE DATABASE``, so no kill leaves an
unrecorded object of Haku's. An existing user (``'<user>'@'%'``) is Haku's iff a row names it
in ``user``, an existing database iff a row names it in ``db``; anything else under the
tenant's names is refused with :class:`~haku.datastore.base.NotOwned` before any change, and
delete drops only what the tenant's row records, deleting the row last.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import warnings
from typing import Any
from urllib.parse import quote

import aiomysql
import pymysql

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

DATABASE_CHARS = re.compile(r"[A-Za-z0-9_$-]+")
USER_CHARS = re.compile(r"[A-Za-z0-9_.-]+")
DATABASE_LIMIT = 64
USER_LIMIT = 32
META = "haku_meta"
PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX"
DSN_UNSAFE = re.compile(r"[@/:?\s]")
CONNECT_TIMEOUT = 10
RESERVED_DATABASES = ("mysql", "sys", "information_schema", "performance_schema", META)
RESERVED_USERS = ("root", "mysql.sys", "mariadb.sys", "mysql.session", "mysql.infoschema",
                  "PUBLIC")


def quote_identifier(name: str) -> str:
    if "\0" in name:
        raise DataStoreError("MySQL identifiers cannot hold NUL")
    return "`" + name.replace("`", "``") + "`"


def grant_identifier(database: str) -> str:
    """``database`` quoted for the ``ON <db>.*`` of GRANT and REVOKE, where the server treats
    ``_`` and ``%`` as wildcards: escaped, so a grant covers exactly this one database."""
    escaped = database.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%")
    return quote_identifier(escaped)


def check_password(password: str | None) -> str:
    if not password:
        raise DataStoreError("a MySQL tenant needs a password")
    if DSN_UNSAFE.search(password):
        raise DataStoreError("a MySQL tenant password must hold no @ / : ? or spaces "
                             "(kine's DSN cannot carry them)")
    return password


# What ensure_tenant and delete_tenant need, server-wide: users, databases (and haku_meta),
# the tenant PRIVILEGES to pass on, and GRANT OPTION to pass them.
ADMIN_PRIVILEGES = ("CREATE USER", "CREATE", "DROP", "SELECT", "INSERT", "UPDATE", "DELETE",
                    "ALTER", "INDEX", "GRANT OPTION")
_QUOTED = re.compile(r"`(?:[^`]|``)*`|'(?:[^'\\]|\\.|'')*'")
_GLOBAL_GRANT = re.compile(r"GRANT (.+?) ON \*\.\* TO ", re.IGNORECASE)


def missing_admin_privileges(grants: list[str]) -> list[str]:
    """Which of :data:`ADMIN_PRIVILEGES` the ``SHOW GRANTS`` lines ``grants`` do not hold on
    ``*.*``. INSERT, UPDATE and DELETE on ``*.*`` stand for CREATE USER, as on the server
    (they cover the ``mysql`` database). Privileges that come only through a role are not
    seen."""
    held: set[str] = set()
    for line in grants:
        bare = _QUOTED.sub("``", line)  # names and password hashes cannot fake a keyword
        found = _GLOBAL_GRANT.match(bare)
        if not found:
            continue
        privileges = {p.strip().upper() for p in found.group(1).split(",")}
        if "ALL PRIVILEGES" in privileges or "ALL" in privileges:
            privileges |= set(ADMIN_PRIVILEGES) - {"GRANT OPTION"}
        if " WITH GRANT OPTION" in bare.upper():
            privileges.add("GRANT OPTION")
        held |= privileges
    if {"INSERT", "UPDATE", "DELETE"} <= held:
        held.add("CREATE USER")  # writes to the mysql database do what CREATE USER allows
    return [p for p in ADMIN_PRIVILEGES if p not in held]


def _map_error(e: Exception, doing: str) -> DataStoreError:
    text = f"{doing}: {e}"
    code = e.args[0] if e.args and isinstance(e.args[0], int) else None
    if isinstance(e, ssl.SSLError) or "ssl" in str(e).lower():
        return TLSFailure(text)
    if code in (1045, 1698):  # access denied for user (wrong password)
        return AuthenticationFailed(text)
    if code in (1044, 1142, 1227, 1410):  # no privilege
        return PermissionDenied(text)
    if code == 2003 or isinstance(e, OSError | TimeoutError):
        return Unreachable(text)
    return DataStoreError(text)


class MySQLDriver:
    driver = "MySQL"

    def __init__(self, settings: Settings) -> None:
        if not settings.username:
            raise DataStoreError(f"DataStore {settings.name}: MySQL needs basicAuth")
        self.settings = settings
        host, port = settings.endpoints[0].rsplit(":", 1)
        self.host, self.port = host.strip("[]"), int(port)
        check_tls_material(ca_cert=settings.ca_cert, client_cert=settings.client_cert,
                           client_key=settings.client_key)
        self._files = PrivateFiles("haku-mysql-")
        self.tls: ssl.SSLContext | None = None
        if settings.ca_cert:
            self.tls = ssl.create_default_context(cadata=settings.ca_cert.decode())
            if settings.client_cert and settings.client_key:
                self.tls.load_cert_chain(self._files.write("tls.crt", settings.client_cert),
                                         self._files.write("tls.key", settings.client_key))
        self._lock = asyncio.Lock()
        self._conn: aiomysql.Connection | None = None
        self._meta_ready = False

    async def _connection(self, doing: str) -> aiomysql.Connection:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = await aiomysql.connect(
                    host=self.host, port=self.port, user=self.settings.username,
                    password=self.settings.password or "", ssl=self.tls, autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT, charset="utf8mb4")
            except (TimeoutError, pymysql.Error, OSError) as e:
                raise _map_error(e, doing) from e
        return self._conn

    async def _run(self, doing: str, statements: list[tuple[str, tuple[Any, ...]]]
                   ) -> list[list[tuple[Any, ...]]]:
        async with self._lock:
            conn = await self._connection(doing)
            results = []
            try:
                async with conn.cursor() as cur:
                    with warnings.catch_warnings():  # "IF NOT EXISTS" no-ops warn
                        warnings.simplefilter("ignore", pymysql.Warning)
                        for statement, params in statements:
                            await cur.execute(statement, params or None)
                            results.append(list(await cur.fetchall()))
            except (pymysql.Error, OSError) as e:
                if isinstance(e, pymysql.OperationalError | OSError):
                    self._conn = None  # reconnect next time
                raise _map_error(e, doing) from e
            return results

    def physical_names(self, tenant: Tenant) -> tuple[str, str]:
        """(database, user); :class:`InvalidName` for the server's own databases and
        accounts, including Haku's (checked before any statement runs)."""
        db = physical_name(tenant.schema, DATABASE_LIMIT, DATABASE_CHARS)
        user = physical_name(tenant.user, USER_LIMIT, USER_CHARS)
        refuse_reserved(db, tenant.schema, "schema (MySQL database)", RESERVED_DATABASES,
                        casefold=True)
        refuse_reserved(user, tenant.user, "user (MySQL account)",
                        (*RESERVED_USERS, self.settings.username or "root"), casefold=True)
        return db, user

    async def check(self) -> str:
        """Reachable, the password accepted, and on ``*.*`` every privilege Haku uses (or
        grants) with GRANT OPTION: :data:`ADMIN_PRIVILEGES`."""
        version, grants = await self._run("checking MySQL", [
            ("SELECT VERSION()", ()), ("SHOW GRANTS FOR CURRENT_USER()", ())])
        missing = missing_admin_privileges([str(g[0]) for g in grants])
        if missing:
            raise PermissionDenied(
                f"MySQL user {self.settings.username!r} lacks {', '.join(missing)} on *.*: "
                f"Haku needs {', '.join(ADMIN_PRIVILEGES)} on *.* WITH GRANT OPTION (or ALL "
                "PRIVILEGES WITH GRANT OPTION) to create tenants' users, databases and grants")
        return f"MySQL {version[0][0]}"

    async def _ensure_meta(self) -> None:
        if self._meta_ready:
            return
        await self._run("preparing haku_meta", [
            (f"CREATE DATABASE IF NOT EXISTS {quote_identifier(META)}", ()),
            (f"CREATE TABLE IF NOT EXISTS {quote_identifier(META)}.tenants ("
             "db VARCHAR(64) NOT NULL PRIMARY KEY, user VARCHAR(80) NOT NULL, "
             "logical_schema TEXT NOT NULL, logical_user TEXT NOT NULL) "
             "CHARACTER SET utf8mb4", ()),
        ])
        self._meta_ready = True

    async def _inspect(self, doing: str, db: str, user: str
                       ) -> tuple[bool, bool, list[tuple[str, str]]]:
        """Read only: whether the user ``'<user>'@'%'`` and the database exist, and the
        ``haku_meta.tenants`` rows (db, user) that name either."""
        users, dbs, rows = await self._run(doing, [
            ("SELECT 1 FROM mysql.user WHERE User = %s AND Host = '%%'", (user,)),
            ("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (db,)),
            (f"SELECT db, user FROM {quote_identifier(META)}.tenants "
             "WHERE db = %s OR user = %s", (db, user)),
        ])
        return bool(users), bool(dbs), [(str(r[0]), str(r[1])) for r in rows]

    async def ensure_tenant(self, tenant: Tenant) -> None:
        password = check_password(tenant.password)  # before any statement
        db, user = self.physical_names(tenant)
        await self._ensure_meta()
        doing = f"provisioning MySQL tenant {db!r}"
        user_exists, db_exists, rows = await self._inspect(doing, db, user)
        # Every refusal comes before the first change.
        variants = {d for d, _ in rows if d != db and d.casefold() == db.casefold()}
        if variants:
            # The table's key ignores case: the row written below would overwrite theirs.
            raise InvalidName(
                f"the tenant schema {tenant.schema!r} (MySQL database {db!r}) differs only in "
                f"case from the tenant database {sorted(variants)[0]!r}, which Haku's "
                "bookkeeping cannot tell apart; choose another name")
        if user_exists and not any(u == user for _, u in rows):
            raise not_owned("MySQL user", f"{user}@%")
        if db_exists and not any(d == db for d, _ in rows):
            raise not_owned("MySQL database", db)
        # The intent first: from here on, whatever exists under these names is recorded.
        await self._run(doing, [(
            f"INSERT INTO {quote_identifier(META)}.tenants VALUES (%s, %s, %s, %s) "
            "ON DUPLICATE KEY UPDATE user = VALUES(user)",
            (db, user, tenant.schema, tenant.user))])
        if grant_identifier(db) != quote_identifier(db):
            # Earlier Haku granted on the unescaped name, a wildcard: revoke such a grant.
            (legacy,) = await self._run(doing, [(
                "SELECT 1 FROM mysql.db WHERE Host = '%%' AND User = %s AND Db = %s",
                (user, db))])
            if legacy:
                await self._run(doing, [(
                    f"REVOKE ALL PRIVILEGES ON {quote_identifier(db)}.* FROM %s@'%%'", (user,))])
        # Without IF NOT EXISTS: an account or database someone made since the read above
        # makes CREATE fail instead of being taken over.
        steps: list[tuple[str, tuple[Any, ...]]] = [
            ("ALTER USER %s@'%%' IDENTIFIED BY %s" if user_exists else
             "CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))]
        if not db_exists:
            steps.append((f"CREATE DATABASE {quote_identifier(db)} CHARACTER SET utf8mb4", ()))
        steps.append((f"GRANT {PRIVILEGES} ON {grant_identifier(db)}.* TO %s@'%%'", (user,)))
        await self._run(doing, steps)

    async def delete_tenant(self, tenant: Tenant) -> None:
        """Drops only what the tenant's ``haku_meta.tenants`` row records (the user only if
        no other tenant's row names it too), then the row; anything else is left alone."""
        db, user = self.physical_names(tenant)
        await self._ensure_meta()
        doing = f"deleting MySQL tenant {db!r}"
        _, _, rows = await self._inspect(doing, db, user)
        own = [u for d, u in rows if d == db]
        if not own:
            return  # nothing here is Haku's
        shared = [d for d, u in rows if u == user and d != db]
        steps: list[tuple[str, tuple[Any, ...]]] = [
            (f"DROP DATABASE IF EXISTS {quote_identifier(db)}", ())]
        if own[0] == user and not shared:
            steps.append(("DROP USER IF EXISTS %s@'%%'", (user,)))
        steps.append((f"DELETE FROM {quote_identifier(META)}.tenants WHERE db = %s", (db,)))
        await self._run(doing, steps)

    async def list_tenants(self) -> list[str]:
        await self._ensure_meta()
        (rows,) = await self._run("listing MySQL tenants", [
            (f"SELECT db FROM {quote_identifier(META)}.tenants ORDER BY db", ())])
        return [str(r[0]) for r in rows]

    async def usage(self, tenant: Tenant) -> Usage:
        db, _ = self.physical_names(tenant)
        exists, size, has_kine = await self._run(f"measuring MySQL tenant {db!r}", [
            ("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (db,)),
            ("SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES "
             "WHERE TABLE_SCHEMA = %s", (db,)),
            ("SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
             "AND TABLE_NAME = 'kine'", (db,)),
        ])
        if not exists:
            raise DataStoreError(f"MySQL tenant database {db!r} does not exist")
        rows = 0
        if has_kine:
            (count,) = await self._run(f"counting rows of tenant {db!r}", [
                (f"SELECT COUNT(*) FROM {quote_identifier(db)}.kine", ())])
            rows = int(count[0][0])
        return Usage(bytes=int(size[0][0]), keys=rows)

    def tenant_connection(self, tenant: Tenant) -> TenantConnection:
        db, user = self.physical_names(tenant)
        password = check_password(tenant.password)
        endpoint = (f"mysql://{user}:{password}@tcp({self.settings.endpoints[0]})"
                    f"/{quote(db, safe='')}")
        files = {"ca.crt": self.settings.ca_cert} if self.settings.ca_cert else {}
        return TenantConnection(driver=self.driver, kine_endpoint=endpoint, files=files)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._files.cleanup()
