"""A tenant's kubeconfigs (kubeadm's identities), kept or reissued like certificates."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml

from haku.render import kubeconfig, pki
from haku.render.tenant_pki import LEAF_VALIDITY, Plan, why_reissue


@dataclass(frozen=True)
class Identity:
    file: str
    user: str
    organizations: tuple[str, ...]
    local: bool  # True: dials the API server in its own pod (127.0.0.1)
    # True: the operator's own, dialling operator_endpoint (the Service, even when clients are
    # told an Ingress's or Gateway's host name: haku.render.endpoint).
    operator: bool = False


# The operator's own identity in the tenant (system:masters; never user-facing).
SUPER_ADMIN = Identity("super-admin.conf", "kubernetes-super-admin", ("system:masters",), False,
                       operator=True)
# The tenant admin's (admin.conf, user-facing; not in system:masters).
ADMIN = Identity("admin.conf", "kubernetes-admin", ("kubeadm:cluster-admins",), False)
IDENTITIES = (
    ADMIN,
    SUPER_ADMIN,
    Identity("controller-manager.conf", "system:kube-controller-manager", (), True),
    Identity("scheduler.conf", "system:kube-scheduler", (), True),
)
# With Konnectivity: the proxy-server's, for the TokenReviews of agents' tokens (the tenant
# grants it system:auth-delegator; render/konnectivity.py). Not in system:masters.
KONNECTIVITY = Identity("konnectivity-server.conf", "system:konnectivity-server", (), True)


def _current(doc_bytes: bytes | None) -> tuple[str, bytes, dict[str, bytes]] | None:
    """(server, CA, {name.crt, name.key}) of a kubeconfig we wrote, or None."""
    if not doc_bytes:
        return None
    try:
        doc: dict[str, Any] = yaml.safe_load(doc_bytes)
        cluster = doc["clusters"][0]["cluster"]
        user = doc["users"][0]["user"]
        return (cluster["server"], base64.b64decode(cluster["certificate-authority-data"]),
                {"x.crt": base64.b64decode(user["client-certificate-data"]),
                 "x.key": base64.b64decode(user["client-key-data"])})
    except (yaml.YAMLError, KeyError, IndexError, TypeError, ValueError):
        return None


def plan(
    cluster_name: str,
    ca: pki.KeyPair,
    existing: Mapping[str, bytes],
    endpoint: str,
    local_endpoint: str,
    identities: tuple[Identity, ...] = IDENTITIES,
    algorithm: pki.KeyAlgorithm = pki.KeyAlgorithm.RSA_2048,
    now: datetime | None = None,
    trust: bytes | None = None,
    operator_endpoint: str = "",
) -> Plan:
    """Each identity's kubeconfig: kept while it points at the right server, trusts
    ``trust`` (the CAs the tenant trusts; default the current CA alone) and holds a valid
    client certificate from the current CA; written afresh otherwise. The server: the pod's
    own API server (``local_endpoint``) for the pods' identities, ``operator_endpoint``
    (default ``endpoint``) for the operator's, ``endpoint`` for the others."""
    now = now or datetime.now(UTC)
    trust = trust or ca.cert_pem
    data: dict[str, bytes] = {}
    issued: dict[str, str] = {}
    for ident in identities:
        server = local_endpoint if ident.local else \
            (operator_endpoint or endpoint) if ident.operator else endpoint
        current = _current(existing.get(ident.file))
        why: str | None
        if current is None:
            why = "missing"
        elif current[0] != server:
            why = f"server moved to {server}"
        elif current[1] != trust:
            why = "CAs trusted changed"
        else:
            why = why_reissue(current[2], "x", ca, now)
        if why is None:
            data[ident.file] = existing[ident.file]
            continue
        pair = pki.issue(ca, ident.user, pki.Usage.CLIENT, organizations=ident.organizations,
                         algorithm=algorithm, valid_for=LEAF_VALIDITY, now=now)
        doc = kubeconfig.client_certificate_kubeconfig(
            cluster_name, server, trust, ident.user, pair.cert_pem, pair.key_pem)
        data[ident.file] = kubeconfig.dump(doc).encode()
        issued[ident.file] = why
    return Plan(data, issued)
