"""Reaching a tenant from the admin cluster: its admin kubeconfig, endpoint and conditions,
and the join line for a new node."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import yaml
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Secret

from haku.api.resources import FIELD_MANAGER, TenantControlPlane
from haku.tenant.tokens import BootstrapToken, JoinCommand, ca_cert_hash, token_secret


@dataclass(frozen=True)
class TenantAccess:
    namespace: str
    name: str
    endpoint: str  # host:port, as status.controlPlaneEndpoint
    kubeconfig: dict[str, Any] = field(repr=False)
    conditions: tuple[dict[str, Any], ...] = ()

    @property
    def ca_pem(self) -> bytes:
        cluster = self.kubeconfig["clusters"][0]["cluster"]
        return base64.b64decode(cluster["certificate-authority-data"])

    def condition(self, ctype: str) -> dict[str, Any] | None:
        return next((c for c in self.conditions if c.get("type") == ctype), None)

    def client(self, timeout: float = 10.0) -> AsyncClient:
        return AsyncClient(KubeConfig.from_dict(self.kubeconfig), field_manager=FIELD_MANAGER,
                           timeout=httpx2.Timeout(timeout), trust_env=False)


async def load(admin: AsyncClient, namespace: str, name: str,
               key: str = "admin.conf") -> TenantAccess:
    """A tenant's admin kubeconfig (``key`` of its admin Secret) and status, or LookupError."""
    try:
        tcp = await admin.get(TenantControlPlane, name, namespace=namespace)
    except ApiError as e:
        if e.status.code == 404:
            raise LookupError(f"TenantControlPlane {namespace}/{name} does not exist") from e
        raise
    return await from_object(admin, tcp.to_dict(), key)  # type: ignore[no-untyped-call]


async def from_object(admin: AsyncClient, tcp: dict[str, Any],
                      key: str = "admin.conf") -> TenantAccess:
    """As :func:`load`, for a TenantControlPlane already read (as a dict)."""
    namespace, name = tcp["metadata"]["namespace"], tcp["metadata"]["name"]
    status = tcp.get("status") or {}
    secret_name = status.get("kubeconfig", {}).get("admin", {}).get("secretName")
    endpoint = status.get("controlPlaneEndpoint")
    if not secret_name or not endpoint:
        raise LookupError(f"{namespace}/{name} has no admin kubeconfig or endpoint yet "
                          "(not provisioned)")
    secret = await admin.get(Secret, secret_name, namespace=namespace)
    doc = yaml.safe_load(base64.b64decode((secret.data or {})[key]))
    return TenantAccess(namespace, name, endpoint, doc,
                        tuple(status.get("conditions") or ()))


async def create_join_command(access: TenantAccess, ttl: timedelta,
                              now: datetime | None = None) -> JoinCommand:
    """Create a bootstrap token in the tenant valid for ``ttl``; the line that uses it."""
    if ttl <= timedelta(0):
        raise ValueError("the token TTL must be positive")
    token = BootstrapToken.generate()
    expires = (now or datetime.now(UTC)) + ttl
    client = access.client()
    try:
        await client.create(from_dict(token_secret(token, expires)))
    finally:
        await client.close()
    return JoinCommand(access.endpoint, str(token), ca_cert_hash(access.ca_pem))
