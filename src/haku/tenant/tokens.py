"""Bootstrap tokens for ``kubeadm join``: the token Secret, the CA pin and the join line.

The Secret has kubeadm's shape (``bootstrap.kubernetes.io/token`` in kube-system): the tenant's
controller-manager signs cluster-info with it (bootstrapsigner) and deletes it once expired
(tokencleaner); the API server authenticates ``<id>.<secret>`` as a member of
``system:bootstrappers:kubeadm:default-node-token``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

NODE_TOKEN_GROUP = "system:bootstrappers:kubeadm:default-node-token"  # noqa: S105 (a group)
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
TOKEN_RE = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")


@dataclass(frozen=True)
class BootstrapToken:
    id: str
    secret: str

    def __str__(self) -> str:
        return f"{self.id}.{self.secret}"

    @classmethod
    def generate(cls) -> BootstrapToken:
        pick = secrets.choice
        return cls("".join(pick(_ALPHABET) for _ in range(6)),
                   "".join(pick(_ALPHABET) for _ in range(16)))

    @classmethod
    def parse(cls, text: str) -> BootstrapToken:
        m = TOKEN_RE.match(text)
        if not m:
            raise ValueError("a bootstrap token looks like [a-z0-9]{6}.[a-z0-9]{16}")
        return cls(m.group(1), m.group(2))


def token_secret(token: BootstrapToken, expires: datetime,
                 description: str = "haku join-command") -> dict[str, Any]:
    """The kube-system Secret that makes ``token`` valid until ``expires`` (timezone-aware)."""
    if expires.tzinfo is None:
        raise ValueError("expires must be timezone-aware")
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": f"bootstrap-token-{token.id}", "namespace": "kube-system",
                     "labels": {"app.kubernetes.io/managed-by": "haku"}},
        "stringData": {
            "token-id": token.id,
            "token-secret": token.secret,
            "expiration": expires.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": NODE_TOKEN_GROUP,
            "description": description,
        },
    }


def ca_cert_hash(ca_pem: bytes) -> str:
    """kubeadm's CA pin: SHA-256 of the CA certificate's SubjectPublicKeyInfo."""
    cert = x509.load_pem_x509_certificate(ca_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


@dataclass(frozen=True)
class JoinCommand:
    """What ``kubeadm join`` needs: where, which token, which CA."""

    endpoint: str  # host:port, no scheme
    token: str
    ca_cert_hash: str

    def __str__(self) -> str:
        return (f"kubeadm join {self.endpoint} --token {self.token} "
                f"--discovery-token-ca-cert-hash {self.ca_cert_hash}")

    @classmethod
    def parse(cls, line: str) -> JoinCommand:
        words = line.split()
        if words[:2] != ["kubeadm", "join"] or len(words) < 3:
            raise ValueError(f"not a kubeadm join line: {line!r}")
        opts = dict(zip(words[3::2], words[4::2], strict=False))
        try:
            return cls(words[2], opts["--token"], opts["--discovery-token-ca-cert-hash"])
        except KeyError as e:
            raise ValueError(f"kubeadm join line without {e.args[0]}: {line!r}") from e
