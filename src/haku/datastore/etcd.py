"""etcd: one user, one role and one key prefix per tenant, over async gRPC with mutual TLS.

The tenant's user has no password: etcd (``--client-cert-auth``) takes the CN of the client
certificate as the user, and Haku signs that certificate with the DataStore's CA. The role
grants readwrite on ``/<schema>/`` (the trailing slash keeps ``/a`` from covering ``/aa``)
and read on the one key :data:`COMPACT_REV_KEY` (kube-apiserver's ``compact_rev_key``,
outside ``--etcd-prefix``), which holds a revision number and no tenant's data: a tenant's
API server watches it to learn which revisions are gone. Compaction is global to an etcd
cluster and etcd allows it to its administrator only, so the operator compacts, as
kube-apiserver does for the etcd it has alone (:meth:`EtcdDriver.compact_round`); a tenant
may not write the key, which would stall everyone's compaction or fake it.
Haku itself connects with the DataStore's client certificate (normally the ``root`` user).
A tenant whose user or role would be ``root`` or that administrator is refused before any
request: granting the ``root`` role to a tenant user would make it an administrator.

Ownership: etcd's users and roles carry no marker, so Haku's objects are recognised by
shape. An existing role is taken as the tenant's only if it holds no permission but on the
tenant's own prefix range, an existing user only if it holds no role but the tenant's, and
keys under the prefix only if the tenant's role exists (Haku makes the role before any key is
written and deletes the keys before the role). Anything else is refused with
:class:`~haku.datastore.base.NotOwned` before any change, and left untouched by delete.

Which tenant owns them is recorded in keys without a leading '/' (outside every tenant's
prefix, readable by the administrator only): :func:`owner_key` of the schema and of the
logical user, value the owning TenantControlPlane's uid, written by one Txn (absent, or
already this owner's) before anything is created, and deleted last. With an owner the etcd
user is per incarnation (:func:`incarnation_user`), so a certificate of a deleted tenant names
a user that no longer exists, whatever later tenant reuses the names. Legacy tenants (no owner
recorded, un-tagged user) are adopted by the first owner whose names they match exactly.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from aetcd import rpc  # generated etcd v3 stubs only; the connection is ours

from haku.datastore.base import (
    AuthenticationFailed,
    DataStoreError,
    Entry,
    InsecureConfiguration,
    InUse,
    InvalidTLSConfig,
    PermissionDenied,
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
    owner_tag,
    physical_name,
    refuse_reserved,
)
from haku.datastore.settings import Settings
from haku.render import pki

# A key prefix component may hold anything but '/', which would nest one tenant in another.
SCHEMA_CHARS = re.compile(r"[^/\x00-\x1f\x7f]+")
USER_CHARS = re.compile(r"[^\x00-\x1f\x7f]+")
SCHEMA_LIMIT = 253
USER_LIMIT = 64  # X.509 ub-common-name: the user is the certificate's CN
TIMEOUT = 10.0
PAGE = 1000
RETRYABLE = "revision of auth store is old"
RETRIES = 8
RESERVED = ("root",)  # etcd's administrator user and role
AUTH_NOT_ENABLED = "authentication is not enabled"  # etcd's ErrAuthNotEnabled
AUTH_FAILED = "authentication failed"  # ErrAuthFailed: "…, invalid user ID or password"
OWNER_PREFIX = b"haku.dev/owner/"
# kube-apiserver's compaction record (k8s.io/apiserver storage/etcd3 compactRevKey): written
# by the operator's compaction, read by every tenant's API server (the module's docstring).
COMPACT_REV_KEY = b"compact_rev_key"
# etcd's answer to a Compact at or below the revision already compacted (mvcc.ErrCompacted).
ALREADY_COMPACTED = "required revision has been compacted"
# Puts per Txn when loading a snapshot (etcd's --max-txn-ops defaults to 128). The keys of one
# Txn share a revision; the order between Txns is the snapshot's.
LOAD_BATCH = 100
# ... and at most this many bytes of keys and values, under etcd's --max-request-bytes
# (1.5 MiB by default); a larger single key goes alone.
LOAD_BATCH_BYTES = 1 << 20
MAX_MESSAGE = 1 << 30


def prefix_of(schema: str) -> bytes:
    return f"/{schema}/".encode()


def range_end(prefix: bytes) -> bytes:
    """The first key after every key starting with ``prefix`` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def owner_key(kind: str, name: str) -> bytes:
    """The key recording the owner of a tenant's space (``kind`` "schema", ``name`` the
    physical schema) or user ("user", the logical user). No leading '/': every tenant's
    prefix starts with one, so no tenant role covers it; only the administrator reads it."""
    return OWNER_PREFIX + f"{kind}/{name}".encode()


