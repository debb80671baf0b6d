"""``TenantBootstrapped``: kubeadm's bootstrap objects and the addons in ``spec.addons``,
applied inside the tenant once its API answers (haku.tenant.bootstrap); the tenant's objects
are watched so that drift is repaired. While an upgrade rolls the control plane they keep the
version that runs (haku.render.upgrade)."""

from __future__ import annotations

from typing import Any

import httpx2
import yaml
from lightkube import ApiError, AsyncClient, KubeConfig

from haku.api.conditions import Condition
from haku.controller.pipeline import Context
from haku.controller.resources import FIELD_MANAGER
from haku.controller.steps.deps import StepBase
from haku.render import ca_rotation, konnectivity, tenant_bootstrap, upgrade
from haku.tenant import bootstrap

CONDITION = "TenantBootstrapped"


class BootstrapStep(StepBase):
    name = "bootstrap"
    condition = CONDITION

    async def apply(self, ctx: Context) -> None:
        installed = bootstrap.installed_from_status(ctx.previous_status)
        ctx.status["addons"] = bootstrap.status_from_installed(installed)
        serving = ctx.conditions.get("APIServerReady")
        if serving is None or serving.status != "True":
            if self.deps.watches is not None:
                await self.deps.watches.stop(ctx.key)
            ctx.conditions[CONDITION] = Condition(CONDITION, "False", "WaitingForAPIServer",
                                                  "the tenant API does not answer yet")
            return
        ctx.conditions[CONDITION] = await self._bootstrap(ctx, installed)

    async def _bootstrap(self, ctx: Context, installed: dict[str, bool]) -> Condition:
        # During an upgrade's control-plane phase the objects keep the running version.
        previous = (ctx.previous_status.get("kubernetesResources") or {}).get("version")
        ctx.tenant_version = upgrade.tenant_objects_version(
            previous, ctx.spec.version, ctx.rollout or upgrade.Rollout(0, 0, False),
            ctx.observed_version)
        spec = ctx.spec.at_version(ctx.tenant_version)
        trust = ctx.pki[ca_rotation.BUNDLE]
        groups = tenant_bootstrap.bootstrap_objects(spec, trust, ctx.endpoint,
                                                    ctx.konnectivity_port or None)
        doc: dict[str, Any] = yaml.safe_load(ctx.super_admin)
        tenant = AsyncClient(KubeConfig.from_dict(doc), field_manager=FIELD_MANAGER,
                             timeout=httpx2.Timeout(10.0), trust_env=False)
        # What is installed now, updated as each addon is applied or pruned: a failure
        # halfway keeps the addons already done in the status (and an unfinished prune
        # marked installed, so it is retried).
        progress = dict(installed)
        self.deps.fence.check()  # the tenant's API is not behind the admin client's fence
        try:
            pruned = await bootstrap.reconcile(tenant, groups, progress)
            if spec.addons.konnectivity is not None:
                ctx.agents = await self._agents(ctx, tenant, spec.addons.konnectivity.agent.mode)
        except bootstrap.BootstrapFailed as e:
            return Condition(CONDITION, "False", e.reason, e.message)
        except (httpx2.HTTPError, ApiError, OSError) as e:
            return Condition(CONDITION, "False", "Unreachable",
                             f"applying inside the tenant: {e}")
        finally:
            ctx.status["addons"] = bootstrap.status_from_installed(progress)
            if spec.addons.konnectivity is None:
                ctx.status["addons"]["konnectivity"]["agent"] = None  # gone with the addon
            elif ctx.agents is not None:
                ctx.status["addons"]["konnectivity"]["agent"] = {
                    "name": konnectivity.AGENT, "namespace": konnectivity.AGENT_NAMESPACE,
                    "mode": ctx.agents.mode, "desired": ctx.agents.desired,
                    "ready": ctx.agents.ready}
            await tenant.close()
        ctx.tenant_objects_version = ctx.tenant_version
        ctx.bundle_applied = trust
        if pruned:
            self.deps.events.emit(ctx.obj, "Normal", "AddonRemoved",
                                  "removed from the tenant: " + ", ".join(pruned))
        if self.deps.watches is not None and self.deps.config.watch_tenants:
            self.deps.watches.ensure(ctx.key, doc)
        addons = [a for a in bootstrap.ADDONS if progress.get(a)]
        return Condition(CONDITION, "True", "Bootstrapped",
                         "kubeadm's bootstrap objects" +
                         (" and " + ", ".join(addons) if addons else "") +
                         " applied; nodes can join")

    async def _agents(self, ctx: Context, tenant: AsyncClient,
                      mode: str) -> bootstrap.Agents | None:
        """The agents' state, after removing those of the other kind when the mode
        changed."""
        before = ((ctx.previous_status.get("addons") or {}).get("konnectivity") or {}) \
            .get("agent") or {}
        if before.get("mode") and before["mode"] != mode and \
                await bootstrap.remove_agent_kind(tenant, mode):
            self.deps.events.emit(ctx.obj, "Normal", "AddonRemoved",
                                  f"Konnectivity agents: {before['mode']} replaced by {mode}")
        return await bootstrap.agents(tenant, mode)

    async def cleanup(self, ctx: Context) -> None:
        if self.deps.watches is not None:
            await self.deps.watches.stop(ctx.key)
