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

Which tenant owns them: with an owner, ``haku_meta.owners`` holds ``(kind, name, owner)`` rows
for the database and the user, names compared exactly (VARBINARY), claimed in one transaction
(``INSERT IGNORE`` both, read back, commit only if both are this owner's) before anything is
created and deleted last; such tenants write no ``haku_meta.tenants`` row, whose rows are then
legacy (adopted by the first owner whose names they match exactly).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import warnings
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiomysql
import pymysql

from haku.datastore import kine_table
from haku.datastore.base import (
    AuthenticationFailed,
    DataStoreError,
    Entry,
    InvalidName,
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

DATABASE_CHARS = re.compile(r"[A-Za-z0-9_$-]+")
USER_CHARS = re.compile(r"[A-Za-z0-9_.-]+")
DATABASE_LIMIT = 64
USER_LIMIT = 32
META = "haku_meta"
OWNERS = f"`{META}`.owners"
TENANTS = f"`{META}`.tenants"
NO_SUCH_TABLE = 1146
DEADLOCK, LOCK_WAIT_TIMEOUT = 1213, 1205
CLAIM_ATTEMPTS = 6
PRIVILEGE_COLUMNS = ("Select_priv", "Insert_priv", "Update_priv", "Delete_priv", "Create_priv",
                     "Alter_priv", "Index_priv")  # PRIVILEGES, as mysql.db holds them
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


def grant_pattern(database: str) -> str:
    """``database`` as GRANT stores it in ``mysql.db``: ``_`` and ``%`` (wildcards there)
    and ``\\`` escaped, so a grant covers exactly this one database."""
    return database.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%")


def grant_identifier(database: str) -> str:
    """``database`` quoted for the ``ON <db>.*`` of GRANT and REVOKE, where the server treats
    ``_`` and ``%`` as wildcards: escaped, so a grant covers exactly this one database."""
    return quote_identifier(grant_pattern(database))


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


@dataclass(frozen=True)
class Look:
    """What the server holds under a tenant's names, and what Haku recorded of them."""

    user_exists: bool
    db_exists: bool
    schema_owner: str | None
    user_owner: str | None
    rows: list[tuple[str, str]]  # haku_meta.tenants (db, user) naming either, any case


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes | bytearray) else value


def _code(e: DataStoreError) -> int | None:
    cause = e.__cause__
    if cause is not None and cause.args and isinstance(cause.args[0], int):
        return int(cause.args[0])
    return None


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
            except BaseException:
                # Cancelled mid-statement (a reconcile's deadline, a lost Lease): the
                # connection may still owe a result; never reuse it.
                self._conn = None
                conn.close()
                raise
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
            # Owner records: binary names, so that no collation makes `S` and `s` one row.
            (f"CREATE TABLE IF NOT EXISTS {OWNERS} ("
             "kind VARCHAR(6) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, "
             "name VARBINARY(255) NOT NULL, owner VARBINARY(64) NOT NULL, "
             "PRIMARY KEY (kind, name)) ENGINE=InnoDB", ()),
        ])
        self._meta_ready = True

    async def _inspect(self, doing: str, db: str, user: str) -> Look:
        """Read only: whether the user ``'<user>'@'%'`` and the database exist (exact names),
        the owners recorded for them, and the ``haku_meta.tenants`` rows (db, user) that name
        either (the table compares without regard to case: callers compare exactly)."""
        users, dbs, owners, rows = await self._run(doing, [
            ("SELECT 1 FROM mysql.user WHERE User = %s AND Host = '%%'", (user,)),
            ("SELECT 1 FROM information_schema.SCHEMATA WHERE BINARY SCHEMA_NAME = %s", (db,)),
            (f"SELECT kind, owner FROM {OWNERS} "
             "WHERE (kind = 'schema' AND name = %s) OR (kind = 'user' AND name = %s)",
             (db, user)),
            (f"SELECT db, user FROM {TENANTS} WHERE db = %s OR user = %s",
             (db, user)),
        ])
        held = {str(kind): _text(owner) for kind, owner in owners}
        return Look(user_exists=bool(users), db_exists=bool(dbs),
                    schema_owner=held.get("schema"), user_owner=held.get("user"),
                    rows=[(str(r[0]), str(r[1])) for r in rows])

    @staticmethod
    def _refuse_held(tenant: Tenant, db: str, user: str, schema_owner: str | None,
                     user_owner: str | None) -> None:
        """Another owner (any owner, for a tenant without one) recorded for the database or
        the user: :class:`SchemaInUse` or :class:`UserInUse`."""
        if schema_owner is not None and schema_owner != tenant.owner:
            raise SchemaInUse(tenant.schema, schema_owner, f"MySQL database {db!r}")
        if user_owner is not None and user_owner != tenant.owner:
            raise UserInUse(tenant.user, user_owner, f"MySQL user {user!r}")

    async def _claim(self, doing: str, owner: str, db: str, user: str
                     ) -> tuple[str | None, str | None]:
        """Record ``owner`` for the database and the user, atomically, first writer wins:
        in one transaction, ``INSERT IGNORE`` both rows, read them back (locking), and commit
        only if both are ``owner``'s, else roll back, so a loser records nothing. Returns the
        owners then recorded (database, user)."""
        async with self._lock:
            for attempt in range(CLAIM_ATTEMPTS):
                conn = await self._connection(doing)
                try:
                    async with conn.cursor() as cur:
                        with warnings.catch_warnings():  # INSERT IGNORE of a duplicate warns
                            warnings.simplefilter("ignore", pymysql.Warning)
                            await cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                            await cur.execute("START TRANSACTION")
                            await cur.execute(
                                f"INSERT IGNORE INTO {OWNERS} (kind, name, owner) "
                                "VALUES ('schema', %s, %s), ('user', %s, %s)",
                                (db, owner, user, owner))
                            await cur.execute(
                                f"SELECT kind, owner FROM {OWNERS} "
                                "WHERE (kind = 'schema' AND name = %s) "
                                "OR (kind = 'user' AND name = %s) LOCK IN SHARE MODE",
                                (db, user))
                            held = {str(k): _text(o) for k, o in await cur.fetchall()}
                            won = held.get("schema") == owner and held.get("user") == owner
                            await cur.execute("COMMIT" if won else "ROLLBACK")
                    return held.get("schema"), held.get("user")
                except (pymysql.Error, OSError) as e:
                    self._conn = None  # the server rolls back what the connection held
                    conn.close()
                    code = e.args[0] if e.args else None
                    if code in (DEADLOCK, LOCK_WAIT_TIMEOUT) and attempt < CLAIM_ATTEMPTS - 1:
                        await asyncio.sleep(0.01 * 2**attempt)
                        continue
                    raise _map_error(e, doing) from e
                except BaseException:
                    self._conn = None  # cut mid-transaction: never reuse the connection
                    conn.close()
                    raise
        raise AssertionError("unreachable")

    async def ensure_tenant(self, tenant: Tenant) -> None:
        password = check_password(tenant.password)  # before any statement
        db, user = self.physical_names(tenant)
        await self._ensure_meta()
        doing = f"provisioning MySQL tenant {db!r}"
        look = await self._inspect(doing, db, user)
        rows = look.rows
        # Every refusal comes before the first change.
        self._refuse_held(tenant, db, user, look.schema_owner, look.user_owner)
        if tenant.owner is None:
            variants = {d for d, _ in rows if d != db and d.casefold() == db.casefold()}
            if variants:
                # The table's key ignores case: the row written below would overwrite theirs.
                raise InvalidName(
                    f"the tenant schema {tenant.schema!r} (MySQL database {db!r}) differs only "
                    f"in case from the tenant database {sorted(variants)[0]!r}, which Haku's "
                    "bookkeeping cannot tell apart; choose another name")
        if look.user_owner is None:
            if look.user_exists and not any(u == user for _, u in rows):
                raise not_owned("MySQL user", f"{user}@%")
            others = sorted(d for d, u in rows if u == user and d != db)
            if tenant.owner is not None and others:
                raise legacy_pair("MySQL user", user, f"recorded with the database {others[0]!r}")
        if look.schema_owner is None:
            if look.db_exists and not any(d == db for d, _ in rows):
                raise not_owned("MySQL database", db)
            others = sorted(u for d, u in rows if d == db and u != user)
            if tenant.owner is not None and others:
                raise legacy_pair("MySQL database", db, f"recorded with the user {others[0]!r}")
        # The intent first: from here on, whatever exists under these names is recorded.
        if tenant.owner is None:
            await self._run(doing, [(
                f"INSERT INTO {TENANTS} VALUES (%s, %s, %s, %s) "
                "ON DUPLICATE KEY UPDATE user = VALUES(user)",
                (db, user, tenant.schema, tenant.user))])
        elif (look.schema_owner, look.user_owner) != (tenant.owner, tenant.owner):
            schema_owner, user_owner = await self._claim(doing, tenant.owner, db, user)
            self._refuse_held(tenant, db, user, schema_owner, user_owner)
            if (schema_owner, user_owner) != (tenant.owner, tenant.owner):
                raise DataStoreError(f"{doing}: the owner records did not hold")
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
            ("ALTER USER %s@'%%' IDENTIFIED BY %s" if look.user_exists else
             "CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))]
        if not look.db_exists:
            steps.append((f"CREATE DATABASE {quote_identifier(db)} CHARACTER SET utf8mb4", ()))
        steps.append((f"GRANT {PRIVILEGES} ON {grant_identifier(db)}.* TO %s@'%%'", (user,)))
        await self._run(doing, steps)

    async def delete_tenant(self, tenant: Tenant) -> None:
        """With an owner: drops the database and the user each only if recorded as this
        owner's, or legacy (no owner recorded) with a ``haku_meta.tenants`` row of exactly
        these names; then that row, then the owner records. Without an owner (Haku before
        owners): what the tenant's row records (the user only if no other row names it),
        then the row, never anything recorded for an owner."""
        db, user = self.physical_names(tenant)
        await self._ensure_meta()
        doing = f"deleting MySQL tenant {db!r}"
        look = await self._inspect(doing, db, user)
        rows = look.rows
        steps: list[tuple[str, tuple[Any, ...]]] = []
        if tenant.owner is None:
            own = [u for d, u in rows if d == db]
            if not own or look.schema_owner is not None:
                return  # nothing here is Haku's, or it is an owner's
            shared = [d for d, u in rows if u == user and d != db]
            steps.append((f"DROP DATABASE IF EXISTS {quote_identifier(db)}", ()))
            if own[0] == user and not shared and look.user_owner is None:
                steps.append(("DROP USER IF EXISTS %s@'%%'", (user,)))
            steps.append((f"DELETE FROM {TENANTS} WHERE db = %s", (db,)))
            await self._run(doing, steps)
            return
        with_db = [u for d, u in rows if d == db]
        with_user = [d for d, u in rows if u == user]
        schema_ours = look.schema_owner == tenant.owner or (
            look.schema_owner is None and bool(with_db) and all(u == user for u in with_db))
        user_ours = look.user_owner == tenant.owner or (
            look.user_owner is None and bool(with_user) and all(d == db for d in with_user))
        if schema_ours:
            steps.append((f"DROP DATABASE IF EXISTS {quote_identifier(db)}", ()))
        if user_ours:
            steps.append(("DROP USER IF EXISTS %s@'%%'", (user,)))
        if schema_ours and (db, user) in rows:
            steps.append((f"DELETE FROM {TENANTS} "
                          "WHERE BINARY db = %s AND BINARY user = %s", (db, user)))
        # The owner records last: a delete cut before here is resumed by the next one.
        for kind, name, held in (("schema", db, look.schema_owner),
                                 ("user", user, look.user_owner)):
            if held == tenant.owner:
                steps.append((f"DELETE FROM {OWNERS} "
                              "WHERE kind = %s AND name = %s AND owner = %s",
                              (kind, name, tenant.owner)))
        if steps:
            await self._run(doing, steps)

    async def verify_tenant(self, tenant: Tenant) -> bool:
        """One statement: the owner records (or, without an owner, the legacy row), the user
        and the database (exact names) and every privilege of :data:`PRIVILEGES` granted on
        exactly that database."""
        db, user = self.physical_names(tenant)
        granted = " AND ".join(f"{c} = 'Y'" for c in PRIVILEGE_COLUMNS)
        try:
            (rows,) = await self._run(f"verifying MySQL tenant {db!r}", [(
                f"SELECT (SELECT owner FROM {OWNERS} WHERE kind = 'schema' AND name = %s), "
                f"(SELECT owner FROM {OWNERS} WHERE kind = 'user' AND name = %s), "
                f"(SELECT COUNT(*) FROM {TENANTS} WHERE BINARY db = %s AND BINARY user = %s), "
                "(SELECT COUNT(*) FROM mysql.user WHERE User = %s AND Host = '%%'), "
                "(SELECT COUNT(*) FROM information_schema.SCHEMATA "
                "WHERE BINARY SCHEMA_NAME = %s), "
                "(SELECT COUNT(*) FROM mysql.db WHERE Host = '%%' AND User = %s "
                f"AND BINARY Db = %s AND {granted})",
                (db, user, db, user, user, db, user, grant_pattern(db)))])
        except DataStoreError as e:
            if _code(e) == NO_SUCH_TABLE:
                return False  # haku_meta was never made: nothing is recorded
            raise
        schema_owner, user_owner, legacy, users, dbs, grants = rows[0]
        if tenant.owner is None:
            recorded = schema_owner is None and user_owner is None and bool(legacy)
        else:
            recorded = _text(schema_owner) == tenant.owner == _text(user_owner)
        return recorded and bool(users) and bool(dbs) and bool(grants)

    async def holder(self, tenant: Tenant) -> tuple[str | None, str | None]:
        db, user = self.physical_names(tenant)
        try:
            (rows,) = await self._run(f"reading the owners of MySQL tenant {db!r}", [(
                f"SELECT kind, owner FROM {OWNERS} "
                "WHERE (kind = 'schema' AND name = %s) OR (kind = 'user' AND name = %s)",
                (db, user))])
        except DataStoreError as e:
            if _code(e) == NO_SUCH_TABLE:
                return None, None
            raise
        held = {str(kind): _text(owner) for kind, owner in rows}
        return held.get("schema"), held.get("user")

    async def list_tenants(self) -> list[str]:
        await self._ensure_meta()
        (rows,) = await self._run("listing MySQL tenants", [
            (f"SELECT db FROM {TENANTS} UNION ALL "
             f"SELECT CAST(name AS CHAR CHARACTER SET utf8mb4) FROM {OWNERS} "
             "WHERE kind = 'schema' ORDER BY 1", ())])
        return sorted({str(r[0]) for r in rows})

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

    async def _as_tenant(self, tenant: Tenant, doing: str) -> aiomysql.Connection:
        """A connection to the tenant's database as the tenant's own user (snapshots read and
        write only what the tenant itself could)."""
        db, user = self.physical_names(tenant)
        tls = None
        if self.settings.ca_cert:
            tls = ssl.create_default_context(cadata=self.settings.ca_cert.decode())
        try:
            return await aiomysql.connect(
                host=self.host, port=self.port, user=user, password=tenant.password or "",
                db=db, ssl=tls, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                charset="utf8mb4")
        except (TimeoutError, pymysql.Error, OSError) as e:
            raise _map_error(e, doing) from e

    async def snapshot(self, tenant: Tenant) -> AsyncIterator[Entry]:
        db, _ = self.physical_names(tenant)
        doing = f"reading a snapshot of MySQL tenant {db!r}"
        conn = await self._as_tenant(tenant, doing)
        try:
            async with conn.cursor() as cur:
                await cur.execute(kine_table.MYSQL_TABLE_EXISTS)
                if not await cur.fetchall():
                    return
                await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                await cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                after = 0
                while True:
                    await cur.execute(kine_table.SNAPSHOT_PAGE,
                                      kine_table.snapshot_params(after))
                    rows = await cur.fetchall()
                    for row in rows:
                        yield kine_table.entry(row)
                    if len(rows) < kine_table.PAGE:
                        break
                    after = int(rows[-1][0])
                await cur.execute("COMMIT")
        except (pymysql.Error, OSError) as e:
            raise _map_error(e, doing) from e
        finally:
            conn.close()

    async def load(self, tenant: Tenant, entries: AsyncIterable[Entry]) -> int:
        db, _ = self.physical_names(tenant)
        doing = f"loading MySQL tenant {db!r}"
        conn = await self._as_tenant(tenant, doing)
        written = 0
        try:
            async with conn.cursor() as cur:
                await cur.execute(kine_table.MYSQL_TABLE_EXISTS)
                if not await cur.fetchall():
                    for statement in kine_table.MYSQL_SCHEMA:
                        try:
                            await cur.execute(statement)
                        except pymysql.Error as e:
                            if e.args[0] != kine_table.MYSQL_DUPLICATE_INDEX:
                                raise
                await cur.execute(kine_table.ANY_KEY, (kine_table.LOW, kine_table.HIGH))
                if await cur.fetchall():
                    raise SpaceNotEmpty(f"the MySQL database {db!r} already holds keys")
                await cur.execute(kine_table.LAST_ID)
                (last,) = await cur.fetchone()
                revisions = kine_table.Revisions(int(last))
                batch: list[tuple[Any, ...]] = []
                size = 0

                async def flush() -> None:
                    statement, params = kine_table.mysql_insert(batch)
                    await cur.execute(statement, params)  # autocommit: one statement, atomic
                    batch.clear()

                async for entry in entries:
                    batch.append(kine_table.insert_row(entry, revisions))
                    written += 1
                    size += 2 * len(entry.value) + len(entry.key) + 64
                    if len(batch) >= kine_table.INSERT_BATCH or \
                            size >= kine_table.MYSQL_BATCH_BYTES:
                        await flush()
                        size = 0
                if batch:
                    await flush()
        except (pymysql.Error, OSError) as e:
            raise _map_error(e, doing) from e
        finally:
            conn.close()
        return written

    async def clear(self, tenant: Tenant) -> None:
        db, _ = self.physical_names(tenant)
        doing = f"clearing MySQL tenant {db!r}"
        conn = await self._as_tenant(tenant, doing)
        try:
            async with conn.cursor() as cur:
                await cur.execute(kine_table.MYSQL_TABLE_EXISTS)
                if await cur.fetchall():
                    await cur.execute(kine_table.CLEAR, (kine_table.LOW, kine_table.HIGH))
        except (pymysql.Error, OSError) as e:
            raise _map_error(e, doing) from e
        finally:
            conn.close()

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