def incarnation_user(user: str, owner: str) -> str:
    """The etcd user (and certificate CN) of the tenant user ``user`` owned by ``owner``:
    the user's name, cut to fit like :func:`physical_name` does, then ``.`` and 8 hex digits
    of sha256(owner). Certificates of an earlier tenant with the same user name name another
    etcd user, deleted with that tenant, so they reach nothing."""
    return f"{physical_name(user, USER_LIMIT - 9, USER_CHARS)}.{owner_tag(owner)}"


@dataclass(frozen=True)
class CompactRound:
    """What one compaction round saw: the version of ``compact_rev_key`` and the etcd
    revision then (the next round's compare and target), and the revision it compacted to
    (0: none this round)."""

    version: int = 0
    revision: int = 0
    compacted: int = 0


@dataclass(frozen=True)
class Seen:
    """What etcd holds under a tenant's names (None: absent)."""

    held: tuple[str | None, str | None]  # the owner recorded for the space and the user
    roles: list[str] | None  # of the tenant's (physical) user
    perms: list[Any] | None  # of the role named like the schema
    keys: int  # under the prefix
    legacy_roles: list[str] | None  # of the un-tagged user (the same as roles without owner)


async def _none() -> None:
    return None


def _map_error(e: grpc.aio.AioRpcError, doing: str) -> DataStoreError:
    details = e.details() or ""
    code = e.code()
    text = f"{doing}: {details or code.name}"
    if code == grpc.StatusCode.UNAVAILABLE:
        low = details.lower()
        if "ssl" in low or "handshake" in low or "certificate" in low or "tls" in low:
            return TLSFailure(text)
        return Unreachable(text)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Unreachable(text)
    if code == grpc.StatusCode.UNAUTHENTICATED or any(
        m in details for m in ("authentication failed", "invalid auth token",
                               "user name not found")  # a certificate CN with no user
    ):
        return AuthenticationFailed(text)
    if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in details:
        return PermissionDenied(text)
    return DataStoreError(text)


def _target(endpoints: tuple[str, ...]) -> tuple[str, str]:
    """A gRPC target over all endpoints, and the authority (TLS name) to present."""
    hosts = [e.rsplit(":", 1)[0].strip("[]") for e in endpoints]
    ipv4 = all(re.fullmatch(r"\d+\.\d+\.\d+\.\d+", h) for h in hosts)
    target = "ipv4:" + ",".join(endpoints) if ipv4 else f"dns:///{endpoints[0]}"
    return target, hosts[0]


