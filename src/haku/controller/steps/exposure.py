"""How clients reach the tenant: the Service (and from it the control-plane endpoint, or the
host name of spec.controlPlane.ingress or .gateway: haku.render.endpoint) and, when the spec
asks for one, an Ingress (the TLSRoutes: haku.controller.steps.gateway)."""

from __future__ import annotations

from typing import Any

from lightkube.resources.core_v1 import Node
from lightkube.resources.networking_v1 import Ingress

from haku.api.conditions import Condition
from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.controller.pipeline import Context, Wait
from haku.controller.steps.deps import StepBase
from haku.render import controlplane, konnectivity
from haku.render.endpoint import front
from haku.render.netpol import is_ip

CONDITION = "ControlPlaneAvailable"


def endpoint_port(spec: TenantControlPlaneSpec, svc: Any) -> int:
    """The port clients dial: for NodePort the Service's node port (networkProfile.port when
    given, else the one the API server allocated), else networkProfile.port."""
    if spec.service_type == "NodePort":
        allocated = node_port(svc)
        if allocated:
            return allocated
    return spec.port


def url_host(address: str) -> str:
    """``address`` as the host part of a URL (IPv6 addresses in brackets)."""
    return f"[{address}]" if ":" in address and is_ip(address) else address


class ServiceStep(StepBase):
    name = "service"
    condition = CONDITION

    async def apply(self, ctx: Context) -> None:
        spec = ctx.spec
        previous = service_status(ctx.previous_status)
        # kube-apiserver's port as last seen (a NodePort's allocated port), so that a steady
        # reconcile applies the Service once.
        target = int(previous.get("apiServerPort") or spec.port)
        svc = await self.deps.apply_checked(ctx, controlplane.service(spec, target), "Service")
        secure = controlplane.secure_port(spec, node_port(svc))
        if secure != target:
            svc = await self.deps.apply_checked(ctx, controlplane.service(spec, secure),
                                                "Service")
        ctx.service = svc
        ctx.secure_port = secure
        if spec.addons.konnectivity is not None:
            ctx.konnectivity_port = (node_port(svc, konnectivity.SERVICE_PORT_NAME)
                                     if spec.service_type == "NodePort" else None) \
                or spec.addons.konnectivity.server.port
        ctx.address = await self.endpoint_address(ctx, svc)
        ctx.port = endpoint_port(spec, svc)
        # The Service's endpoint: advertiseAddress when given. The operator always dials it
        # (its probes, in-tenant objects and watches; super-admin.conf's server).
        ctx.endpoint = f"https://{url_host(spec.advertise_address or ctx.address)}:{ctx.port}"
        ctx.operator_endpoint = ctx.endpoint
        ctx.status["controlPlaneEndpoint"] = f"{ctx.address}:{ctx.port}"
        # What tenants are told (admin.conf, cluster-info, kubeadm-config): with
        # spec.controlPlane.ingress or .gateway the host name in front and its port.
        through = front(spec)
        if through is not None:
            ctx.endpoint = through.url
            ctx.status["controlPlaneEndpoint"] = through.host_port
            if through.kind == "gateway" and spec.addons.konnectivity is not None:
                # Agents dial the Gateway's listener konnectivity-server (the route's port).
                ctx.konnectivity_port = spec.addons.konnectivity.server.port
        status: dict[str, Any] = {
            "name": controlplane.names(spec.name)["service"], "namespace": spec.namespace,
            "port": ctx.port, "apiServerPort": secure}
        # None: not (or no longer) so; the status merge removes a stale value.
        status["nodeAddress"] = ctx.address if spec.service_type == "NodePort" \
            and not spec.address else None
        status["konnectivityPort"] = ctx.konnectivity_port or None
        ctx.status.setdefault("kubernetesResources", {})["service"] = status

    async def endpoint_address(self, ctx: Context, svc: Any) -> str:
        spec = ctx.spec
        if spec.address:
            return spec.address
        if spec.service_type == "LoadBalancer":
            ingress = (svc.status.loadBalancer.ingress if svc.status and svc.status.loadBalancer
                       else None) or []
            for entry in ingress:
                if entry.ip or entry.hostname:
                    return str(entry.ip or entry.hostname)
            raise Wait(Condition(
                CONDITION, "False", "WaitingForLoadBalancer",
                f"Service {svc.metadata.name} has no load-balancer address yet"), 5.0)
        if spec.service_type == "NodePort":
            if self.deps.config.node_address:
                return self.deps.config.node_address
            nodes = [node async for node in self.deps.client.list(Node)]
            chosen = choose_node_address(nodes, previous_node_address(ctx.previous_status))
            if chosen is None:
                raise Wait(Condition(CONDITION, "False", "NoNodeAddress",
                                     "no Ready node has an InternalIP for the NodePort"), 10.0)
            return chosen
        return str(svc.spec.clusterIP)


def service_status(status: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = (status.get("kubernetesResources") or {}).get("service") or {}
    return found


def node_port(svc: Any, name: str = controlplane.API_PORT_NAME) -> int | None:
    """The node port of the Service's port ``name`` (the API port), if it has one."""
    for p in getattr(getattr(svc, "spec", None), "ports", None) or []:
        if p.name == name and p.nodePort:
            return int(p.nodePort)
    return None


def previous_node_address(status: dict[str, Any]) -> str | None:
    """The node address a NodePort tenant was given before (status; for tenants from before
    it was recorded, the host of its controlPlaneEndpoint)."""
    recorded = service_status(status).get("nodeAddress")
    if recorded:
        return str(recorded)
    endpoint = status.get("controlPlaneEndpoint") or ""
    host = endpoint.rpartition(":")[0].removeprefix("[").removesuffix("]")
    return host if is_ip(host) else None


def _internal_ips(node: Any) -> list[str]:
    return [str(a.address) for a in (node.status.addresses if node.status else None) or []
            if a.type == "InternalIP"]


def _ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True"
               for c in (node.status.conditions if node.status else None) or [])


def choose_node_address(nodes: list[Any], previous: str | None) -> str | None:
    """The address a NodePort tenant's endpoint uses. The one it had, as long as a node still
    has it (Ready or not: a node that is down for a while does not move every endpoint and
    reissue every certificate); otherwise the first InternalIP of the first Ready node by
    name, so the choice does not depend on the order nodes are listed in. None: no Ready
    node has an InternalIP."""
    if previous and any(previous in _internal_ips(n) for n in nodes):
        return previous
    for node in sorted(nodes, key=lambda n: n.metadata.name):
        ips = _internal_ips(node)
        if ips and _ready(node):
            return ips[0]
    return None


class IngressStep(StepBase):
    name = "ingress"
    condition = CONDITION

    async def apply(self, ctx: Context) -> None:
        ingress = controlplane.ingress(ctx.spec)
        if ingress:
            await self.deps.apply_checked(ctx, ingress, "Ingress")
        else:
            name = controlplane.names(ctx.spec.name)["ingress"]
            if not self.deps.no_ingress(ctx.spec.namespace, name):
                await self.deps.delete_owned(Ingress, ctx, name)

