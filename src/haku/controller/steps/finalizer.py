"""Haku's finalizer: set first, so nothing is provisioned that a delete would not clean up;
removed last, once every other step's cleanup has finished."""

from __future__ import annotations

from lightkube.models.meta_v1 import ObjectMeta

from haku.api.resources import TenantControlPlane
from haku.controller.pipeline import Context
from haku.controller.resources import FIELD_MANAGER
from haku.controller.steps.deps import StepBase

FINALIZER = "haku.dev/finalizer"


class FinalizerStep(StepBase):
    name = "finalizer"
    condition = None

    async def _set(self, ctx: Context, present: bool) -> None:
        patch = TenantControlPlane(
            metadata=ObjectMeta(name=ctx.spec.name, namespace=ctx.spec.namespace,
                                finalizers=[FINALIZER] if present else []))
        applied = await self.deps.client.apply(patch, field_manager=FIELD_MANAGER, force=True)
        self.deps.wrote("TenantControlPlane", applied)

    async def apply(self, ctx: Context) -> None:
        if FINALIZER not in (ctx.obj["metadata"].get("finalizers") or []):
            await self._set(ctx, present=True)

    async def cleanup(self, ctx: Context) -> None:
        if FINALIZER in (ctx.obj["metadata"].get("finalizers") or []):
            await self._set(ctx, present=False)
