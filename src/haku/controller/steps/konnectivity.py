"""``KonnectivityConnected``: whether the tenant's Konnectivity agents are connected to the
proxy-server beside its kube-apiserver (an agent is ready once connected; the bootstrap step
reads their workload). Informational: it does not gate ``Ready``, which means a node can
join now, and before any node joins no agent runs. Absent when the addon is off."""

from __future__ import annotations

from haku.api.conditions import Condition
from haku.controller.pipeline import Context
from haku.controller.steps.deps import StepBase

CONDITION = "KonnectivityConnected"


class KonnectivityStep(StepBase):
    name = "konnectivity"
    condition = CONDITION
    informational = True

    async def apply(self, ctx: Context) -> None:
        addon = ctx.spec.addons.konnectivity
        if addon is None:
            ctx.removed_conditions.add(CONDITION)
            return
        ctx.conditions[CONDITION] = agents_condition(ctx)


def agents_condition(ctx: Context) -> Condition:
    serving = ctx.conditions.get("APIServerReady")
    if serving is None or serving.status != "True":
        return Condition(CONDITION, "False", "WaitingForAPIServer",
                         "the tenant API does not answer yet")
    agents = ctx.agents
    if agents is None:
        bootstrapped = ctx.conditions.get("TenantBootstrapped")
        return Condition(CONDITION, "False", "NoAgents",
                         "the agents' workload is not in the tenant"
                         + (f" ({bootstrapped.reason}: {bootstrapped.message})"
                            if bootstrapped is not None and bootstrapped.status != "True"
                            else ""))
    where = (f"kube-system/konnectivity-agent ({agents.mode})")
    if agents.desired == 0:
        return Condition(CONDITION, "False", "NoAgentsScheduled",
                         f"{where} runs no agent yet: agents start when nodes join")
    if agents.ready == 0:
        return Condition(CONDITION, "False", "NotConnected",
                         f"0 of {agents.desired} agents of {where} connected to the "
                         "proxy-server: the tenant's API server cannot reach its nodes, pods "
                         "or Services (logs, exec, webhooks, aggregated APIs)")
    return Condition(CONDITION, "True", "Connected",
                     f"{agents.ready} of {agents.desired} agents of {where} connected")
