"""The pure part of ``haku dev worker renew-ca``: kubeadm's discovery checks on a tenant's
``kube-public/cluster-info``, the trust bundle in it, and the files a node is given.

During a CA rotation a tenant trusts two CAs, and its cluster-info carries both (old and new,
PEM concatenated) in ``clusters[0].cluster.certificate-authority-data``. A node renews its
trust the way it joined, with a bootstrap token: the answer is checked as ``kubeadm join``'s
token discovery checks it (``cmd/kubeadm/app/discovery/token``):

1. the ``kubeconfig`` text is signed by the token (``jws-kubeconfig-<token id>``, a detached
   JWS, HS256 keyed with the token secret, which the tenant's bootstrapsigner writes);
2. at least one CA of the bundle has the pinned public key (``--discovery-token-ca-cert-hash``,
   SHA-256 of the SubjectPublicKeyInfo; ``haku join-command`` pins the current CA);
3. the same text is read again over TLS verified against the bundle (``worker.py`` does that).

Nothing here touches the host; ``tests/unit/test_worker_ca.py`` covers it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from haku.dev.worker_config import WorkerError
from haku.tenant.tokens import BootstrapToken

SIGNATURE_PREFIX = "jws-kubeconfig-"  # cluster-info's data key, + token id
# What kubeadm join names things in the bootstrap kubeconfig (kubeconfigutil.CreateWithToken).
BOOTSTRAP_USER = "tls-bootstrap-token-user"
BOOTSTRAP_CLUSTER = "kubernetes"
# The kubelet's client certificate store in its --cert-dir (certificate.NewFileStore with
# pair name "kubelet-client"): kubelet-client-current.pem, a symlink to
# kubelet-client-<timestamp>.pem (certificate and key), the legacy kubelet-client.crt/.key,
# and kubelet-client.key.tmp, the key a TLS bootstrap keeps until its CSR is signed. The
# serving pair (kubelet.crt, kubelet.key) is another store and stays.
CLIENT_PAIR = "kubelet-client"
CLIENT_CURRENT = "kubelet-client-current.pem"


class DiscoveryError(WorkerError):
    """cluster-info did not pass a check kubeadm's discovery makes."""


@dataclass(frozen=True)
class ClusterInfo:
    kubeconfig: str  # the ConfigMap's ``kubeconfig`` text, exactly as signed
    server: str  # clusters[0].cluster.server
    bundle: bytes  # the CA certificates, PEM, as published
    signatures: dict[str, str]  # token id -> detached JWS

    @property
    def cas(self) -> list[x509.Certificate]:
        return parse_bundle(self.bundle)


def parse_cluster_info(configmap: dict[str, Any]) -> ClusterInfo:
    """cluster-info (the ConfigMap as JSON) -> its kubeconfig text, server, CA bundle and
    signatures; DiscoveryError when it has not kubeadm's shape."""
    data = configmap.get("data") or {}
    text = data.get("kubeconfig")
    if not isinstance(text, str) or not text:
        raise DiscoveryError("kube-public/cluster-info has no kubeconfig")
    try:
        doc = yaml.safe_load(text)
        cluster = doc["clusters"][0]["cluster"]
        server = str(cluster["server"])
        bundle = base64.b64decode(cluster["certificate-authority-data"], validate=True)
    except (yaml.YAMLError, KeyError, IndexError, TypeError, ValueError) as e:
        raise DiscoveryError("kube-public/cluster-info's kubeconfig has no "
                             "clusters[0].cluster.server and certificate-authority-data "
                             f"({type(e).__name__}: {e})") from e
    parse_bundle(bundle)  # refuses what is not a bundle of CAs
    signatures = {k.removeprefix(SIGNATURE_PREFIX): str(v) for k, v in data.items()
                  if k.startswith(SIGNATURE_PREFIX)}
    return ClusterInfo(text, server, bundle, signatures)


def parse_bundle(pem: bytes) -> list[x509.Certificate]:
    """The CA certificates of a PEM bundle, in order; DiscoveryError if there are none, one
    is not a CA, or there is anything else in it."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise DiscoveryError(f"the CA bundle is not PEM certificates ({e})") from e
    for i, cert in enumerate(certs):
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise DiscoveryError(f"certificate {i + 1} of the CA bundle "
                                 f"({cert.subject.rfc4514_string()}) is not a CA")
    return certs


def spki_hash(cert: x509.Certificate) -> str:
    """kubeadm's pin of a CA: ``sha256:`` + the SHA-256 of its SubjectPublicKeyInfo."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def pinned_ca(cas: Iterable[x509.Certificate], pin: str) -> x509.Certificate:
    """The CA of the bundle whose public key ``pin`` names (kubeadm's pubkeypin.CheckAny);
    DiscoveryError, naming what the bundle holds, if none does."""
    cas = list(cas)
    wanted = pin.strip().lower()
    for cert in cas:
        if spki_hash(cert) == wanted:
            return cert
    held = "; ".join(f"{describe(c)} {spki_hash(c)}" for c in cas)
    raise DiscoveryError(f"no CA in the tenant's cluster-info has the pinned public key {pin} "
                         f"(it holds: {held}): the join command is not this tenant's, or the "
                         "answer did not come from it; refused")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def detached_jws(content: str, token_id: str, token_secret: str) -> str:
    """What the bootstrapsigner writes for ``content`` (k8s.io/cluster-bootstrap/token/jws
    ComputeDetachedSignature: compact HS256 JWS, ``kid`` = token id, payload left out)."""
    header = _b64url(json.dumps({"alg": "HS256", "kid": token_id},
                                separators=(",", ":")).encode())
    signing_input = f"{header}.{_b64url(content.encode())}".encode()
    mac = hmac.new(token_secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}..{_b64url(mac)}"


