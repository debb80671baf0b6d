"""kine's table, as the SQL drivers read and write it for snapshots (no I/O here).

kine (the pinned release, v0.17.5) keeps an etcd keyspace as a log in one table, ``kine``: a
row per write, ``id`` being the revision, ``created``/``deleted`` marking creates and
tombstones, ``lease`` the TTL in seconds, ``value`` the bytes kube-apiserver stored. A key's
live value is its newest row, unless that row is a tombstone. kube-apiserver's keys start
with its default ``--etcd-prefix``, ``/registry``; kine keeps its own bookkeeping rows
(``compact_rev_key``…) outside it, and snapshots leave them out.

A restored table is created with kine's own statements for the dialect (kine runs them again,
idempotently, when it starts) and holds one created row per key, ``id`` the snapshot's
revision, so resourceVersions and their order survive. Statements use ``%s`` placeholders,
which both psycopg and aiomysql take.
"""

from __future__ import annotations

from typing import Any

from haku.datastore.base import Entry

ROOT = b"/registry"
LOW, HIGH = "/registry/", "/registry0"  # every name under ROOT/ ('0' follows '/')
PAGE = 1000
INSERT_BATCH = 500

# kine v0.17.5, pkg/drivers/pgsql/pgsql.go: schema.
POSTGRES_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS kine (
        id BIGSERIAL PRIMARY KEY, name text COLLATE "C", created INTEGER, deleted INTEGER,
        create_revision BIGINT, prev_revision BIGINT, lease INTEGER, value bytea,
        old_value bytea)""",
    "CREATE INDEX IF NOT EXISTS kine_name_index ON kine (name)",
    "CREATE INDEX IF NOT EXISTS kine_name_id_index ON kine (name,id)",
    "CREATE INDEX IF NOT EXISTS kine_id_deleted_index ON kine (id,deleted)",
    "CREATE INDEX IF NOT EXISTS kine_prev_revision_index ON kine (prev_revision)",
    "CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision_uindex "
    "ON kine (name, prev_revision)",
    "CREATE INDEX IF NOT EXISTS kine_list_query_index on kine(name, id DESC, deleted)",
)

# kine v0.17.5, pkg/drivers/mysql/mysql.go: schema (run only when the table is missing; kine
# tolerates error 1061, a duplicate index, and so does Haku).
MYSQL_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS kine (
        id BIGINT UNSIGNED AUTO_INCREMENT, name VARCHAR(630) CHARACTER SET ascii,
        created INTEGER, deleted INTEGER, create_revision BIGINT UNSIGNED,
        prev_revision BIGINT UNSIGNED, lease INTEGER, value MEDIUMBLOB, old_value MEDIUMBLOB,
        PRIMARY KEY (id))""",
    "CREATE INDEX kine_name_index ON kine (name)",
    "CREATE INDEX kine_name_id_index ON kine (name,id)",
    "CREATE INDEX kine_id_deleted_index ON kine (id,deleted)",
    "CREATE INDEX kine_prev_revision_index ON kine (prev_revision)",
    "CREATE UNIQUE INDEX kine_name_prev_revision_uindex ON kine (name, prev_revision)",
)
MYSQL_DUPLICATE_INDEX = 1061

# The live keys after revision %s, oldest first: rows under ROOT that are their key's newest
# and no tombstone. Run page after page inside one repeatable-read transaction.
SNAPSHOT_PAGE = (
    "SELECT k.id, k.name, k.lease, k.value FROM kine k "
    "WHERE k.id > %s AND k.name >= %s AND k.name < %s AND k.deleted = 0 "
    "AND NOT EXISTS (SELECT 1 FROM kine n WHERE n.name = k.name AND n.id > k.id) "
    "ORDER BY k.id LIMIT %s")

# Whether kine's table exists (a tenant whose API server never wrote has none).
POSTGRES_TABLE_EXISTS = "SELECT to_regclass('public.kine') IS NOT NULL"
MYSQL_TABLE_EXISTS = ("SELECT 1 FROM information_schema.TABLES "
                      "WHERE table_schema = DATABASE() AND table_name = 'kine'")
ANY_KEY = "SELECT 1 FROM kine WHERE name >= %s AND name < %s LIMIT 1"
LAST_ID = "SELECT COALESCE(MAX(id), 0) FROM kine"
# A create, as kine writes one (created 1, deleted 0, create_revision NULL, prev_revision 0,
# old_value NULL: see insert_row). Placeholders only, so that PyMySQL's executemany sends
# one multi-row INSERT.
INSERT = ("INSERT INTO kine (id, name, created, deleted, create_revision, prev_revision, "
          "lease, value, old_value) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)")
# MySQL: values go as hex literals (aiomysql cannot escape bytes with PyMySQL >= 1.2), so a
# batch is one multi-row INSERT of at most this many bytes of text.
MYSQL_BATCH_BYTES = 4 << 20
CLEAR = "DELETE FROM kine WHERE name >= %s AND name < %s"
# PostgreSQL: the serial's next value after the rows written with explicit ids.
POSTGRES_RESYNC = "SELECT setval(pg_get_serial_sequence('kine', 'id'), (SELECT MAX(id) FROM kine))"


def snapshot_params(after: int, limit: int = PAGE) -> tuple[object, ...]:
    return (after, LOW, HIGH, limit)


def entry(row: tuple[Any, ...]) -> Entry:
    """An :class:`Entry` of a row of :data:`SNAPSHOT_PAGE`."""
    rid, name, lease, value = row
    raw = name.encode() if isinstance(name, str) else bytes(name)
    return Entry(raw[len(ROOT):], bytes(value or b""), int(rid), int(lease or 0))


class Revisions:
    """The ids of loaded rows: each entry's revision, or one more than the row before if
    that is not higher (after existing rows, or ties from one etcd Txn), so the order holds
    and ids stay unique."""

    def __init__(self, last: int) -> None:
        self.last = last

    def next(self, revision: int) -> int:
        self.last = max(revision, self.last + 1)
        return self.last


def insert_row(entry: Entry, revisions: Revisions) -> tuple[object, ...]:
    return (revisions.next(entry.revision), (ROOT + entry.key).decode(), 1, 0, None, 0,
            entry.ttl, entry.value, None)


def mysql_insert(rows: list[tuple[Any, ...]]) -> tuple[str, tuple[Any, ...]]:
    """One multi-row INSERT of :func:`insert_row` rows for MySQL: each value as a hex literal
    (hex digits only: nothing to escape), the other columns as parameters."""
    values, params = [], []
    for rid, name, created, deleted, _create, prev, lease, value, _old in rows:
        literal = f"X'{value.hex()}'" if value else "''"
        values.append(f"(%s, %s, %s, %s, NULL, %s, %s, {literal}, NULL)")
        params += [rid, name, created, deleted, prev, lease]
    head = INSERT[: INSERT.index("VALUES")]
    return head + "VALUES " + ", ".join(values), tuple(params)
