"""kubeadm's certificates for the tenant and its kubeconfigs, kept unless missing or due
(key generation runs off the event loop). A CA rotation's changes to the CAs (a new one
trusted, then signing, then the old one dropped) happen here, as its phase says
(haku.render.ca_rotation; the ca-rotation step moves the phase on)."""

from __future__ import annotations

import asyncio

from haku.api.conditions import Condition
from haku.controller.metrics import certificate_expiries
from haku.controller.pipeline import Context
from haku.controller.steps.deps import StepBase
from haku.render import (
    ca_rotation,
    controlplane,
    konnectivity,
    pki,
    tenant_kubeconfigs,
    tenant_pki,
)

CONDITION = "CertificatesReady"


class CertificatesStep(StepBase):
    name = "certificates"
    condition = CONDITION

    async def apply(self, ctx: Context) -> None:
        spec, deps = ctx.spec, self.deps
        n = controlplane.names(spec.name)
        address = ctx.need(ctx.address, "the endpoint address")
        existing = await deps.secret_data(ctx, n["pki"])
        sans = (address, spec.advertise_address) if spec.advertise_address else (address,)
        rotation = ca_rotation.intent(ca_rotation.requested(
            ctx.obj["metadata"].get("annotations")), ca_rotation.rotation_of(ctx.previous_status))
        plan = await asyncio.to_thread(tenant_pki.plan, spec, existing, sans,
                                       deps.config.key_algorithm, None, rotation)
        if plan.changed:
            await deps.apply_secret(ctx, n["pki"], plan.data)
            deps.events.emit(ctx.obj, "Normal", "CertificatesIssued",
                             "; ".join(f"{k}: {v}" for k, v in sorted(plan.issued.items())))
        deps.metrics.tenants.observe_certificates(ctx.key, certificate_expiries(plan.data))
        ctx.pki = plan.data

        ca = pki.KeyPair(plan.data["ca.crt"], plan.data["ca.key"])
        local = f"https://127.0.0.1:{ctx.need(ctx.secure_port, 'kube-apiserver port')}"
        internal = await deps.secret_data(ctx, n["kubeconfigs"])
        user_facing = await deps.secret_data(ctx, n["admin-kubeconfig"])
        identities: tuple[tenant_kubeconfigs.Identity, ...] = tenant_kubeconfigs.IDENTITIES
        pod_files = ["controller-manager.conf", "scheduler.conf"]
        if spec.addons.konnectivity is not None:
            identities += (tenant_kubeconfigs.KONNECTIVITY,)
            pod_files.append(tenant_kubeconfigs.KONNECTIVITY.file)
        configs = await asyncio.to_thread(tenant_kubeconfigs.plan, spec.name, ca,
                                          internal | user_facing, ctx.endpoint, local,
                                          identities, deps.config.key_algorithm, None,
                                          plan.data[ca_rotation.BUNDLE],
                                          ctx.operator_endpoint)
        ctx.kubeconfigs = {k: configs.data[k] for k in pod_files}
        if spec.addons.konnectivity is not None:
            ctx.kubeconfigs[konnectivity.EGRESS_FILE] = \
                konnectivity.egress_selector_configuration().encode()
        ctx.admin = {"admin.conf": configs.data["admin.conf"]}
        ctx.super_admin = configs.data["super-admin.conf"]
        # super-admin.conf (system:masters, which RBAC cannot take back) stays with the
        # operator, in the internal Secret (not mounted into the pods), as kubeadm keeps it on
        # the control-plane node; the user-facing Secret holds admin.conf only. Each Secret
        # is written when it holds anything else (a new or reissued kubeconfig, an addon's
        # file added or gone).
        wanted = ctx.kubeconfigs | {"super-admin.conf": ctx.super_admin}
        if internal != wanted:
            await deps.apply_secret(ctx, n["kubeconfigs"], wanted)
        if user_facing != ctx.admin:
            await deps.apply_secret(ctx, n["admin-kubeconfig"], ctx.admin)
        ctx.status["kubeconfig"] = {"admin": {"secretName": n["admin-kubeconfig"]}}
        ctx.conditions[CONDITION] = Condition(
            CONDITION, "True", "Issued",
            "certificates and kubeconfigs valid for " + ", ".join([address, spec.name]))

