"""``DataRestored``: a tenant made by ``haku restore`` starts only once its data is loaded.

``haku restore`` creates the TenantControlPlane with the annotation :data:`RESTORE_FROM` (the
backup's SHA-256). The pipeline then provisions the tenant's space (the ``datastore`` step)
and stops here, before certificates, Deployment or anything in the tenant, until the
annotation :data:`RESTORED` carries the same checksum: ``haku restore`` sets it once it has
loaded the backup into that space and read it back. A tenant whose control plane already ran
(a Deployment is recorded in its status) is never held: the annotation cannot stop a live
tenant. Informational (absent without the annotation); while it waits, ``Ready`` is False as
the later steps have not run.
"""

from __future__ import annotations

from haku.api.conditions import Condition
from haku.controller.pipeline import Context, Wait
from haku.controller.steps.deps import StepBase

CONDITION = "DataRestored"
RESTORE_FROM = "haku.dev/restore-from"
RESTORED = "haku.dev/restored"
# How often a held tenant looks for RESTORED: an annotation does not wake the operator (only
# spec, deletion and finalizer changes do), and a restore's user waits for its control plane.
POLL = 5.0


def ran_before(status: dict[str, object]) -> bool:
    """True once a control plane of this tenant was rolled out (its version observed)."""
    resources = status.get("kubernetesResources") or {}
    return bool(isinstance(resources, dict) and resources.get("deployment"))


class RestoreStep(StepBase):
    name = "restore"
    condition = CONDITION
    informational = True

    async def apply(self, ctx: Context) -> None:
        annotations = ctx.obj["metadata"].get("annotations") or {}
        want = annotations.get(RESTORE_FROM)
        if not want:
            ctx.removed_conditions.add(CONDITION)
            return
        short = want[:12]
        if annotations.get(RESTORED) == want:
            ctx.conditions[CONDITION] = Condition(
                CONDITION, "True", "Restored", f"the backup {short} is loaded")
            return
        if ran_before(ctx.previous_status):
            ctx.conditions[CONDITION] = Condition(
                CONDITION, "False", "AlreadyRunning",
                f"the annotation {RESTORE_FROM} is ignored: this tenant's control plane ran "
                "before; a backup is restored into a new TenantControlPlane only")
            return
        raise Wait(Condition(
            CONDITION, "False", "WaitingForData",
            f"waiting for `haku restore` to load the backup {short} into this tenant's space; "
            "the control plane starts once it has (if it stopped, run it again: it resumes)"),
            POLL, poll=True)
