"""spec.controlPlane.gateway (Kamaji's shape): Gateway API TLSRoutes to the tenant's Service,
and what their status says. Pure: no I/O.

A TLSRoute ``<tcp>`` sends the TLS connections whose SNI is the gateway hostname, arriving at
the Gateway listener ``parentRefs`` names, to the Service's API port, unterminated (the
listener must be ``protocol: TLS``, ``tls.mode: Passthrough``). With the Konnectivity addon a
second TLSRoute ``<tcp>-konnectivity`` (same hostname) sends the agents' connections arriving
at the same Gateway's listener ``konnectivity-server`` (on the proxy-server's port) to the
Service's Konnectivity port, as Kamaji does.

TLSRoute is served as ``gateway.networking.k8s.io/v1`` (the standard channel) since Gateway
API v1.5; v1alpha2 and v1alpha3 are still in the CRD but no longer served (v1.5.1, v1.6.3).
"""

from __future__ import annotations

from typing import Any

from haku.api.tenantcontrolplane import Gateway, TenantControlPlaneSpec
from haku.render import controlplane
from haku.render import konnectivity as konnectivity_render

GROUP = "gateway.networking.k8s.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TLSRoute"
PLURAL = "tlsroutes"
CRD_NAME = f"{PLURAL}.{GROUP}"
# The Gateway listener the Konnectivity route attaches to (Kamaji's name).
KONNECTIVITY_SECTION = "konnectivity-server"


def route_names(tcp: str) -> dict[str, str]:
    """The TLSRoutes of TenantControlPlane ``tcp`` (in its namespace)."""
    return {"api": tcp, "konnectivity": f"{tcp}-konnectivity"}


def endpoint(spec: TenantControlPlaneSpec) -> tuple[str, int] | None:
    """(host, port) clients dial through the Gateway; None without spec.controlPlane.gateway.
    The port: the one after the hostname, else the parentRef's port (the listener's), else
    networkProfile.port (Kamaji's choice)."""
    gw = spec.gateway
    if gw is None:
        return None
    port = gw.port_given
    if port is None:
        port = next((int(p["port"]) for p in gw.parent_refs if p.get("port")), spec.port)
    return gw.host, port


def _route(spec: TenantControlPlaneSpec, gw: Gateway, name: str, component: str,
           parent_refs: list[dict[str, Any]], port: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": spec.namespace,
            "labels": {**gw.metadata.labels, **controlplane.labels(spec, component)},
            "annotations": dict(gw.metadata.annotations),
        },
        "spec": {
            "parentRefs": parent_refs,
            "hostnames": [gw.host],
            "rules": [{"backendRefs": [{
                "group": "", "kind": "Service",
                "name": controlplane.names(spec.name)["service"], "port": port}]}],
        },
    }


def tls_route(spec: TenantControlPlaneSpec) -> dict[str, Any] | None:
    """The TLSRoute to kube-apiserver (the Service's API port); None without a gateway."""
    gw = spec.gateway
    if gw is None:
        return None
    return _route(spec, gw, route_names(spec.name)["api"], "gateway",
                  [dict(p) for p in gw.parent_refs], spec.port)


def konnectivity_route(spec: TenantControlPlaneSpec) -> dict[str, Any] | None:
    """The TLSRoute to the Konnectivity proxy-server: the parentRefs with the listener
    ``konnectivity-server`` on the proxy-server's port. None without a gateway or the addon."""
    gw, addon = spec.gateway, spec.addons.konnectivity
    if gw is None or addon is None:
        return None
    parents = [{**p, "sectionName": KONNECTIVITY_SECTION, "port": addon.server.port}
               for p in gw.parent_refs]
    return _route(spec, gw, route_names(spec.name)["konnectivity"], "konnectivity-gateway",
                  parents, konnectivity_render.service_port(addon, False)["port"])


