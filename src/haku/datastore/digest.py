"""A digest of a tenant's keyspace that two drivers can compare, whatever their order."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from haku.datastore.base import Entry


@dataclass
class Digest:
    """An order-independent digest of a keyspace: the count, and the sum (mod 2^256) of each
    key's SHA-256 over key and value. Two keyspaces with the same digest hold the same keys
    with the same values (but for a SHA-256 collision), whatever order they were read in."""

    entries: int = 0
    total: int = 0
    keys: dict[bytes, str] = field(default_factory=dict)  # filled only when asked

    def add(self, entry: Entry, keep: bool = False) -> None:
        h = key_digest(entry)
        self.entries += 1
        self.total = (self.total + int(h, 16)) % (1 << 256)
        if keep:
            self.keys[entry.key] = h

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Digest) and (self.entries, self.total) == (other.entries,
                                                                              other.total)

    __hash__ = None  # type: ignore[assignment]


def key_digest(entry: Entry) -> str:
    h = hashlib.sha256(len(entry.key).to_bytes(4, "big") + entry.key + entry.value)
    return h.hexdigest()
