"""A staged rotation of a tenant's cluster CA (pure): the phases, what the certificate Secret
holds in each, and the Events.

Asked for with the annotation ``haku.dev/rotate-ca`` (any new value; ``haku rotate-ca`` sets
it to the time). Recorded in ``status.certificates.caRotation``:

1. ``Trusting``: a new CA is made (``ca-next.crt``) and trusted beside the current one: the
   trust bundle (``ca-bundle.crt``: kube-apiserver's and the controller-manager's client CA,
   the pods' ``kube-root-ca.crt``, ``cluster-info``, every kubeconfig) holds both. Nothing
   is signed by it yet: the pods roll onto the bundle, the in-tenant addons restart onto it.
2. ``Reissuing``: every control-plane pod and the in-tenant objects trust it; it becomes the
   signing CA (``ca.crt``), the old one's certificate stays in the bundle
   (``ca-previous.crt``) and its key is dropped. Every certificate and kubeconfig is issued
   again from the new CA. The new CA cross-signed by the old one (``ca-cross.crt``) follows
   the API server's serving certificate and its kubelet-client certificate, so clients and
   kubelets that still trust only the old CA keep verifying them. The pods roll again.
3. ``NodesPending``: the control plane runs on the new CA, the operator's own client
   verifies the API server with the new CA alone, and the in-tenant objects carry the bundle.
   Each Ready Node must now get a kubelet client certificate from the new CA (the node
   owners' step, docs/ca-rotation.md); the operator sees them in the tenant's approved CSRs.
4. ``Dropping``: every Ready Node has one; the old CA leaves the bundle and the cross-signed
   certificate leaves the chains. The pods roll again.
5. ``Completed``: the control plane, the operator's client and the in-tenant objects trust
   the new CA alone.

The front-proxy CA and the ServiceAccount key are not rotated by this.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from haku.render.tenant_status import Event, phases_entered

ANNOTATION = "haku.dev/rotate-ca"
TRUSTING, REISSUING, NODES_PENDING = "Trusting", "Reissuing", "NodesPending"
DROPPING, COMPLETED = "Dropping", "Completed"
PHASES = (TRUSTING, REISSUING, NODES_PENDING, DROPPING, COMPLETED)
IN_PROGRESS = PHASES[:-1]
# Keys of the certificate Secret.
BUNDLE, PREVIOUS, CROSS, REQUEST = "ca-bundle.crt", "ca-previous.crt", "ca-cross.crt", \
    "ca-rotation-request"
NEXT_CERT, NEXT_KEY = "ca-next.crt", "ca-next.key"
# Leaf certificates served with the cross-signed CA after them while the old CA is trusted.
CHAINED = ("apiserver", "apiserver-kubelet-client")
DOC = "docs/ca-rotation.md"


def fingerprint(pem: bytes) -> str:
    """SHA-256 of the first certificate in ``pem`` (DER), as 16 hex digits."""
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()[:16]


def certificates(pem: bytes) -> list[bytes]:
    """Each PEM certificate block in ``pem``, in order."""
    marker = b"-----END CERTIFICATE-----"
    blocks = []
    for part in pem.split(marker)[:-1]:
        start = part.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            blocks.append(part[start:] + marker + b"\n")
    return blocks


def requested(annotations: Mapping[str, str] | None) -> str:
    return ((annotations or {}).get(ANNOTATION) or "").strip()


def rotation_of(status: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(((status or {}).get("certificates") or {}).get("caRotation") or {})


def in_progress(rotation: Mapping[str, Any]) -> bool:
    return rotation.get("phase") in IN_PROGRESS


@dataclass(frozen=True)
class Intent:
    """What the certificate step does to the CA this pass: ``start`` a rotation (once per
    request: a new CA, trusted only), ``promote`` the new CA to signing, ``drop`` the old
    CA, or nothing."""

    start: str = ""  # the request to start (its annotation value)
    promote: bool = False
    drop: bool = False


NO_CHANGE = Intent()


def intent(annotation: str, rotation: Mapping[str, Any]) -> Intent:
    """What the certificate step does this pass, from the annotation's value and the
    rotation's status (its phase decides while one runs; a new value waits for it)."""
    phase = rotation.get("phase")
    if phase == REISSUING:
        return Intent(promote=True)
    if phase == DROPPING:
        return Intent(drop=True)
    if phase in IN_PROGRESS:
        return NO_CHANGE
    if annotation and annotation != rotation.get("requested"):
        return Intent(start=annotation)
    return NO_CHANGE


