"""etcd: one user, one role and one key prefix per tenant, over async gRPC with mutual TLS.

The tenant's user has no password: etcd (``--client-cert-auth``) takes the CN of the client
certificate as the user, and Haku signs that certificate with the DataStore's CA. The role
grants readwrite on ``/<schema>/`` (the trailing slash keeps ``/a`` from covering ``/aa``).
Haku itself connects with the DataStore's client certificate (normally the ``root`` user).
A tenant whose user or role would be ``root`` or that administrator is refused before any
request: granting the ``root`` role to a tenant user would make it an administrator.

Ownership: etcd's users and roles carry no marker, so a tenant's objects are recognised by
shape. An existing role is taken as the tenant's only if it holds no permission but on the
tenant's own prefix range, an existing user only if it holds no role but the tenant's, and
keys under the prefix only if the tenant's role exists (Haku makes the role before any key is
written and deletes the keys before the role). Anything else is refused with
:class:`~haku.datastore.base.NotOwned` before any change, and left untouched by delete.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from datetime import timedelta
from typing import Any

import grpc
from aetcd import rpc  # generated etcd v3 stubs only; the connection is ours

from haku.datastore.base import (
    AuthenticationFailed,
    DataStoreError,
    InsecureConfiguration,
    InvalidTLSConfig,
    PermissionDenied,
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
                     ("grpc.lb_policy_name", "round_robin")],
        )
        self.kv = rpc.KVStub(self.channel)
        self.auth = rpc.AuthStub(self.channel)
        self.maintenance = rpc.MaintenanceStub(self.channel)

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
        """(schema, user): the schema is also the role's name. :class:`InvalidName` for
        ``root`` and Haku's own user (checked before any request)."""
        schema = physical_name(tenant.schema, SCHEMA_LIMIT, SCHEMA_CHARS)
        user = physical_name(tenant.user, USER_LIMIT, USER_CHARS)
        reserved = (*RESERVED, self.admin_user)
        refuse_reserved(schema, tenant.schema, "schema (etcd role)", reserved)
        refuse_reserved(user, tenant.user, "user (etcd user)", reserved)
        return schema, user

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

    async def _inspect(self, schema: str, user: str, prefix: bytes
                       ) -> tuple[list[str] | None, list[Any] | None, int]:
        """Reads only: the roles of ``user`` and the permissions of role ``schema`` (None for
        an absent one), and, when the role is absent, how many keys lie under ``prefix``."""
        got_user = await self._call(f"reading etcd user {user!r}", self.auth.UserGet,
                                    rpc.AuthUserGetRequest(name=user),
                                    tolerate=("user name not found",))
        got_role = await self._call(f"reading etcd role {schema!r}", self.auth.RoleGet,
                                    rpc.AuthRoleGetRequest(role=schema),
                                    tolerate=("role name not found",))
        keys = 0
        if got_role is None:
            found = await self._call(f"counting keys under {prefix!r}", self.kv.Range,
                                     rpc.RangeRequest(key=prefix, range_end=range_end(prefix),
                                                      count_only=True))
            keys = int(found.count)
        return (None if got_user is None else list(got_user.roles),
                None if got_role is None else list(got_role.perm), keys)

    @staticmethod
    def _role_is_tenants(perms: list[Any], prefix: bytes) -> bool:
        """No permission but on the tenant's own prefix range (of any type)."""
        return all(p.key == prefix and p.range_end == range_end(prefix) for p in perms)

    async def ensure_tenant(self, tenant: Tenant) -> None:
        schema, user = self.physical_names(tenant)
        prefix = prefix_of(schema)
        # Every reconcile ensures; writes to etcd's auth store are global, so read first.
        roles, perms, keys = await self._inspect(schema, user, prefix)
        if roles is not None and any(r != schema for r in roles):
            raise not_owned("etcd user (holding other roles)", user)
        if perms is not None and not self._role_is_tenants(perms, prefix):
            raise not_owned("etcd role (holding other permissions)", schema)
        if perms is None and keys:
            raise not_owned("etcd key prefix (holding keys, but no role of its name)",
                            prefix.decode(errors="replace"))
        ready_role = perms is not None and any(p.permType == rpc.Permission.READWRITE
                                               for p in perms)
        if roles == [schema] and ready_role:
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
        if not ready_role:
            permission = rpc.Permission(permType=rpc.Permission.READWRITE, key=prefix,
                                        range_end=range_end(prefix))
            await self._call(f"granting {prefix!r} to role {schema!r}",
                             self.auth.RoleGrantPermission,
                             rpc.AuthRoleGrantPermissionRequest(name=schema, perm=permission))
        if roles != [schema]:
            await self._call(f"granting role {schema!r} to user {user!r}",
                             self.auth.UserGrantRole,
                             rpc.AuthUserGrantRoleRequest(user=user, role=schema))

    async def delete_tenant(self, tenant: Tenant) -> None:
        """Data first, then the role, then the user, so a half-done delete resumes cleanly;
        each only if it is the tenant's by the rules of the module's docstring."""
        schema, user = self.physical_names(tenant)
        prefix = prefix_of(schema)
        roles, perms, _ = await self._inspect(schema, user, prefix)
        role_ours = perms is not None and self._role_is_tenants(perms, prefix)
        if role_ours:
            await self._call(f"deleting keys under {prefix!r}", self.kv.DeleteRange,
                             rpc.DeleteRangeRequest(key=prefix, range_end=range_end(prefix)))
            await self._call(f"deleting etcd role {schema!r}", self.auth.RoleDelete,
                             rpc.AuthRoleDeleteRequest(role=schema),
                             tolerate=("role name not found",))
        # A user holding the role (etcd drops a deleted role from its users) only if the
        # role was the tenant's: a foreign user given a foreign role of that name stays.
        if roles is not None and (roles == [] or (roles == [schema] and role_ours)):
            await self._call(f"deleting etcd user {user!r}", self.auth.UserDelete,
                             rpc.AuthUserDeleteRequest(name=user),
                             tolerate=("user name not found",))

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
            if len(perms) == 1 and perms[0].key == prefix and \
                    perms[0].range_end == range_end(prefix):
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

    async def close(self) -> None:
        await self.channel.close()

