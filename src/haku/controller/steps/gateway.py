"""spec.controlPlane.gateway: the tenant's Gateway API TLSRoutes (haku.render.gateway),
applied while the spec asks for them and deleted once it no longer does, and what the Gateway
controller says of them (status.kubernetesResources.gateway, and ControlPlaneAvailable while
the route is not accepted).

No GET for tenants without a gateway: the routes are looked for only while the spec names a
gateway or the status still records one (it is recorded as soon as a route is applied)."""

from __future__ import annotations

from typing import Any

import httpx2
from lightkube import ApiError
from lightkube.generic_resource import create_namespaced_resource

from haku.api.conditions import Condition
from haku.controller.pipeline import Context, Fail, Wait
from haku.controller.steps.deps import StepBase
from haku.render import gateway

CONDITION = "ControlPlaneAvailable"

TLSRoute = create_namespaced_resource(gateway.GROUP, gateway.VERSION, gateway.KIND,
                                      gateway.PLURAL)

NOT_INSTALLED = "GatewayAPINotInstalled"


def not_installed(e: httpx2.HTTPStatusError) -> bool:
    """Whether ``e`` says the admin cluster does not serve TLSRoute (the Gateway API CRDs
    are not installed): a 404 that is not about an object (the API server answers an unknown
    resource with a plain-text 404, an object's 404 is a Status that names it)."""
    if e.response.status_code != 404:
        return False
    if not isinstance(e, ApiError):
        return True
    details = getattr(e.status, "details", None)
    return not getattr(details, "name", None)


def recorded(status: dict[str, Any]) -> bool:
    return bool((status.get("kubernetesResources") or {}).get("gateway"))


class GatewayStep(StepBase):
    name = "gateway"
    condition = CONDITION

    async def apply(self, ctx: Context) -> None:
        spec = ctx.spec
        wanted = gateway.routes(spec)
        if not wanted:
            if recorded(ctx.previous_status):
                await self.delete_routes(ctx, set())
                ctx.status.setdefault("kubernetesResources", {})["gateway"] = None
            return
        applied: dict[str, Any] = {}
        for manifest in wanted:
            try:
                obj = await self.deps.apply_checked(ctx, manifest, "TLSRoute")
            except httpx2.HTTPStatusError as e:
                if not not_installed(e):
                    raise
                raise Fail(Condition(
                    CONDITION, "False", NOT_INSTALLED,
                    f"spec.controlPlane.gateway needs the Gateway API's TLSRoute "
                    f"({gateway.API_VERSION}), which the admin cluster does not serve: install "
                    f"the Gateway API CRDs (standard channel, v1.5 or later) and a Gateway "
                    f"controller, or remove spec.controlPlane.gateway"), 60.0) from e
            applied[manifest["metadata"]["name"]] = obj.to_dict() if hasattr(
                obj, "to_dict") else obj
        # The Konnectivity route goes when the addon does.
        await self.delete_routes(ctx, set(applied))
        api = applied[gateway.route_names(spec.name)["api"]]
        ctx.status.setdefault("kubernetesResources", {})["gateway"] = gateway.status(api, spec)
        accepted, reason, message = gateway.acceptance(api, spec)
        if not accepted:
            before = ctx.conditions.get(CONDITION)
            if before is not None and before.status != "True":
                message += f"; {before.reason}: {before.message}"
            raise Wait(Condition(CONDITION, "False", reason, message), 15.0)

    async def delete_routes(self, ctx: Context, keep: set[str]) -> None:
        for name in gateway.route_names(ctx.spec.name).values():
            if name in keep:
                continue
            try:
                await self.deps.delete_owned(TLSRoute, ctx, name)
            except httpx2.HTTPStatusError as e:
                if not not_installed(e):
                    raise
                return  # no TLSRoute served: none to delete
