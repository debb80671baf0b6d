"""How clients reach the tenant: the Service (and from it the control-plane endpoint) and,
when the spec asks for one, an Ingress."""

from __future__ import annotations

from typing import Any

from lightkube.resources.core_v1 import Node
from lightkube.resources.networking_v1 import Ingress

from haku.api.conditions import Condition
from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.controller.pipeline import Context, Wait
from haku.controller.steps.deps import StepBase
from haku.render import controlplane
from haku.render.netpol import is_ip

CONDITION = "ControlPlaneAvailable"


def endpoint_port(spec: TenantControlPlaneSpec, svc: Any) -> int:
    """The port clients dial: for NodePort the Service's node port (networkProfile.port when
    given, else the one the API server allocated), else networkProfile.port."""
    if spec.service_type == "NodePort":
        ports = getattr(getattr(svc, "spec", None), "ports", None) or []
        for p in ports:
            if p.name == "kube-apiserver" and p.nodePort:
                return int(p.nodePort)
    return spec.port


def url_host(address: str) -> str:
    """``address`` as the host part of a URL (IPv6 addresses in brackets)."""
    return f"[{address}]" if ":" in address and is_ip(address) else address


class ServiceStep(StepBase):
    name = "service"
    condition = CONDITION

    async def apply(self, ctx: Context) -> None:
        spec = ctx.spec
        svc = await self.deps.apply_checked(ctx, controlplane.service(spec), "Service")
        ctx.service = svc
        ctx.address = await self.endpoint_address(spec, svc)
        ctx.port = endpoint_port(spec, svc)
        # What tenants are told (admin.conf, cluster-info): advertiseAddress when given.
        ctx.endpoint = f"https://{url_host(spec.advertise_address or ctx.address)}:{ctx.port}"
        ctx.status["controlPlaneEndpoint"] = f"{ctx.address}:{ctx.port}"
        ctx.status.setdefault("kubernetesResources", {})["service"] = {
            "name": controlplane.names(spec.name)["service"], "namespace": spec.namespace,
            "port": ctx.port}

    async def endpoint_address(self, spec: TenantControlPlaneSpec, svc: Any) -> str:
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
            async for node in self.deps.client.list(Node):
                for a in (node.status.addresses if node.status else None) or []:
                    if a.type == "InternalIP":
                        return str(a.address)
            raise Wait(Condition(CONDITION, "False", "NoNodeAddress",
                                 "no node has an InternalIP for the NodePort"), 10.0)
        return str(svc.spec.clusterIP)



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