@dataclass(frozen=True)
class Observed:
    """What this pass saw, for :func:`advance`."""

    rolled_out: bool  # every control-plane pod runs the current certificates
    new_ca_only_ok: bool  # the operator's client verified the API with the new CA alone
    bundle_applied: bytes | None  # the trust bundle the in-tenant objects got this pass
    pending_nodes: tuple[str, ...] | None  # Ready Nodes without a new-CA client cert (None:
    # not looked at)
    moved_nodes: tuple[str, ...] = ()


def started(pki: Mapping[str, bytes]) -> str:
    """The request whose rotation the Secret is in (the old or the next CA still there)."""
    if NEXT_CERT in pki or PREVIOUS in pki:
        return pki.get(REQUEST, b"").decode()
    return ""


def advance(rotation: Mapping[str, Any], pki: Mapping[str, bytes], seen: Observed,
            now: str) -> dict[str, Any]:
    """The next ``caRotation`` status from the previous one and what this pass saw."""
    state = dict(rotation)
    if not in_progress(state) and started(pki) and started(pki) != state.get("requested"):
        # The certificate step started it this pass (or before a status write was lost).
        trusting = NEXT_CERT in pki
        state = {"requested": started(pki), "phase": TRUSTING if trusting else REISSUING,
                 "startedAt": now, "completedAt": "",
                 "previousCA": fingerprint(pki["ca.crt" if trusting else PREVIOUS]),
                 "currentCA": fingerprint(pki[NEXT_CERT if trusting else "ca.crt"]),
                 "pendingNodes": [], "renewedNodes": []}
    phase = state.get("phase")
    if phase not in IN_PROGRESS:
        return state
    bundle = pki.get(BUNDLE)
    on_bundle = seen.bundle_applied is not None and seen.bundle_applied == bundle
    settled = seen.rolled_out and seen.new_ca_only_ok and on_bundle
    if seen.pending_nodes is not None:
        state["pendingNodes"] = sorted(seen.pending_nodes)
        state["renewedNodes"] = sorted(set(state.get("renewedNodes") or ())
                                       | set(seen.moved_nodes))
    if phase == TRUSTING and NEXT_CERT in pki and seen.rolled_out and on_bundle:
        phase = REISSUING  # everything trusts the new CA: it may sign now
    if phase == REISSUING and PREVIOUS in pki and settled:
        phase = NODES_PENDING
    if phase == NODES_PENDING and seen.pending_nodes is not None and not seen.pending_nodes:
        phase = DROPPING
    if phase == DROPPING and PREVIOUS not in pki and settled:
        phase = COMPLETED
        state["completedAt"] = now
        state["pendingNodes"] = []
    state["phase"] = phase
    return state


def events(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Event]:
    """Events for the phases entered between two ``caRotation`` statuses."""
    same = before.get("requested") == after.get("requested")
    out = []
    for phase in phases_entered(PHASES, before.get("phase") if same else None,
                                after.get("phase") or ""):
        if phase == TRUSTING:
            out.append(Event("Normal", "CertificateAuthorityRotating", (
                f"new CA {after.get('currentCA')} trusted beside {after.get('previousCA')}; "
                "the control plane and the in-tenant addons move onto both")))
        elif phase == REISSUING:
            out.append(Event("Normal", "CertificateAuthorityReissuing", (
                f"everything trusts {after.get('currentCA')}: it signs from now on, the old "
                "CA's key is gone, certificates and kubeconfigs are issued again")))
        elif phase == NODES_PENDING:
            pending = after.get("pendingNodes") or []
            out.append(Event("Normal", "CertificateAuthorityNodesPending", (
                "the control plane, the operator and the in-tenant objects use the new CA; "
                + (f"nodes to renew their kubelet certificate ({DOC}): {', '.join(pending)}"
                   if pending else "no Ready node left to renew"))))
        elif phase == DROPPING:
            out.append(Event("Normal", "CertificateAuthorityDropping", (
                f"every Ready node renewed; the old CA {after.get('previousCA')} leaves the "
                "trust bundle")))
        else:
            out.append(Event("Normal", "CertificateAuthorityRotated", (
                f"the tenant trusts only the CA {after.get('currentCA')} now")))
    return out