def routes(spec: TenantControlPlaneSpec) -> list[dict[str, Any]]:
    """Every TLSRoute the spec asks for (none, one, or two with Konnectivity)."""
    return [r for r in (tls_route(spec), konnectivity_route(spec)) if r is not None]


def _same_parent(ref: dict[str, Any], wanted: dict[str, Any], namespace: str) -> bool:
    """Whether status parentRef ``ref`` names the parent ``wanted`` (defaults filled in)."""
    def norm(p: dict[str, Any]) -> tuple[Any, ...]:
        return (p.get("group", GROUP) or "", p.get("kind") or "Gateway",
                p.get("namespace") or namespace, p.get("name"))
    return norm(ref) == norm(wanted)


def acceptance(route: dict[str, Any], spec: TenantControlPlaneSpec) -> tuple[bool, str, str]:
    """(accepted, reason, message) of a TLSRoute as read: accepted once some controller reports
    Accepted and ResolvedRefs True for the spec's parent. Reasons: WaitingForGateway (no
    controller reported on that parent yet), RouteNotAccepted, RouteRefsNotResolved,
    RouteAccepted."""
    name = route.get("metadata", {}).get("name", "")
    wanted = spec.gateway.parent_refs[0] if spec.gateway and spec.gateway.parent_refs else {}
    parents = [p for p in ((route.get("status") or {}).get("parents") or [])
               if _same_parent(p.get("parentRef") or {}, wanted, spec.namespace)]
    if not parents:
        return (False, "WaitingForGateway",
                f"TLSRoute {name}: no Gateway controller has reported on parent "
                f"{_describe(wanted, spec.namespace)} yet (its status.parents is empty)")
    problems: list[tuple[str, str]] = []
    for parent in parents:
        conds = {c.get("type"): c for c in parent.get("conditions") or []}
        accepted, resolved = conds.get("Accepted"), conds.get("ResolvedRefs")
        who = parent.get("controllerName") or "its controller"
        if accepted is None or accepted.get("status") != "True":
            problems.append(("RouteNotAccepted", _said(name, who, "Accepted", accepted)))
        elif resolved is not None and resolved.get("status") != "True":
            problems.append(("RouteRefsNotResolved", _said(name, who, "ResolvedRefs",
                                                           resolved)))
        else:
            return (True, "RouteAccepted",
                    f"TLSRoute {name} accepted by {who} on parent "
                    f"{_describe(wanted, spec.namespace)}")
    return (False, problems[0][0], "; ".join(m for _, m in problems))


def _said(name: str, who: str, ctype: str, cond: dict[str, Any] | None) -> str:
    if cond is None:
        return f"TLSRoute {name}: {who} has not set {ctype} yet"
    return (f"TLSRoute {name}: {who} says {ctype}={cond.get('status')} "
            f"({cond.get('reason') or 'no reason'}: {cond.get('message') or ''})")


def _describe(ref: dict[str, Any], namespace: str) -> str:
    where = f"{ref.get('kind') or 'Gateway'} {ref.get('namespace') or namespace}/{ref.get('name')}"
    if ref.get("sectionName"):
        where += f" listener {ref['sectionName']}"
    if ref.get("port"):
        where += f" port {ref['port']}"
    return where


def status(route: dict[str, Any], spec: TenantControlPlaneSpec) -> dict[str, Any]:
    """status.kubernetesResources.gateway (Kamaji's shape): the route's parents as read,
    routeRef and the access point clients use."""
    meta = route.get("metadata") or {}
    host_port = endpoint(spec)
    out: dict[str, Any] = {
        "parents": list((route.get("status") or {}).get("parents") or []),
        "routeRef": {"name": meta.get("name", ""), "namespace": meta.get("namespace", "")},
    }
    if host_port is not None:
        host, port = host_port
        out["accessPoints"] = [{"type": "Hostname", "value": host, "port": port,
                                "urls": [f"https://{host}:{port}"]}]
    return out
