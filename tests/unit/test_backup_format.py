"""The backup file format: round trip, flat reading, and every way a file can be wrong."""

from __future__ import annotations

import gzip
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from haku.backup import format as fmt
from haku.datastore.base import Entry
from haku.datastore.digest import Digest

HEADER = fmt.Header(source={"namespace": "a", "name": "t", "uid": "u", "dataStore": "dev-etcd",
                            "driver": "etcd", "revision": 42},
                    spec={"kubernetes": {"version": "v1.37.2"}}, kubernetes_version="v1.37.2",
                    created_at="2026-11-30T20:00:00Z")
ENTRIES = [Entry(b"/configmaps/a/x", b"\x00\x01k8s\xff", 5),
           Entry(b"/events/a/e", b"ev", 7, ttl=3600),
           Entry("/secrets/ü/\udcff".encode("utf-8", "surrogateescape"), b"", 9)]


def write(path: Path, header: fmt.Header = HEADER, entries: list[Entry] = ENTRIES
          ) -> fmt.Summary:
    w = fmt.Writer(path, header)
    for e in entries:
        w.add(e)
    return w.close()


def test_a_backup_reads_back_as_written_with_its_checksum(tmp_path: Path) -> None:
    path = tmp_path / "b.haku"
    summary = write(path)
    assert summary.entries == 3 and summary.value_bytes == len(b"\x00\x01k8s\xff") + 2
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not (tmp_path / "b.haku.partial").exists()
    with fmt.Reader(path) as r:
        assert r.header.source["revision"] == 42 and r.header.pki is None
        assert list(r.entries()) == ENTRIES
        assert r.summary == summary
    header, again, digest = fmt.verify(path)
    assert header.spec == HEADER.spec
    assert again == summary and digest.entries == 3
    # Plain JSON lines inside gzip, the trailer last.
    lines = gzip.decompress(path.read_bytes()).splitlines()
    assert json.loads(lines[0])["format"] == "haku.dev/tenant-backup"
    assert json.loads(lines[-1])["end"]["sha256"] == summary.sha256


def test_the_pki_travels_in_the_file_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "p.haku"
    pki = {"ca.crt": b"CERT", "sa.key": b"\x00KEY"}
    write(path, fmt.Header(**{**HEADER.__dict__, "pki": pki}))
    header, summary, _ = fmt.verify(path)
    assert header.pki == pki and summary.entries == 3


def test_the_digest_ignores_order_but_not_content() -> None:
    a, b, c = Digest(), Digest(), Digest()
    for e in ENTRIES:
        a.add(e)
    for e in reversed(ENTRIES):
        b.add(e)
    for e in [*ENTRIES[:2], Entry(ENTRIES[2].key, b"changed", 9)]:
        c.add(e)
    assert a == b and a != c
    shorter = Digest()
    for e in ENTRIES[:2]:
        shorter.add(e)
    assert shorter != a


def rewrite(path: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    lines = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    path.write_bytes(gzip.compress(b"".join(change(lines))))


@pytest.mark.parametrize(("case", "change", "message"), [
    ("cut short", lambda ls: ls[:-1], "without its trailer"),
    ("a key lost", lambda ls: ls[:1] + ls[2:], "checksum mismatch"),
    ("a value changed", lambda ls: [ls[0], ls[1].replace(b'"r":5', b'"r":6'), *ls[2:]],
     "checksum mismatch"),
    ("another version", lambda ls: [ls[0].replace(b'"version":1', b'"version":2'), *ls[1:]],
     "version 2"),
    ("another format", lambda ls: [b'{"format":"etcd-snapshot"}\n', *ls[1:]],
     "not a Haku tenant backup"),
    ("garbage line", lambda ls: [ls[0], b"not json\n", *ls[1:]], "not JSON"),
    ("data after the end", lambda ls: [*ls, ls[1]], "after the trailer"),
])
def test_a_damaged_file_is_refused_with_what_is_wrong(tmp_path: Path, case: str,
                                                      change: Callable[[list[bytes]], list[bytes]],
                                                      message: str) -> None:
    path = tmp_path / "d.haku"
    write(path)
    rewrite(path, change)
    with pytest.raises(fmt.BackupFileError, match=message):
        fmt.verify(path)


def test_a_file_that_is_not_gzip_or_is_empty_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"plain text\n")
    with pytest.raises(fmt.BackupFileError, match="gzip"):
        fmt.verify(tmp_path / "x")
    (tmp_path / "y").write_bytes(gzip.compress(b""))
    with pytest.raises(fmt.BackupFileError, match="empty"):
        fmt.verify(tmp_path / "y")


def test_an_aborted_writer_leaves_nothing(tmp_path: Path) -> None:
    w = fmt.Writer(tmp_path / "z.haku", HEADER)
    w.add(ENTRIES[0])
    w.abort()
    assert list(tmp_path.iterdir()) == []
