"""A CA rotation's progress (haku.render.ca_rotation): once the certificate step has started
one, this step checks what each phase waits for (the pods rolled, the in-tenant objects on
the bundle, the operator's client verifying the API with the new CA alone, the Ready Nodes'
kubelet certificates from the new CA) and moves ``status.certificates.caRotation`` on. The
controller records an Event for each phase entered."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import httpx2
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.resources.certificates_v1 import CertificateSigningRequest
from lightkube.resources.core_v1 import Node

from haku.controller.pipeline import Context
from haku.controller.resources import FIELD_MANAGER
from haku.controller.steps.apiserver import probe
from haku.controller.steps.deps import StepBase
from haku.render import ca_rotation as cr

KUBELET_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
NODE_PREFIX = "system:node:"
POLL = 5.0  # seconds between looks while a rotation is under way


def renewed_node(certificate_pem: bytes, ca_pem: bytes) -> str | None:
    """The Node whose kubelet client certificate ``certificate_pem`` is, if the CA
    ``ca_pem`` signed it."""
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem)
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except (ValueError, TypeError, InvalidSignature):
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else ""
    return name.removeprefix(NODE_PREFIX) if name.startswith(NODE_PREFIX) else None


def pem_of(certificate: str | bytes) -> bytes:
    """A CSR's ``status.certificate`` (bytes in the API: base64 in JSON) as PEM."""
    raw = certificate.encode() if isinstance(certificate, str) else certificate
    return raw if raw.lstrip().startswith(b"-----BEGIN") else base64.b64decode(raw)


def ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True"
               for c in (node.status.conditions if node.status else None) or [])


class CARotationStep(StepBase):
    name = "ca-rotation"
    condition = None

    async def apply(self, ctx: Context) -> None:
        before = cr.rotation_of(ctx.previous_status)
        pki = ctx.pki
        started = cr.started(pki)
        if not cr.in_progress(before) and (not started or started == before.get("requested")):
            return
        rollout = ctx.rollout
        rolled_out = bool(rollout and rollout.rolled_out and rollout.ready == rollout.replicas)
        new_ca_only = False
        if rolled_out and ctx.operator_endpoint:
            found, _ = await probe(ctx.operator_endpoint, ctx.super_admin, ca=pki["ca.crt"])
            new_ca_only = found.status == "True"
        pending: tuple[str, ...] | None = None
        moved: tuple[str, ...] = ()
        if before.get("phase") in (cr.REISSUING, cr.NODES_PENDING) and ctx.bundle_applied:
            try:
                pending, moved = await self._nodes(ctx, set(before.get("renewedNodes") or ()))
            except (httpx2.HTTPError, ApiError, OSError):
                pending = None  # not looked at: the next pass does
        seen = cr.Observed(rolled_out, new_ca_only, ctx.bundle_applied, pending, moved)
        state = cr.advance(before, pki, seen, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        ctx.status.setdefault("certificates", {})["caRotation"] = state
        if cr.in_progress(state):
            ctx.requeue_within = POLL

    async def _nodes(self, ctx: Context, renewed: set[str]) -> tuple[tuple[str, ...],
                                                                     tuple[str, ...]]:
        """(Ready Nodes still to renew, Nodes seen renewed now), from the tenant's CSRs."""
        self.deps.fence.check()
        doc: dict[str, Any] = yaml.safe_load(ctx.super_admin)
        tenant = AsyncClient(KubeConfig.from_dict(doc), field_manager=FIELD_MANAGER,
                             timeout=httpx2.Timeout(10.0), trust_env=False)
        try:
            moved = set()
            async for csr in tenant.list(CertificateSigningRequest):
                issued = csr.status.certificate if csr.status else None
                if csr.spec.signerName != KUBELET_SIGNER or not issued:
                    continue
                pem = pem_of(issued)
                name = renewed_node(pem, ctx.pki["ca.crt"])
                if name:
                    moved.add(name)
            nodes = [n async for n in tenant.list(Node)]
        finally:
            await tenant.close()
        names = [(str(n.metadata.name), ready(n)) for n in nodes if n.metadata]
        pending = sorted(name for name, up in names if up and name not in renewed | moved)
        return tuple(pending), tuple(sorted(moved - renewed))

    async def cleanup(self, ctx: Context) -> None:
        return None
