"""The host name clients dial when an Ingress or a Gateway API TLSRoute stands in front of the
tenant's Service (spec.controlPlane.ingress.hostname, spec.controlPlane.gateway.hostname; the
CRD refuses both at once). Pure: no I/O.

That host name (and port) is the tenant's endpoint: status.controlPlaneEndpoint, the server
of admin.conf, kubeadm's controlPlaneEndpoint in kubeadm-config, cluster-info (what ``kubeadm
join`` discovers) and kube-proxy's kubeconfig; it is a DNS SAN of the API server certificate
(haku.render.tenant_pki). The operator itself dials the Service, not the host name
(``Context.operator_endpoint``, the server of its super-admin.conf): a name published for
clients outside need not resolve, nor route back, from where the operator runs, and the
tenant's readiness should not hang on an Ingress controller the operator cannot see.
"""

from __future__ import annotations

from dataclasses import dataclass

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.render import gateway


@dataclass(frozen=True)
class Front:
    """What stands in front of the Service: ``kind`` (``ingress`` or ``gateway``), the host
    name (no port) and the port clients dial."""

    kind: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}"


def split_hostname(hostname: str) -> tuple[str, int | None]:
    """``host[:port]`` as (host, port or None)."""
    host, sep, port = hostname.rpartition(":")
    if sep and host and port.isdigit():
        return host, int(port)
    return hostname, None


def ingress_endpoint(spec: TenantControlPlaneSpec) -> tuple[str, int] | None:
    """(host, port) clients dial through the Ingress; None without an ingress hostname. The
    port: the one after the hostname, else networkProfile.port (Kamaji's choice)."""
    if not spec.ingress_hostname:
        return None
    host, port = split_hostname(spec.ingress_hostname)
    return host, port if port is not None else spec.port


def front(spec: TenantControlPlaneSpec) -> Front | None:
    """The Ingress's or the Gateway's host name and port, or None when clients dial the
    Service itself."""
    through = gateway.endpoint(spec)
    if through is not None:
        return Front("gateway", *through)
    through = ingress_endpoint(spec)
    if through is not None:
        return Front("ingress", *through)
    return None

