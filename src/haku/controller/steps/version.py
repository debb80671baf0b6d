"""``kubernetesResources.version`` once everything is known: the Deployment's rollout, the
version /version answers and the version the in-tenant objects were applied at. An upgrade
moves through its phases here (haku.render.upgrade); the controller records an Event for each
phase entered when it writes the status. A tenant that serves while its CA rotates is
``CertificateAuthorityRotating``; one whose writes are frozen, ``WriteLimited``; one whose
data moves to another DataStore, ``Migrating``."""

from __future__ import annotations

from haku.controller.pipeline import Context
from haku.controller.steps.deployment import version_state
from haku.controller.steps.deps import StepBase
from haku.render import ca_rotation, migration


class VersionStep(StepBase):
    name = "version"
    condition = None

    async def apply(self, ctx: Context) -> None:
        if ctx.rollout is None:
            return  # the deployment step did not get to the Deployment
        version = version_state(ctx)
        rotation = (ctx.status.get("certificates") or {}).get("caRotation") \
            or ca_rotation.rotation_of(ctx.previous_status)
        frozen = ctx.conditions.get("WriteLimited")
        moving = migration.migration_of(ctx.status) or migration.migration_of(
            ctx.previous_status)
        if version["status"] == "Ready" and migration.in_progress(moving):
            version["status"] = "Migrating"  # Kamaji's word for it
        elif version["status"] == "Ready" and ca_rotation.in_progress(rotation):
            version["status"] = "CertificateAuthorityRotating"  # Kamaji's word for it
        elif version["status"] == "Ready" and frozen is not None and frozen.status == "True":
            version["status"] = "WriteLimited"  # Kamaji's, for spec.writePermissions
        ctx.status.setdefault("kubernetesResources", {})["version"] = version

    async def cleanup(self, ctx: Context) -> None:
        return None
