"""What every datastore driver offers, and the types they share.

A *tenant* is known to Haku by two logical names, its schema (the TCP's ``dataStoreSchema``:
etcd key prefix, SQL database) and its user (``dataStoreUsername``). Each driver maps them to
*physical* names the backend can hold: literally where the backend allows it, otherwise a
stable derived name (a readable, sanitised prefix plus a hash of the logical name), so the
mapping never changes between reconciles and names are never spliced into statements.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from haku.render.storage import TenantConnection

__all__ = ["TenantConnection"]  # re-exported: drivers return it


class DataStoreError(Exception):
    """A datastore operation failed; ``reason`` is the CamelCase word Conditions carry."""

    reason = "Error"


class Unreachable(DataStoreError):
    reason = "Unreachable"


class TLSFailure(DataStoreError):
    reason = "TLSError"


class AuthenticationFailed(DataStoreError):
    reason = "AuthenticationFailed"


class PermissionDenied(DataStoreError):
    reason = "PermissionDenied"


class InsecureConfiguration(DataStoreError):
    """The server works but would not isolate tenants (e.g. etcd with auth disabled)."""

    reason = "InsecureConfiguration"


class InvalidName(DataStoreError, ValueError):
    reason = "InvalidName"


class NotOwned(DataStoreError):
    """The tenant's user or space names an object that already exists on the server and that
    Haku did not create (another application's account, role or database). Haku refuses to
    take it over, before changing anything, and ``delete_tenant`` leaves such objects alone.
    How each driver tells its own objects from others is in docs/datastores.md."""

    reason = "NotOwned"


def not_owned(kind: str, name: str) -> NotOwned:
    """The :class:`NotOwned` for the existing ``kind`` (e.g. "PostgreSQL role") ``name``."""
    return NotOwned(f"{kind} {name!r} already exists on the server and was not created by "
                    "Haku; choose another spec.dataStoreSchema/dataStoreUsername")


def legacy_pair(kind: str, name: str, detail: str) -> NotOwned:
    """The :class:`NotOwned` for an object Haku made before it recorded owners (no owner is
    recorded) that belongs with *another* name of an earlier tenant (``detail`` says which):
    adopting it would leave that tenant's identity with access to it."""
    return NotOwned(f"{kind} {name!r} belongs to a tenant Haku made before it recorded owners "
                    f"({detail}); delete that tenant or choose another "
                    "spec.dataStoreSchema/dataStoreUsername")


class InUse(DataStoreError):
    """The tenant's space or user is recorded in the datastore as another tenant's:
    ``holder`` is that TenantControlPlane's ``metadata.uid``. Raised by ``ensure_tenant``
    before any change."""

    reason = "InUse"
    what = "name"  # "schema" or "user"
    field = "spec.dataStoreSchema / dataStoreUsername"

    def __init__(self, name: str, holder: str, shown: str | None = None) -> None:
        self.name, self.holder = name, holder
        stored = f" ({shown})" if shown and shown != name else ""
        super().__init__(
            f"the datastore {self.what} {name!r}{stored} is held by the TenantControlPlane "
            f"with uid {holder}; delete that tenant or choose another {self.field}")
        self._shown = shown

    def __reduce__(self) -> tuple[type[InUse], tuple[str, str, str | None]]:
        return type(self), (self.name, self.holder, self._shown)


class SchemaInUse(InUse):
    reason = "SchemaInUse"
    what = "schema"
    field = "spec.dataStoreSchema"


class UserInUse(InUse):
    reason = "UserInUse"
    what = "user"
    field = "spec.dataStoreUsername"


class InvalidTLSConfig(DataStoreError, ValueError):
    """A certificate or key of the DataStore cannot be parsed (not PEM, wrong kind, garbage)."""

    reason = "InvalidTLSConfig"


@dataclass(frozen=True)
class Tenant:
    schema: str
    user: str
    password: str | None = None  # SQL drivers; etcd tenants authenticate by certificate
    # The owning TenantControlPlane's metadata.uid. Set, it is recorded in the datastore for
    # the tenant's space and user, and ensure/delete act only on what is recorded as its own
    # (see docs/datastores.md, Ownership). None: no owner is recorded (Haku before owners).
    owner: str | None = None

    def __post_init__(self) -> None:
        validate_logical_name(self.schema, "schema")
        validate_logical_name(self.user, "user")
        if self.owner is not None:
            validate_owner(self.owner)


class SpaceNotEmpty(DataStoreError):
    """A load into a tenant's space that already holds keys (it would mix two tenants' data
    or two snapshots): clear it first, or load into a new tenant."""

    reason = "SpaceNotEmpty"


@dataclass(frozen=True, slots=True)
class Entry:
    """One key of a tenant's keyspace as kube-apiserver sees it, driver-neutral.

    ``key`` is relative to the tenant's storage root: kube-apiserver's key without its
    ``--etcd-prefix`` (``/pods/default/web`` for etcd's ``/<schema>/pods/default/web`` and
    kine's ``/registry/pods/default/web``). ``revision`` is the key's modification revision
    (the object's resourceVersion); ``ttl`` the seconds of the lease it is attached to, 0 if
    none (Events, endpoint leases)."""

    key: bytes
    value: bytes
    revision: int
    ttl: int = 0


@dataclass(frozen=True)
class Usage:
    bytes: int
    keys: int  # keys for etcd, kine rows for SQL


class Driver(Protocol):
    """One backend. Every method is idempotent; errors are :class:`DataStoreError` subclasses."""

    driver: str

    async def check(self) -> str:
        """Connect and verify Haku's access; return the server's version string."""
        ...

    async def ensure_tenant(self, tenant: Tenant) -> None:
        """Create or repair the tenant's user, space and grants. With ``tenant.owner``, first
        record it (atomically, first writer wins) for the space and the user: another
        recorded owner raises :class:`SchemaInUse` or :class:`UserInUse` before any change;
        legacy objects (Haku's, no owner recorded) are adopted."""
        ...

    async def delete_tenant(self, tenant: Tenant) -> None:
        """Remove the tenant's data, grants, space and user; absent parts are fine. With
        ``tenant.owner``, only what is recorded as that owner's (or legacy objects of exactly
        this tenant's names), the owner records last."""
        ...

    async def verify_tenant(self, tenant: Tenant) -> bool:
        """Read only and cheap: True iff everything ``ensure_tenant`` would create exists,
        recorded as ``tenant.owner``'s (passwords are not checked)."""
        ...

    async def holder(self, tenant: Tenant) -> tuple[str | None, str | None]:
        """Read only: the owner uids recorded for the tenant's space and for its user (None
        where none is recorded)."""
        ...

    async def list_tenants(self) -> list[str]:
        """Physical schema names of the tenants this datastore holds."""
        ...

    async def usage(self, tenant: Tenant) -> Usage: ...

    def tenant_connection(self, tenant: Tenant) -> TenantConnection: ...

    def physical_names(self, tenant: Tenant) -> tuple[str, str]:
        """(schema, user) as stored in the backend."""
        ...

    def snapshot(self, tenant: Tenant) -> AsyncIterator[Entry]:
        """The tenant's live keys as of one moment (etcd: one revision of its prefix; SQL:
        kine's table in one repeatable-read transaction), in revision order, read a page at
        a time so that memory stays flat. Empty if the space was never written."""
        ...

    async def load(self, tenant: Tenant, entries: AsyncIterable[Entry]) -> int:
        """Write ``entries`` (in revision order) into the tenant's space, which must hold no
        key (:class:`SpaceNotEmpty` otherwise), keeping their order: kine's tables keep the
        revisions themselves, etcd gives new ones in the same order. Returns how many."""
        ...

    async def clear(self, tenant: Tenant) -> None:
        """Delete every key of the tenant's space (the space, user and grants stay)."""
        ...

    async def close(self) -> None: ...


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


_OWNER = re.compile(r"[\x20-\x7e]{1,64}")


def validate_owner(owner: str) -> None:
    """A TenantControlPlane uid as Haku records it: 1 to 64 printable ASCII characters."""
    if not isinstance(owner, str) or not _OWNER.fullmatch(owner):
        raise InvalidName(f"the tenant owner {owner!r} is not 1 to 64 printable ASCII "
                          "characters (a TenantControlPlane's metadata.uid)")


def owner_tag(owner: str) -> str:
    """A short, stable tag of ``owner``: 8 hex digits of its SHA-256."""
    return hashlib.sha256(owner.encode()).hexdigest()[:8]


def validate_logical_name(name: str, what: str) -> None:
    if not name:
        raise InvalidName(f"the tenant {what} is empty")
    if _CONTROL.search(name):
        raise InvalidName(f"the tenant {what} {name!r} holds control characters")
    if len(name) > 253:
        raise InvalidName(f"the tenant {what} is {len(name)} characters long; the limit is 253")


def refuse_reserved(physical: str, logical: str, what: str, reserved: Iterable[str],
                    prefixes: tuple[str, ...] = (), casefold: bool = False) -> None:
    """Raise :class:`InvalidName` if ``physical`` (the backend name of the tenant's ``what``,
    e.g. "PostgreSQL database") is one of the ``reserved`` names of the backend (its admin
    identity or system spaces) or starts with one of ``prefixes``. Drivers call this from
    ``physical_names``, so it runs before any statement of ensure, delete or usage."""
    fold = str.casefold if casefold else str
    hit = fold(physical) in {fold(r) for r in reserved} or fold(physical).startswith(
        tuple(fold(p) for p in prefixes))
    if hit:
        shown = f"{logical!r}" if logical == physical else f"{logical!r} (stored as {physical!r})"
        raise InvalidName(
            f"the tenant {what} {shown} is reserved: it would reach the datastore's own "
            "administrator or system data; choose another name")


def physical_name(name: str, limit: int, allowed: re.Pattern[str]) -> str:
    """``name`` itself if ``allowed`` matches it whole and it fits ``limit`` bytes, else a
    stable derived name: the allowed characters of ``name`` (others become ``_``), cut to
    fit, then ``-`` and 10 hex digits of its SHA-256."""
    if allowed.fullmatch(name) and len(name.encode()) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    keep = "".join(c if allowed.fullmatch(c) else "_" for c in name)
    keep = keep.encode()[: limit - 11].decode(errors="ignore").rstrip("_") or "t"
    return f"{keep}-{digest}"


def check_tls_material(ca_cert: bytes | None = None, ca_key: bytes | None = None,
                       client_cert: bytes | None = None, client_key: bytes | None = None
                       ) -> None:
    """Parse every PEM the DataStore gives, before a client library sees it: a malformed one
    raises :class:`InvalidTLSConfig` naming the field, not a library error halfway through."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    fields = (("tlsConfig.certificateAuthority.certificate", ca_cert, True),
              ("tlsConfig.certificateAuthority.privateKey", ca_key, False),
              ("tlsConfig.clientCertificate.certificate", client_cert, True),
              ("tlsConfig.clientCertificate.privateKey", client_key, False))
    for where, data, is_cert in fields:
        if data is None:
            continue
        try:
            if is_cert:
                x509.load_pem_x509_certificates(data)
            else:
                serialization.load_pem_private_key(data, password=None)
        except Exception as e:  # ValueError, TypeError, UnsupportedAlgorithm
            kind = "PEM certificate" if is_cert else "unencrypted PEM private key"
            raise InvalidTLSConfig(f"{where} is not a valid {kind}: {e}") from e


class PrivateFiles:
    """A private temporary directory for credentials that client libraries take only as paths
    (libpq's sslrootcert, ssl.load_cert_chain)."""

    def __init__(self, prefix: str) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix=prefix)

    def write(self, name: str, data: bytes) -> str:
        path = Path(self._dir.name) / name
        path.write_bytes(data)
        path.chmod(0o600)
        return str(path)

    def cleanup(self) -> None:
        self._dir.cleanup()