class EtcdDriver:
    driver = "etcd"

    def __init__(self, settings: Settings) -> None:
        if not (settings.ca_cert and settings.ca_key and settings.client_cert
                and settings.client_key):
            raise DataStoreError(
                f"DataStore {settings.name}: etcd needs the CA certificate and key and a "
                "client certificate and key")
        check_tls_material(settings.ca_cert, settings.ca_key, settings.client_cert,
                           settings.client_key)
        self.settings = settings
        self.ca = pki.KeyPair(settings.ca_cert, settings.ca_key)
        # Haku's own etcd user: the CN of the DataStore's client certificate.
        try:
            self.admin_user = pki.common_name(pki.KeyPair(settings.client_cert,
                                                          settings.client_key))
        except IndexError as e:
            raise InvalidTLSConfig("tlsConfig.clientCertificate.certificate has no CN (etcd "
                                   "takes the user from it)") from e
        target, authority = _target(settings.endpoints)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=settings.ca_cert,
            private_key=settings.client_key,
            certificate_chain=settings.client_cert,
        )
        self.channel = grpc.aio.secure_channel(
            target, credentials,
            options=[("grpc.default_authority", authority),
                     ("grpc.lb_policy_name", "round_robin"),
                     # A snapshot page of 1,000 keys can be far over gRPC's 4 MiB default
                     # (objects up to etcd's 1.5 MiB request limit each).
                     ("grpc.max_receive_message_length", MAX_MESSAGE),
                     ("grpc.max_send_message_length", MAX_MESSAGE)],
        )
        self.kv = rpc.KVStub(self.channel)
        self.auth = rpc.AuthStub(self.channel)
        self.maintenance = rpc.MaintenanceStub(self.channel)
        self.leases = rpc.LeaseStub(self.channel)

    async def _call(self, doing: str, method: Any, request: Any,
                    tolerate: tuple[str, ...] = ()) -> Any:
        for attempt in range(RETRIES + 1):
            try:
                return await method(request, timeout=TIMEOUT)
            except grpc.aio.AioRpcError as e:
                details = e.details() or ""
                if any(t in details for t in tolerate):
                    return None
                # The auth store changed between etcd's permission check and the apply
                # (another tenant's role or user was written): the request is safe to repeat.
                if RETRYABLE in details and attempt < RETRIES:
                    await asyncio.sleep(0.01 * 2**attempt)
                    continue
                raise _map_error(e, doing) from e
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ names

    def physical_names(self, tenant: Tenant) -> tuple[str, str]:
        """(schema, user): the schema is also the role's name. With an owner the user is
        per incarnation, ``<user>.<8 hex of sha256(owner)>`` (see :meth:`legacy_user` for
        the name without it). :class:`InvalidName` for ``root`` and Haku's own user (checked
        before any request)."""
        schema = physical_name(tenant.schema, SCHEMA_LIMIT, SCHEMA_CHARS)
        legacy = physical_name(tenant.user, USER_LIMIT, USER_CHARS)
        reserved = (*RESERVED, self.admin_user)
        refuse_reserved(schema, tenant.schema, "schema (etcd role)", reserved)
        refuse_reserved(legacy, tenant.user, "user (etcd user)", reserved)
        if tenant.owner is None:
            return schema, legacy
        user = incarnation_user(tenant.user, tenant.owner)
        refuse_reserved(user, tenant.user, "user (etcd user)", reserved)
        return schema, user

    @staticmethod
    def legacy_user(tenant: Tenant) -> str:
        """The etcd user of ``tenant`` as Haku named it before owners were recorded (and
        still names it for a tenant without one): no owner tag."""
        return physical_name(tenant.user, USER_LIMIT, USER_CHARS)

    # ------------------------------------------------------------------ operations

    async def check(self) -> str:
        """Reachable, auth enabled (else tenants would not be isolated), and Haku's identity
        an administrator (only one may list users)."""
        status = await self._call("etcd status", self.maintenance.Status, rpc.StatusRequest())
        if not await self.auth_enabled():
            raise InsecureConfiguration(
                "etcd authentication is disabled (`etcdctl auth enable`): every client "
                "could read every tenant's keys")
        await self._call("listing etcd users (needs the root role)", self.auth.UserList,
                         rpc.AuthUserListRequest())
        return f"etcd {status.version}"

    async def auth_enabled(self) -> bool:
        """``AuthStatus`` where the server has it (3.5+), else :meth:`auth_enabled_by_login`."""
        try:
            auth = await self.auth.AuthStatus(rpc.AuthStatusRequest(), timeout=TIMEOUT)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:  # etcd 3.4 lacks AuthStatus
                raise _map_error(e, "etcd auth status") from e
            return await self.auth_enabled_by_login()
        return bool(auth.enabled)

    async def auth_enabled_by_login(self) -> bool:
        """Whether auth is enabled, on any etcd 3.x: a password login as a random user name
        no one holds is refused with "authentication is not enabled" when auth is off, and
        with "authentication failed" when it is on."""
        request = rpc.AuthenticateRequest(name=f"haku-probe-{secrets.token_hex(8)}",
                                          password=secrets.token_hex(16))
        try:
            await self.auth.Authenticate(request, timeout=TIMEOUT)
        except grpc.aio.AioRpcError as e:
            details = e.details() or ""
            if AUTH_NOT_ENABLED in details:
                return False
            if AUTH_FAILED in details:
                return True
            raise _map_error(e, "probing etcd auth") from e
        return True  # a login succeeded: auth is on

    async def _owners(self, schema: str, user: str) -> tuple[str | None, str | None]:
        """The owner uids recorded for the space ``schema`` (physical) and the logical
        ``user``: one read-only Txn."""
        got = await self._call("reading Haku's owner records", self.kv.Txn, rpc.TxnRequest(
            success=[rpc.RequestOp(request_range=rpc.RangeRequest(key=owner_key(k, n)))
                     for k, n in (("schema", schema), ("user", user))]))
        found = [r.response_range.kvs for r in got.responses]
        schema_owner, user_owner = (kvs[0].value.decode() if kvs else None for kvs in found)
        return schema_owner, user_owner

    async def _roles_of(self, user: str) -> list[str] | None:
        got = await self._call(f"reading etcd user {user!r}", self.auth.UserGet,
                               rpc.AuthUserGetRequest(name=user),
                               tolerate=("user name not found",))
        return None if got is None else list(got.roles)

    async def _perms_of(self, role: str) -> list[Any] | None:
        got = await self._call(f"reading etcd role {role!r}", self.auth.RoleGet,
                               rpc.AuthRoleGetRequest(role=role),
                               tolerate=("role name not found",))
        return None if got is None else list(got.perm)

    async def _count(self, prefix: bytes) -> int:
        found = await self._call(f"counting keys under {prefix!r}", self.kv.Range,
                                 rpc.RangeRequest(key=prefix, range_end=range_end(prefix),
                                                  count_only=True))
        return int(found.count)

    async def _inspect(self, tenant: Tenant, schema: str, user: str, prefix: bytes) -> Seen:
        """Reads only: the roles of ``user``, the permissions of role ``schema``, the number
        of keys under ``prefix`` and (with an owner) the roles of the tenant's legacy,
        un-tagged user, at once; then the owner records."""
        legacy = self.legacy_user(tenant)
        roles, perms, keys, legacy_roles = await asyncio.gather(
            self._roles_of(user), self._perms_of(schema), self._count(prefix),
            self._roles_of(legacy) if legacy != user else _none())
        # The records after the objects: a record is written before its objects are made and
        # removed after they are gone, so every object seen above has its record visible.
        held = await self._owners(schema, tenant.user)
        return Seen(held=held, roles=roles, perms=perms, keys=keys,
                    legacy_roles=legacy_roles if legacy != user else roles)

    @staticmethod
    def _adoptable(seen: Seen, schema: str) -> bool:
        """An unrecorded role of the tenant's shape may be recorded as this owner's only if
        the tenant's own user (legacy, un-tagged, or this incarnation's) holds exactly it:
        a role going with another user would leave that user reaching the prefix."""
        return seen.legacy_roles == [schema] or seen.roles == [schema]

    @staticmethod
    def _role_is_tenants(perms: list[Any], prefix: bytes) -> bool:
        """No permission but on the tenant's own prefix range and on the compaction record
        (of any type)."""
        return all((p.key == prefix and p.range_end == range_end(prefix)) or
                   (p.key == COMPACT_REV_KEY and not p.range_end) for p in perms)

    @staticmethod
    def _missing_permissions(perms: list[Any] | None, prefix: bytes) -> list[Any]:
        """The permissions the tenant's role lacks, or holds of another type: readwrite on
        its prefix range, read on the compaction record (granting one replaces the type of
        the same key's permission: a role of the Haku that let tenants compact loses write)."""
        wanted = [rpc.Permission(permType=rpc.Permission.READWRITE, key=prefix,
                                 range_end=range_end(prefix)),
                  rpc.Permission(permType=rpc.Permission.READ, key=COMPACT_REV_KEY)]
        return [w for w in wanted if not any(
            p.permType == w.permType and p.key == w.key and
            p.range_end == w.range_end for p in perms or [])]

    @staticmethod
    def _refuse_held(tenant: Tenant, schema: str, held: tuple[str | None, str | None]
                     ) -> None:
        """:class:`SchemaInUse` / :class:`UserInUse` if another owner (any owner, for a
        tenant without one) is recorded for the space or the user."""
        schema_owner, user_owner = held
        if schema_owner is not None and schema_owner != tenant.owner:
            raise SchemaInUse(tenant.schema, schema_owner, f"etcd prefix /{schema}/")
        if user_owner is not None and user_owner != tenant.owner:
            raise UserInUse(tenant.user, user_owner)

    async def _claim(self, tenant: Tenant, schema: str, held: tuple[str | None, str | None]
                     ) -> None:
        """Record ``tenant.owner`` for the space and the user in one Txn: each key absent
        (create_revision 0) or already this owner's. First writer wins: a loser re-reads and
        raises :class:`InUse`, having written nothing."""
        assert tenant.owner is not None
        value = tenant.owner.encode()
        keys = (owner_key("schema", schema), owner_key("user", tenant.user))
        for _ in range(RETRIES):
            self._refuse_held(tenant, schema, held)
            compares, puts = [], []
            for key, recorded in zip(keys, held, strict=True):
                if recorded is None:
                    compares.append(rpc.Compare(result=rpc.Compare.EQUAL,
                                                target=rpc.Compare.CREATE, key=key,
                                                create_revision=0))
                    puts.append(rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value)))
                else:
                    compares.append(rpc.Compare(result=rpc.Compare.EQUAL,
                                                target=rpc.Compare.VALUE, key=key, value=value))
            if not puts:
                return
            done = await self._call(f"recording the owner of etcd tenant {schema!r}",
                                    self.kv.Txn, rpc.TxnRequest(compare=compares, success=puts))
            if done.succeeded:
                return
            held = await self._owners(schema, tenant.user)
        raise DataStoreError(f"recording the owner of etcd tenant {schema!r}: the records "
                             "kept changing")

    async def _unrecord(self, tenant: Tenant, schema: str) -> None:
        """Remove the owner records that are ``tenant.owner``'s (compare value, delete)."""
        assert tenant.owner is not None
        for kind, name in (("schema", schema), ("user", tenant.user)):
            key = owner_key(kind, name)
            await self._call(f"removing the owner record {key!r}", self.kv.Txn, rpc.TxnRequest(
                compare=[rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.VALUE,
                                     key=key, value=tenant.owner.encode())],
                success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))]))

    async def ensure_tenant(self, tenant: Tenant) -> None:
        """Refusals first (another recorded owner, foreign objects, a legacy role that goes
        with another user), then the owner records, then user, role, permission, grant."""
        schema, user = self.physical_names(tenant)
        prefix = prefix_of(schema)
        # Every reconcile ensures; writes to etcd's auth store are global, so read first.
        seen = await self._inspect(tenant, schema, user, prefix)
        roles, perms = seen.roles, seen.perms
        self._refuse_held(tenant, schema, seen.held)
        if roles is not None and any(r != schema for r in roles):
            raise not_owned("etcd user (holding other roles)", user)
        if perms is not None and not self._role_is_tenants(perms, prefix):
            raise not_owned("etcd role (holding other permissions)", schema)
        if perms is None and seen.keys:
            raise not_owned("etcd key prefix (holding keys, but no role of its name)",
                            prefix.decode(errors="replace"))
        if tenant.owner is not None:
            if seen.held[0] is None and perms is not None and not self._adoptable(seen, schema):
                # A legacy role (Haku's, no owner recorded) is adopted only with its own
                # legacy user: another tenant's user would keep reaching the prefix.
                raise legacy_pair("etcd role", schema,
                                  f"the etcd user {self.legacy_user(tenant)!r} does not hold "
                                  "it alone")
            if seen.held != (tenant.owner, tenant.owner):
                await self._claim(tenant, schema, seen.held)
        missing = self._missing_permissions(perms, prefix)
        if roles == [schema] and not missing:
            return  # fully provisioned
        if roles is None:
            await self._call(f"adding etcd user {user!r}", self.auth.UserAdd,
                             rpc.AuthUserAddRequest(
                                 name=user, options=rpc.UserAddOptions(no_password=True)),
                             tolerate=("user name already exists",))
        if perms is None:
            await self._call(f"adding etcd role {schema!r}", self.auth.RoleAdd,
                             rpc.AuthRoleAddRequest(name=schema),
                             tolerate=("role name already exists",))
        for permission in missing:  # an older Haku's role: the compaction record, read only
            await self._call(f"granting {permission.key!r} to role {schema!r}",
                             self.auth.RoleGrantPermission,
                             rpc.AuthRoleGrantPermissionRequest(name=schema, perm=permission))
        if roles != [schema]:
            await self._call(f"granting role {schema!r} to user {user!r}",
                             self.auth.UserGrantRole,
                             rpc.AuthUserGrantRoleRequest(user=user, role=schema))

    async def delete_tenant(self, tenant: Tenant) -> None:
        """With an owner: the users first (the tenant's access ends, a still-running API
        server can write no more), then the keys, the role, and the owner records last, each
        only if recorded as this owner's (a legacy tenant of exactly these names is adopted
        first, so a cut delete resumes). Without an owner (Haku before owners): keys, role,
        user, each only if it is the tenant's by shape and recorded for no owner."""
        schema, user = self.physical_names(tenant)
        prefix = prefix_of(schema)
        seen = await self._inspect(tenant, schema, user, prefix)
        roles, perms = seen.roles, seen.perms
        role_shaped = perms is not None and self._role_is_tenants(perms, prefix)
        if tenant.owner is None:
            role_ours = role_shaped and seen.held[0] is None
            if role_ours:
                await self._delete_space(schema, prefix)
            # A user holding the role (etcd drops a deleted role from its users) only if the
            # role was the tenant's: a foreign user given a foreign role of that name stays.
            if seen.held[1] is None and roles is not None and (
                    roles == [] or (roles == [schema] and role_ours)):
                await self._delete_user(user)
            return
        held = seen.held
        if held[0] is None and role_shaped and self._adoptable(seen, schema):
            # Legacy: the role and its legacy user are exactly this tenant's. Record them as
            # this owner's first, so a delete cut after the user is gone still knows the role.
            try:
                await self._claim(tenant, schema, held)
                held = (tenant.owner, tenant.owner)
            except InUse:
                held = await self._owners(schema, tenant.user)
        schema_ours = held[0] == tenant.owner
        mine = schema_ours or held[1] == tenant.owner
        if mine and roles is not None and (roles == [] or (roles == [schema] and schema_ours)):
            await self._delete_user(user)
        legacy = self.legacy_user(tenant)
        if schema_ours and legacy != user and seen.legacy_roles == [schema]:
            await self._delete_user(legacy)
        if schema_ours and role_shaped:
            await self._delete_space(schema, prefix)
        await self._unrecord(tenant, schema)

    async def _delete_space(self, schema: str, prefix: bytes) -> None:
        """The keys under ``prefix``, then the role (etcd drops it from its users too)."""
        await self._call(f"deleting keys under {prefix!r}", self.kv.DeleteRange,
                         rpc.DeleteRangeRequest(key=prefix, range_end=range_end(prefix)))
        await self._call(f"deleting etcd role {schema!r}", self.auth.RoleDelete,
                         rpc.AuthRoleDeleteRequest(role=schema),
                         tolerate=("role name not found",))

    async def _delete_user(self, user: str) -> None:
        await self._call(f"deleting etcd user {user!r}", self.auth.UserDelete,
                         rpc.AuthUserDeleteRequest(name=user),
                         tolerate=("user name not found",))

    async def verify_tenant(self, tenant: Tenant) -> bool:
        """Three reads at once (owner records, the role, the user): recorded as this
        tenant's owner, the role holding readwrite on exactly the prefix and read on the
        compaction record, the user holding exactly the role."""
        schema, user = self.physical_names(tenant)
        prefix = prefix_of(schema)
        held, roles, perms = await asyncio.gather(
            self._owners(schema, tenant.user), self._roles_of(user), self._perms_of(schema))
        return (held == (tenant.owner, tenant.owner) and roles == [schema]
                and perms is not None and len(perms) == 2
                and self._role_is_tenants(perms, prefix)
                and not self._missing_permissions(perms, prefix))

    async def holder(self, tenant: Tenant) -> tuple[str | None, str | None]:
        schema, _ = self.physical_names(tenant)
        return await self._owners(schema, tenant.user)

    async def list_tenants(self) -> list[str]:
        roles = await self._call("listing etcd roles", self.auth.RoleList,
                                 rpc.AuthRoleListRequest())
        tenants = []
        for role in roles.roles:
            if role == "root":
                continue
            got = await self._call(f"reading etcd role {role!r}", self.auth.RoleGet,
                                   rpc.AuthRoleGetRequest(role=role),
                                   tolerate=("role name not found",))
            perms = list(got.perm) if got else []
            prefix = prefix_of(role)
            # The prefix range, and the compaction record (a role of an older Haku lacks it).
            if any(p.key == prefix for p in perms) and self._role_is_tenants(perms, prefix):
                tenants.append(role)
        return sorted(tenants)

    async def usage(self, tenant: Tenant) -> Usage:
        schema, _ = self.physical_names(tenant)
        prefix = prefix_of(schema)
        end = range_end(prefix)
        start, total_bytes, keys = prefix, 0, 0
        while True:
            page = await self._call(f"reading keys under {prefix!r}", self.kv.Range,
                                    rpc.RangeRequest(key=start, range_end=end, limit=PAGE))
            for kv in page.kvs:
                total_bytes += len(kv.key) + len(kv.value)
                keys += 1
            if not page.more or not page.kvs:
                return Usage(bytes=total_bytes, keys=keys)
            start = page.kvs[-1].key + b"\0"

    async def snapshot(self, tenant: Tenant) -> AsyncIterator[Entry]:
        """One revision of the tenant's prefix, by modification revision, a page at a time
        (each page starts at the last page's revision, skipping the keys already given)."""
        schema, _ = self.physical_names(tenant)
        prefix = prefix_of(schema)
        root, end = prefix[:-1], range_end(prefix)
        doing = f"reading a snapshot of {prefix!r}"
        first = await self._call(doing, self.kv.Range,
                                 rpc.RangeRequest(key=prefix, range_end=end, count_only=True))
        at = first.header.revision
        since, given, limit = 0, set[bytes](), PAGE
        ttls: dict[int, int] = {}
        while True:
            page = await self._call(doing, self.kv.Range, rpc.RangeRequest(
                key=prefix, range_end=end, revision=at, limit=limit, min_mod_revision=since,
                sort_order=rpc.RangeRequest.ASCEND, sort_target=rpc.RangeRequest.MOD))
            fresh = [kv for kv in page.kvs
                     if not (kv.mod_revision == since and kv.key in given)]
            if page.more and not fresh:
                limit *= 2  # more keys share one revision than a page holds
                continue
            for kv in fresh:
                ttl = 0
                if kv.lease:
                    if kv.lease not in ttls:
                        ttls[kv.lease] = await self._ttl(kv.lease)
                    ttl = ttls[kv.lease]
                yield Entry(kv.key[len(root):], kv.value, kv.mod_revision, ttl)
            if not page.more:
                return
            since = page.kvs[-1].mod_revision
            given = {kv.key for kv in page.kvs if kv.mod_revision == since}

    async def _ttl(self, lease: int) -> int:
        """The seconds lease ``lease`` has left (at least 1: a key read alive was alive)."""
        got = await self._call(f"reading etcd lease {lease:x}", self.leases.LeaseTimeToLive,
                               rpc.LeaseTimeToLiveRequest(ID=lease))
        return max(1, int(got.TTL))

    async def load(self, tenant: Tenant, entries: AsyncIterable[Entry]) -> int:
        schema, _ = self.physical_names(tenant)
        prefix = prefix_of(schema)
        root = prefix[:-1]
        if await self._count(prefix):
            raise SpaceNotEmpty(f"the etcd prefix {prefix.decode(errors='replace')!r} already "
                                "holds keys")
        leases: dict[int, int] = {}  # ttl -> lease ID: one lease per distinct TTL
        batch: list[Any] = []
        written = held = 0

        async def flush() -> None:
            await self._call(f"loading keys under {prefix!r}", self.kv.Txn,
                             rpc.TxnRequest(success=batch))
            batch.clear()

        async for entry in entries:
            lease = 0
            if entry.ttl:
                if entry.ttl not in leases:
                    granted = await self._call("granting an etcd lease", self.leases.LeaseGrant,
                                               rpc.LeaseGrantRequest(TTL=entry.ttl))
                    leases[entry.ttl] = granted.ID
                lease = leases[entry.ttl]
            size = len(root) + len(entry.key) + len(entry.value)
            if batch and (len(batch) >= LOAD_BATCH or held + size > LOAD_BATCH_BYTES):
                await flush()
                held = 0
            batch.append(rpc.RequestOp(request_put=rpc.PutRequest(
                key=root + entry.key, value=entry.value, lease=lease)))
            held += size
            written += 1
        if batch:
            await flush()
        return written

    async def clear(self, tenant: Tenant) -> None:
        schema, _ = self.physical_names(tenant)
        prefix = prefix_of(schema)
        await self._call(f"deleting keys under {prefix!r}", self.kv.DeleteRange,
                         rpc.DeleteRangeRequest(key=prefix, range_end=range_end(prefix)))

    def issue_client_certificate(self, tenant: Tenant,
                                 valid_for: timedelta = timedelta(days=365)) -> pki.KeyPair:
        """The tenant's identity: a client certificate whose CN is its etcd user."""
        _, user = self.physical_names(tenant)
        return pki.issue(self.ca, user, pki.Usage.CLIENT, algorithm=pki.KeyAlgorithm.ECDSA_P256,
                         valid_for=valid_for)

    def tenant_connection(self, tenant: Tenant,
                          certificate: pki.KeyPair | None = None) -> TenantConnection:
        schema, user = self.physical_names(tenant)
        pair = certificate or self.issue_client_certificate(tenant)
        cn = pki.common_name(pair)
        if cn != user:
            raise DataStoreError(f"the certificate is for {cn!r}, not the tenant user {user!r}")
        return TenantConnection(
            driver=self.driver,
            etcd_servers=tuple(f"https://{e}" for e in self.settings.endpoints),
            etcd_prefix=f"/{schema}",
            files={"ca.crt": self.ca.cert_pem, "tls.crt": pair.cert_pem, "tls.key": pair.key_pem},
        )

    # ------------------------------------------------------------------ compaction

    async def compact_round(self, last: CompactRound) -> CompactRound:
        """One round of kube-apiserver's compaction (k8s.io/apiserver storage/etcd3
        ``Compact``), as the etcd cluster's administrator. One Txn: if ``compact_rev_key``
        still has the version ``last`` saw, write it the revision ``last`` saw (every tenant's
        API server watching the key learns it), else read the key (another compactor went:
        learn its version, compact nothing); then, having written it, compact to that
        revision. Rounds ``interval`` apart keep between one and two intervals of history."""
        got = await self._call("taking the compaction turn", self.kv.Txn, rpc.TxnRequest(
            compare=[rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.VERSION,
                                 key=COMPACT_REV_KEY, version=last.version)],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(
                key=COMPACT_REV_KEY, value=str(last.revision).encode()))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=COMPACT_REV_KEY))]))
        now = got.header.revision
        if not got.succeeded:
            kvs = got.responses[0].response_range.kvs
            return CompactRound(version=kvs[0].version if kvs else 0, revision=now)
        if last.revision == 0:  # a first round: the revision to compact to comes next time
            return CompactRound(version=last.version + 1, revision=now)
        await self._call(f"compacting to revision {last.revision}", self.kv.Compact,
                         rpc.CompactionRequest(revision=last.revision),
                         tolerate=(ALREADY_COMPACTED,))
        return CompactRound(version=last.version + 1, revision=now, compacted=last.revision)

    async def close(self) -> None:
        await self.channel.close()

