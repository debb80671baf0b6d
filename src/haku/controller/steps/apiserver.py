"""``APIServerReady``: the tenant's /readyz answers through the Service's endpoint (the
operator's, ``Context.operator_endpoint``: the clients' path unless an Ingress's or Gateway's
host name stands in front, haku.render.endpoint), asked with the tenant's super-admin
identity; and the version /version reports, which an upgrade waits for
(haku.render.upgrade)."""

from __future__ import annotations

import base64
import ssl

import httpx2
import yaml
from lightkube import ApiError

from haku.api.conditions import Condition
from haku.controller.pipeline import Context
from haku.controller.steps.deps import StepBase
from haku.datastore.base import PrivateFiles

CONDITION = "APIServerReady"


def tls_context(kubeconfig: bytes, files: PrivateFiles,
                ca: bytes | None = None) -> ssl.SSLContext:
    """A TLS client context with the identity and CA of ``kubeconfig`` (``ca``: trust these
    CAs instead); the key goes through ``files``."""
    doc = yaml.safe_load(kubeconfig)
    user = doc["users"][0]["user"]
    ctx = ssl.create_default_context(cadata=(ca or base64.b64decode(
        doc["clusters"][0]["cluster"]["certificate-authority-data"])).decode())
    ctx.load_cert_chain(
        files.write("tls.crt", base64.b64decode(user["client-certificate-data"])),
        files.write("tls.key", base64.b64decode(user["client-key-data"])))
    return ctx


async def probe(endpoint: str, super_admin: bytes,
                ca: bytes | None = None) -> tuple[Condition, str | None]:
    """/readyz at ``endpoint`` with the identity of kubeconfig ``super_admin``, and the
    ``gitVersion`` /version answers once it is ready (None if it did not say). ``ca``: trust
    these CAs instead of the kubeconfig's."""
    files = PrivateFiles("haku-probe-")
    try:
        ctx = tls_context(super_admin, files, ca)
        async with httpx2.AsyncClient(verify=ctx, timeout=5.0, trust_env=False) as http:
            response = await http.get(f"{endpoint}/readyz")
            if response.status_code != 200:
                return Condition(CONDITION, "False", "NotReady",
                                 f"{endpoint}/readyz answered {response.status_code}"), None
            answer = await http.get(f"{endpoint}/version")
            version = answer.json().get("gitVersion") if answer.status_code == 200 else None
    except (httpx2.HTTPError, ApiError, ssl.SSLError, OSError, ValueError) as e:
        return Condition(CONDITION, "False", "Unreachable", f"{endpoint}/readyz: {e}"), None
    finally:
        files.cleanup()
    return Condition(CONDITION, "True", "Serving",
                     f"{endpoint}/readyz answered ok" +
                     (f"; /version: {version}" if version else "")), version


class APIServerStep(StepBase):
    name = "apiserver"
    condition = CONDITION

    async def apply(self, ctx: Context) -> None:
        available = ctx.conditions.get("ControlPlaneAvailable")
        if available is None or available.status != "True":
            ctx.conditions[CONDITION] = Condition(CONDITION, "False", "NoControlPlane",
                                                  "no control-plane pod is ready yet")
            return
        ctx.conditions[CONDITION], ctx.observed_version = await probe(
            ctx.operator_endpoint, ctx.super_admin)

