"""What a rendered control plane needs to reach its space in a datastore (drivers make it,
render consumes it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TenantConnection:
    """What a tenant control plane needs to reach its space.

    etcd: kube-apiserver takes ``etcd_servers`` and ``etcd_prefix`` directly, with ``files``
    (ca.crt, tls.crt, tls.key: the tenant's own client certificate).
    SQL: a kine sidecar takes ``kine_endpoint`` (it holds the password: keep it in a Secret)
    and ``files`` (ca.crt to verify the server); kube-apiserver talks to kine.
    """

    driver: str
    etcd_servers: tuple[str, ...] = ()
    etcd_prefix: str = ""
    kine_endpoint: str = ""
    files: Mapping[str, bytes] = field(default_factory=dict)
