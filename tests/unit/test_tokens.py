import hashlib
import subprocess
from datetime import UTC, datetime, timedelta, timezone

import pytest

from haku.cli import parse_duration
from haku.render import pki
from haku.tenant.tokens import (
    NODE_TOKEN_GROUP,
    BootstrapToken,
    JoinCommand,
    ca_cert_hash,
    token_secret,
)


def test_generated_tokens_have_kubeadms_format_and_differ() -> None:
    tokens = {str(BootstrapToken.generate()) for _ in range(50)}
    assert len(tokens) == 50
    for t in tokens:
        assert BootstrapToken.parse(t).id == t[:6]
    with pytest.raises(ValueError, match="looks like"):
        BootstrapToken.parse("ABCDEF.0123456789abcdef")


def test_token_secret_has_the_fields_the_apiserver_and_bootstrapsigner_read() -> None:
    token = BootstrapToken("abcdef", "0123456789abcdef")
    cet = timezone(timedelta(hours=1))
    secret = token_secret(token, datetime(2030, 1, 2, 4, 5, 6, tzinfo=cet))
    assert secret["type"] == "bootstrap.kubernetes.io/token"
    assert secret["metadata"]["name"] == "bootstrap-token-abcdef"
    assert secret["metadata"]["namespace"] == "kube-system"
    data = secret["stringData"]
    assert data["expiration"] == "2030-01-02T03:05:06Z"  # converted to UTC
    assert (data["token-id"], data["token-secret"]) == ("abcdef", "0123456789abcdef")
    assert data["usage-bootstrap-authentication"] == data["usage-bootstrap-signing"] == "true"
    assert data["auth-extra-groups"] == NODE_TOKEN_GROUP
    with pytest.raises(ValueError, match="timezone"):
        token_secret(token, datetime(2030, 1, 1))


@pytest.mark.parametrize("algorithm", [pki.KeyAlgorithm.RSA_2048, pki.KeyAlgorithm.ECDSA_P256])
def test_ca_hash_matches_kubeadms_documented_openssl_recipe(algorithm: pki.KeyAlgorithm) -> None:
    ca = pki.new_ca("kubernetes", algorithm=algorithm)
    pubkey = subprocess.run(["openssl", "x509", "-pubkey", "-noout"], input=ca.cert_pem,
                            capture_output=True, check=True).stdout
    kind = "rsa" if algorithm is pki.KeyAlgorithm.RSA_2048 else "ec"
    der = subprocess.run(["openssl", kind, "-pubin", "-outform", "der"], input=pubkey,
                         capture_output=True, check=True).stdout
    assert ca_cert_hash(ca.cert_pem) == "sha256:" + hashlib.sha256(der).hexdigest()


def test_join_line_round_trips_and_bad_lines_are_named() -> None:
    line = JoinCommand("10.245.0.1:31443", "abcdef.0123456789abcdef", "sha256:" + "0" * 64)
    assert str(line).startswith("kubeadm join 10.245.0.1:31443 --token abcdef.")
    assert JoinCommand.parse(str(line) + "\n") == line
    with pytest.raises(ValueError, match="--discovery-token-ca-cert-hash"):
        JoinCommand.parse("kubeadm join 1.2.3.4:6443 --token a.b")
    with pytest.raises(ValueError, match="not a kubeadm join"):
        JoinCommand.parse("kubectl get nodes")


def test_ttl_durations() -> None:
    assert parse_duration("24h") == 86400
    assert parse_duration("1h30m") == 5400
    assert parse_duration("45") == 45
    for bad in ("0", "1x", "h", "1h2", "-5m"):
        with pytest.raises(Exception, match="duration"):
            parse_duration(bad)


def test_expiry_is_in_the_future_by_the_ttl() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    data = token_secret(BootstrapToken.generate(), now + timedelta(minutes=30))["stringData"]
    assert data["expiration"] == "2030-01-01T00:30:00Z"
