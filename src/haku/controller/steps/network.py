"""The tenant's place in the admin cluster's network: its ranges must not overlap the admin
cluster's (refused before anything is provisioned), and a NetworkPolicy lets its
control-plane pods serve their ports and reach only their datastore and the networks their
nodes live on (haku.render.netpol). Applied before the Deployment, so no control-plane pod
runs without it."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence

from lightkube.resources.networking_v1 import NetworkPolicy

from haku.api.conditions import Condition
from haku.controller.pipeline import Context, Fail, Wait
from haku.controller.steps.deps import Deps, StepBase
from haku.render import netpol, tenant_status

log = logging.getLogger(__name__)

CONDITION = "NetworkIsolated"
RESOLVE_TIMEOUT = 3.0


async def resolve(host: str) -> list[str]:
    """The addresses ``host`` resolves to here ([] if it does not)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
    except (OSError, TimeoutError) as e:
        log.warning("datastore endpoint %s does not resolve (%s): no egress to it", host, e)
        return []
    return sorted({str(info[4][0]) for info in infos})


class NetworkStep(StepBase):
    name = "network"
    condition = CONDITION

    def __init__(self, deps: Deps) -> None:
        super().__init__(deps)
        self.lifted: set[tuple[str, str]] = set()  # tenants whose NetworkPolicy is gone

    async def apply(self, ctx: Context) -> None:
        spec = ctx.spec
        admin = await self.deps.admin_network.ranges()
        problems = netpol.range_overlaps(spec, admin)
        if problems:
            raise Fail(Condition(
                CONDITION, "False", "RangesOverlap",
                "; ".join(problems) + ": the tenant's Service and pod addresses would lead "
                "into the admin cluster; choose ranges outside it (see docs/security.md)"),
                60.0)
        if not self.deps.config.tenant_network_policy:
            if ctx.key not in self.lifted:  # one made before the switch went off goes
                await self.deps.delete_owned(NetworkPolicy, ctx, spec.name)
                self.lifted.add(ctx.key)
            ctx.conditions[CONDITION] = Condition(
                CONDITION, "True", "PolicyOff",
                "the operator runs with --no-tenant-network-policy: the cluster admin "
                "isolates tenant control planes by other means")
            return
        endpoints = await self._datastore_endpoints(ctx)
        names = {netpol.split_endpoint(e)[0] for e in endpoints}
        resolved = {h: await resolve(h) for h in sorted(names)
                    if not netpol.is_ip(h) and netpol.service_namespace(h) is None}
        peers, dns = netpol.datastore_peers(endpoints, resolved)
        egress = netpol.Egress(datastore=peers, dns=dns,
                               networks=self.deps.config.tenant_networks, admin=admin)
        await self.deps.apply_checked(ctx, netpol.network_policy(spec, egress),
                                      "NetworkPolicy")
        ctx.conditions[CONDITION] = Condition(
            CONDITION, "True", "PolicyApplied",
            "NetworkPolicy " + spec.name + ": ingress on the served ports, egress to the "
            "datastore and the tenant's networks only")

    async def _datastore_endpoints(self, ctx: Context) -> Sequence[str]:
        where = tenant_status.placement(ctx.obj, self.deps.config.default_datastore)
        if not where.data_store:
            return ()  # the datastore step says why
        try:
            obj = await self.deps.drivers.read(where.data_store)
        except Wait:
            return ()  # not there: the datastore step says so, and waits
        endpoints = tuple((obj.to_dict().get("spec") or {}).get("endpoints") or ())
        try:
            for e in endpoints:
                netpol.split_endpoint(e)
        except ValueError as e:
            raise Fail(Condition("DataStoreReady", "False", "InvalidDataStore",
                                 f"DataStore {where.data_store}: {e}"), 30.0) from e
        return endpoints
