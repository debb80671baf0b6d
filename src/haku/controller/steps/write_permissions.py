"""``WriteLimited``: ``spec.writePermissions`` in force inside the tenant (a
ValidatingAdmissionPolicy its own API server enforces: haku.render.write_permissions), or
lifted. Informational: a frozen tenant still serves reads and nodes stay, so ``Ready`` does
not depend on it; absent when no freeze is asked for or left to lift."""

from __future__ import annotations

import json
import ssl
from typing import Any

import httpx2
import yaml
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.admissionregistration_v1 import (
    ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
)

from haku.api import conditions
from haku.api.conditions import Condition
from haku.controller.pipeline import Context
from haku.controller.resources import FIELD_MANAGER
from haku.controller.steps.apiserver import tls_context
from haku.controller.steps.deps import StepBase
from haku.datastore.base import PrivateFiles
from haku.render import tenant_kubeconfigs, write_permissions

CONDITION = "WriteLimited"


PROBE = {  # a dry-run write of each kind, on an object every namespace has
    "CREATE": ("POST", "/api/v1/namespaces/default/configmaps",
               {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"generateName": "haku-freeze-probe-"}}),
    "UPDATE": ("PATCH", "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
               {"metadata": {"annotations": {"haku.dev/freeze-probe": "x"}}}),
    "DELETE": ("DELETE", "/api/v1/namespaces/default/configmaps/kube-root-ca.crt", None),
}


async def enforced(endpoint: str, super_admin: bytes, operation: str,
                   marker: str = write_permissions.MESSAGE_START,
                   server_name: str | None = None) -> str | None:
    """None if the tenant's API server refuses a dry-run ``operation`` by the tenant admin
    (impersonated) with a freeze's message (holding ``marker``); else what it answered.
    ``server_name``: the name its certificate is checked for (and sent as SNI) when
    ``endpoint`` is an address the certificate does not hold (a pod IP)."""
    method, path, body = PROBE[operation]
    admin = tenant_kubeconfigs.ADMIN
    headers = {"Impersonate-User": admin.user, "Impersonate-Group": admin.organizations[0]}
    if method == "PATCH":
        headers["Content-Type"] = "application/merge-patch+json"
    files = PrivateFiles("haku-freeze-")
    try:
        tls = tls_context(super_admin, files)
        async with httpx2.AsyncClient(verify=tls, timeout=5.0, trust_env=False) as http:
            answer = await http.request(
                method, f"{endpoint}{path}?dryRun=All", headers=headers,
                content=json.dumps(body) if body else None,
                extensions={"sni_hostname": server_name} if server_name else None)
    except (httpx2.HTTPError, ssl.SSLError, OSError) as e:
        return f"a dry-run {operation}: {e}"
    finally:
        files.cleanup()
    if answer.status_code == 403 and marker in answer.text:
        return None
    return f"a dry-run {operation} as the tenant admin answered {answer.status_code}"


class WritePermissionsStep(StepBase):
    name = "write-permissions"
    condition = CONDITION
    informational = True

    async def apply(self, ctx: Context) -> None:
        wanted = write_permissions.objects(ctx.spec)
        before = conditions.find(ctx.previous_status.get("conditions") or [], CONDITION)
        if not wanted and before is None:
            ctx.removed_conditions.add(CONDITION)
            return
        serving = ctx.conditions.get("APIServerReady")
        if serving is None or serving.status != "True":
            ctx.conditions[CONDITION] = Condition(
                CONDITION, "False", "WaitingForAPIServer",
                "the tenant API does not answer yet: the write permissions cannot be "
                + ("applied" if wanted else "lifted"))
            return
        self.deps.fence.check()  # the tenant's API is not behind the admin client's fence
        doc: dict[str, Any] = yaml.safe_load(ctx.super_admin)
        tenant = AsyncClient(KubeConfig.from_dict(doc), field_manager=FIELD_MANAGER,
                             timeout=httpx2.Timeout(10.0), trust_env=False)
        try:
            if wanted:
                for obj in wanted:
                    await tenant.apply(from_dict(obj), force=True)
            else:
                for kind in (ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicy):
                    try:
                        await tenant.delete(kind, write_permissions.NAME)
                    except ApiError as e:
                        if e.status.code != 404:
                            raise
        except (httpx2.HTTPError, ApiError, OSError) as e:
            ctx.conditions[CONDITION] = Condition(
                CONDITION, "False" if wanted else "True", "Unreachable",
                f"{'applying' if wanted else 'lifting'} the write permissions: {e}")
            return
        finally:
            await tenant.close()
        if not wanted:
            # Gone only once the API server has let go of the policy too: a dry-run write of
            # each kind by the tenant admin is no longer refused for the freeze.
            for operation in ("CREATE", "UPDATE", "DELETE"):
                if await enforced(ctx.operator_endpoint, ctx.super_admin, operation) is None:
                    ctx.requeue_within = 2.0
                    ctx.conditions[CONDITION] = Condition(
                        CONDITION, "True", "Lifting",
                        f"ValidatingAdmissionPolicy {write_permissions.NAME} is deleted; the "
                        f"tenant's API server still refuses a dry-run {operation}")
                    return
            ctx.removed_conditions.add(CONDITION)
            ctx.conditions.pop(CONDITION, None)
            self.deps.events.emit(ctx.obj, "Normal", "WritesAllowed",
                                  "spec.writePermissions lifted: the tenant accepts writes")
            return
        ops = ", ".join(ctx.spec.write_permissions.operations)
        not_yet = await enforced(ctx.operator_endpoint, ctx.super_admin,
                                 ctx.spec.write_permissions.operations[0])
        if not_yet:
            ctx.requeue_within = 2.0
            ctx.conditions[CONDITION] = Condition(
                CONDITION, "False", "Applying",
                f"ValidatingAdmissionPolicy {write_permissions.NAME} is applied; the tenant's "
                f"API server does not enforce it yet: {not_yet}")
            return
        ctx.conditions[CONDITION] = Condition(
            CONDITION, "True", "Frozen",
            f"the tenant's API server refuses {ops} (ValidatingAdmissionPolicy "
            f"{write_permissions.NAME}: a dry-run {ctx.spec.write_permissions.operations[0]} "
            "as the tenant admin was refused); reads, leases, events and status updates go on")

    async def cleanup(self, ctx: Context) -> None:
        return None
