"""Haku's tenant backup file: one tenant's keyspace, driver-neutral, versioned, checksummed.

A gzip stream of UTF-8 JSON lines, written and read one line at a time (memory stays flat
whatever the tenant's size):

1. the header: ``{"format": "haku.dev/tenant-backup", "version": 1, "createdAt", "source":
   {namespace, name, uid, dataStore, driver, revision}, "kubernetesVersion", "spec": the
   TenantControlPlane's spec, "pki": true|false}``;
2. with PKI only: ``{"pki": {key: base64}}``, the tenant's ``<name>-pki`` Secret (its CAs,
   service-account key pair and certificates: private keys; the file is made 0600);
3. one line per key, in revision order: ``{"k": key, "v": base64 value, "r": revision}``
   plus ``"t": seconds`` for a key on a lease (see :class:`haku.datastore.base.Entry`);
4. the trailer: ``{"end": {"entries": N, "valueBytes": B, "sha256": hex}}``, the SHA-256 of
   every line before it, as written (uncompressed).

A file without its trailer (cut short), with another checksum or count, or of another format
or version is refused by :func:`read` before a caller acts on its end: :func:`verify` reads a
file through once, so a restore can refuse it before writing anything.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from haku.datastore.base import Entry
from haku.datastore.digest import Digest

FORMAT = "haku.dev/tenant-backup"
VERSION = 1


class BackupFileError(Exception):
    """The file is not a complete, intact backup this Haku can read."""


@dataclass(frozen=True)
class Header:
    source: dict[str, Any]  # namespace, name, uid, dataStore, driver, revision
    spec: dict[str, Any]
    kubernetes_version: str
    created_at: str
    pki: dict[str, bytes] | None = None

    def line(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "createdAt": self.created_at,
                "source": self.source, "kubernetesVersion": self.kubernetes_version,
                "spec": self.spec, "pki": self.pki is not None}


@dataclass(frozen=True)
class Summary:
    entries: int
    value_bytes: int
    sha256: str


def _key_text(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def _key_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def entry_line(entry: Entry) -> dict[str, Any]:
    line: dict[str, Any] = {"k": _key_text(entry.key),
                            "v": base64.b64encode(entry.value).decode(), "r": entry.revision}
    if entry.ttl:
        line["t"] = entry.ttl
    return line


class Writer:
    """Writes a backup to ``path`` through ``path.partial`` (mode 0600), renamed into place
    by :meth:`close`: an interrupted backup leaves no file that looks complete."""

    def __init__(self, path: Path, header: Header) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        self._raw: IO[bytes] = os.fdopen(fd, "wb")
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6, mtime=0)
        self._sha = hashlib.sha256()
        self.entries = self.value_bytes = 0
        self._line(header.line())
        if header.pki is not None:
            self._line({"pki": {k: base64.b64encode(v).decode()
                                for k, v in sorted(header.pki.items())}})

    def _line(self, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode() + b"\n"
        self._sha.update(data)
        self._gz.write(data)

    def add(self, entry: Entry) -> None:
        self._line(entry_line(entry))
        self.entries += 1
        self.value_bytes += len(entry.value)

    def close(self) -> Summary:
        summary = Summary(self.entries, self.value_bytes, self._sha.hexdigest())
        end = {"end": {"entries": summary.entries, "valueBytes": summary.value_bytes,
                       "sha256": summary.sha256}}
        self._gz.write(json.dumps(end, separators=(",", ":"), sort_keys=True).encode() + b"\n")
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self.partial, self.path)
        return summary

    def abort(self) -> None:
        self._gz.close()
        self._raw.close()
        self.partial.unlink(missing_ok=True)


def _parse(data: bytes, number: int) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise BackupFileError(f"line {number} is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise BackupFileError(f"line {number} is not a JSON object")
    return doc


def _header(doc: Mapping[str, Any]) -> Header:
    if doc.get("format") != FORMAT:
        raise BackupFileError(f"not a Haku tenant backup (format {doc.get('format')!r}, "
                              f"expected {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise BackupFileError(f"backup format version {doc.get('version')!r}; this Haku reads "
                              f"version {VERSION}")
    try:
        return Header(source=dict(doc["source"]), spec=dict(doc["spec"]),
                      kubernetes_version=str(doc["kubernetesVersion"]),
                      created_at=str(doc["createdAt"]),
                      pki={} if doc.get("pki") else None)
    except (KeyError, TypeError, ValueError) as e:
        raise BackupFileError(f"the header lacks {e}") from e


class Reader:
    """A backup read line by line: :attr:`header` first, then :meth:`entries`, which checks
    the trailer when it reaches it (:class:`BackupFileError` if anything is wrong)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._gz: gzip.GzipFile = gzip.open(path, "rb")  # noqa: SIM115 (closed by close())
            first = self._gz.readline()
        except (OSError, EOFError) as e:
            raise BackupFileError(f"{path}: not a readable gzip file: {e}") from e
        if not first:
            raise BackupFileError(f"{path} is empty")
        self._sha = hashlib.sha256(first)
        self._number = 1
        self.header = _header(_parse(first, 1))
        self._pending: bytes | None = None
        if self.header.pki is not None:
            doc, raw = self._next()
            if "pki" not in doc:
                raise BackupFileError("the header says the PKI is included, line 2 lacks it")
            self._sha.update(raw)
            self.header = Header(**{**self.header.__dict__, "pki": {
                k: base64.b64decode(v) for k, v in doc["pki"].items()}})
        self.summary: Summary | None = None

    def _next(self) -> tuple[dict[str, Any], bytes]:
        try:
            raw = self._gz.readline()
        except (OSError, EOFError) as e:
            raise BackupFileError(f"{self.path}: cut short or corrupt after line "
                                  f"{self._number}: {e}") from e
        if not raw:
            raise BackupFileError(f"{self.path} ends after line {self._number} without its "
                                  "trailer: the backup was cut short")
        self._number += 1
        return _parse(raw, self._number), raw

    def entries(self) -> Iterator[Entry]:
        count = value_bytes = 0
        while True:
            doc, raw = self._next()
            if "end" in doc:
                end = doc["end"]
                if not isinstance(end, dict):
                    raise BackupFileError("the trailer is not an object")
                got = Summary(count, value_bytes, self._sha.hexdigest())
                if end.get("sha256") != got.sha256:
                    raise BackupFileError(f"checksum mismatch: the trailer says "
                                          f"{end.get('sha256')}, the content is {got.sha256}")
                if end.get("entries") != count or end.get("valueBytes") != value_bytes:
                    raise BackupFileError(f"the trailer counts {end.get('entries')} keys, the "
                                          f"file holds {count}")
                if self._gz.readline():
                    raise BackupFileError("data after the trailer")
                self.summary = got
                return
            self._sha.update(raw)
            try:
                entry = Entry(_key_bytes(doc["k"]), base64.b64decode(doc["v"], validate=True),
                              int(doc["r"]), int(doc.get("t", 0)))
            except (KeyError, TypeError, ValueError) as e:
                raise BackupFileError(f"line {self._number} is not a key: {e}") from e
            count += 1
            value_bytes += len(entry.value)
            yield entry

    def close(self) -> None:
        self._gz.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def verify(path: Path) -> tuple[Header, Summary, Digest]:
    """Read ``path`` through: its header, summary and digest, or :class:`BackupFileError`."""
    digest = Digest()
    with Reader(path) as reader:
        for entry in reader.entries():
            digest.add(entry)
        assert reader.summary is not None
        return reader.header, reader.summary, digest