def detached_jws_valid(content: str, signature: str, token_id: str, token_secret: str) -> bool:
    """Whether ``signature`` (``header..mac``) signs ``content`` with the token: HS256, its
    ``kid`` the token id, the MAC over the header as given and the content."""
    parts = signature.split(".")
    if len(parts) != 3 or parts[1] != "":
        return False
    try:
        header = json.loads(_b64url_decode(parts[0]))
        mac = _b64url_decode(parts[2])
    except ValueError:
        return False
    if not isinstance(header, dict) or header.get("alg") != "HS256" or \
            header.get("kid") != token_id:
        return False
    signing_input = f"{parts[0]}.{_b64url(content.encode())}".encode()
    expected = hmac.new(token_secret.encode(), signing_input, hashlib.sha256).digest()
    return hmac.compare_digest(mac, expected)


def check_signature(info: ClusterInfo, token: str) -> None:
    """DiscoveryError unless ``token`` signs cluster-info's kubeconfig."""
    parsed = BootstrapToken.parse(token)
    signature = info.signatures.get(parsed.id)
    if signature is None:
        raise DiscoveryError(f"kube-public/cluster-info is not signed for token {parsed.id} "
                             "(no jws-kubeconfig-" + parsed.id + "): the token does not exist "
                             "in the tenant or its bootstrapsigner has not run yet; make a "
                             "fresh one and run again")
    if not detached_jws_valid(info.kubeconfig, signature, parsed.id, parsed.secret):
        raise DiscoveryError(f"kube-public/cluster-info's signature for token {parsed.id} does "
                             "not match its kubeconfig: refused (the answer was altered, or "
                             "the token is not the one the tenant holds)")


def verify(configmap: dict[str, Any], token: str, pin: str) -> tuple[ClusterInfo,
                                                                       x509.Certificate]:
    """kubeadm's checks of the first (unverified) read: parsed, signed by ``token``, one CA
    pinned by ``pin``. Returns the ClusterInfo and the pinned CA."""
    info = parse_cluster_info(configmap)
    check_signature(info, token)
    return info, pinned_ca(info.cas, pin)


def bootstrap_kubeconfig(server: str, bundle: bytes, token: str) -> str:
    """``/etc/kubernetes/bootstrap-kubelet.conf`` as ``kubeadm join`` writes it: the server
    and CA bundle cluster-info publishes, the bootstrap token as the user."""
    context = f"{BOOTSTRAP_USER}@{BOOTSTRAP_CLUSTER}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": BOOTSTRAP_CLUSTER, "cluster": {
            "server": server,
            "certificate-authority-data": base64.b64encode(bundle).decode()}}],
        "contexts": [{"name": context, "context": {"cluster": BOOTSTRAP_CLUSTER,
                                                   "user": BOOTSTRAP_USER}}],
        "current-context": context,
        "preferences": {},
        "users": [{"name": BOOTSTRAP_USER, "user": {"token": token}}],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def kubeconfig_bundle(text: str) -> bytes | None:
    """The CA data of a kubeconfig's first cluster (as the kubelet writes kubelet.conf), or
    None if it has none."""
    try:
        cluster = yaml.safe_load(text)["clusters"][0]["cluster"]
        return base64.b64decode(cluster["certificate-authority-data"])
    except (yaml.YAMLError, KeyError, IndexError, TypeError, ValueError):
        return None


def client_certificate_files(names: Iterable[str]) -> list[str]:
    """Which of the files in a kubelet's --cert-dir are its client certificate store (to be
    removed so that it bootstraps a new one); never the serving pair."""
    return sorted(n for n in names
                  if n == CLIENT_CURRENT or n in (f"{CLIENT_PAIR}.crt", f"{CLIENT_PAIR}.key",
                                                  f"{CLIENT_PAIR}.key.tmp")
                  or (n.startswith(CLIENT_PAIR + "-") and n.endswith(".pem")))


def describe(cert: x509.Certificate) -> str:
    """A CA or leaf in a few words: its subject and serial."""
    return f"{cert.subject.rfc4514_string()} (serial {cert.serial_number:x})"


def load_certificate(pem: bytes) -> x509.Certificate | None:
    """The first certificate of a PEM file (a kubelet's client pair holds the key too)."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None


def dropin_client_ca(dropin: Any) -> str | None:
    """authentication.x509.clientCAFile of a KubeletConfiguration drop-in (None if unset)."""
    try:
        value = dropin["authentication"]["x509"]["clientCAFile"]
    except (KeyError, TypeError):
        return None
    return str(value) if value else None
