"""The control-plane Deployment (pod-template checksums roll the pods when a Secret changes; a
new version rolls them with ``maxUnavailable: 0``), and Kamaji's
``kubernetesResources.version`` from what runs (haku.render.upgrade). On delete its pods are
stopped before the datastore step drops the tenant's data, so no API server writes into a
space that is being deleted."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod

from haku.api.conditions import Condition
from haku.controller.pipeline import Context, Wait
from haku.controller.steps.deps import StepBase
from haku.render import controlplane, tenant_status, upgrade
from haku.render.netpol import is_ip

CONDITION = "ControlPlaneAvailable"


def sha(data: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for k in sorted(data):
        h.update(k.encode() + b"\0" + data[k] + b"\0")
    return h.hexdigest()[:16]


def version_state(ctx: Context) -> dict[str, Any]:
    """``kubernetesResources.version`` from what this pass has seen so far (the version
    step refines it once /version and the in-tenant objects are known)."""
    previous = (ctx.previous_status.get("kubernetesResources") or {}).get("version") or {}
    ran_before = previous.get("status") in tenant_status.PROVISIONED \
        or bool(previous.get("version"))
    return upgrade.version_state(previous, ctx.spec.version, ctx.rollout, ran_before,
                                 now_rfc3339(), ctx.observed_version, ctx.tenant_objects_version)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class DeploymentStep(StepBase):
    name = "deployment"
    condition = CONDITION

    async def apply(self, ctx: Context) -> None:
        spec = ctx.spec
        storage = ctx.need(ctx.storage, "the datastore connection")
        address = ctx.need(ctx.address, "the endpoint address")
        checksums = {"pki": sha(ctx.need(ctx.pki, "the certificates")),
                     "kubeconfigs": sha(ctx.need(ctx.kubeconfigs, "the kubeconfigs")),
                     "datastore": sha(dict(storage.files)
                                      | {"endpoint": storage.kine_endpoint.encode()})}
        advertise = spec.advertise_address or (address if is_ip(address) else "$(POD_IP)")
        manifest = controlplane.deployment(
            spec, storage, advertise, checksums, self.deps.config.kine_image,
            priority_class=self.deps.config.priority_class or None,
            secure_port=ctx.need(ctx.secure_port, "kube-apiserver's port"))
        dep = await self.deps.apply_checked(ctx, manifest, "Deployment")
        ctx.deployment = dep
        self.observe(ctx, dep)

    def observe(self, ctx: Context, dep: Any) -> None:
        spec = ctx.spec
        s = dep.status
        ready = (s.readyReplicas or 0) if s else 0
        updated = (s.updatedReplicas or 0) if s else 0
        available = (s.availableReplicas or 0) if s else 0
        rolled_out = bool(s and s.observedGeneration == dep.metadata.generation
                          and updated == ready == spec.replicas and not s.unavailableReplicas)
        resources = ctx.status.setdefault("kubernetesResources", {})
        resources["deployment"] = {
            "name": dep.metadata.name, "namespace": dep.metadata.namespace,
            "selector": ",".join(f"{k}={v}" for k, v in controlplane.selector(spec).items()),
            "replicas": (s.replicas or 0) if s else 0, "readyReplicas": ready,
            "updatedReplicas": updated, "availableReplicas": available}
        ctx.rollout = upgrade.Rollout(spec.replicas, ready, rolled_out)
        resources["version"] = version_state(ctx)
        if spec.replicas == 0:
            ctx.conditions[CONDITION] = Condition(CONDITION, "False", "Sleeping",
                                                  "replicas is 0")
        elif ready == 0:
            ctx.conditions[CONDITION] = Condition(
                CONDITION, "False", "NoReadyPods", f"0 of {spec.replicas} control-plane pods ready")
        else:
            ctx.conditions[CONDITION] = Condition(
                CONDITION, "True", "RolledOut" if rolled_out else "RollingOut",
                f"{ready} of {spec.replicas} control-plane pods ready")

    async def cleanup(self, ctx: Context) -> None:
        """Delete the Deployment and wait until none of its pods is left."""
        name = controlplane.names(ctx.spec.name)["deployment"]
        await self.deps.delete_owned(Deployment, ctx, name)
        selector: dict[str, Any] = dict(controlplane.selector(ctx.spec))
        pods = [p async for p in self.deps.client.list(
            Pod, namespace=ctx.spec.namespace, labels=selector)]
        if pods:
            raise Wait(Condition(
                CONDITION, "False", "Stopping",
                f"waiting for {len(pods)} control-plane pod(s) to stop before the tenant's "
                "data is deleted"), 1.0, poll=True)  # they stop within their grace period
