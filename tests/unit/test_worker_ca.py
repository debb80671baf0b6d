"""The pure part of ``haku dev worker renew-ca`` (``haku.dev.worker_ca``): kubeadm's
discovery checks on cluster-info (signature, pin, a bundle of CAs) and the files a node gets."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from haku import cli
from haku.dev import worker as workers
from haku.dev import worker_ca
from haku.dev.layout import Layout
from haku.dev.processes import process_start_time
from haku.dev.worker_ca import DiscoveryError
from haku.dev.worker_config import (
    WorkerError,
    WorkerPaths,
    kubelet_dropin,
    node_ready,
    worker_paths,
)
from haku.dev.worker_net import WorkerNet
from haku.tenant.tokens import ca_cert_hash

# What a real tenant's bootstrapsigner wrote (kube-controller-manager v1.37.2, recorded from
# the dev cluster; the tenant and its token are long gone): cluster-info's kubeconfig text,
# the token and jws-kubeconfig-8noe1b, and the pin `haku join-command` gave for it.
REAL_CA_B64 = (
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJiakNDQVJTZ0F3SUJBZ0lVQXJQbCtHMzZ4"
    "U2R6Ty9tUXhKbkNWOFJ2dVlnd0NnWUlLb1pJemowRUF3SXcKRlRFVE1CRUdBMVVFQXd3S2EzVmla"
    "WEp1WlhSbGN6QWVGdzB5TmpFeE16QXhOak13TXpWYUZ3MHpOakV4TWpjeApOak0xTXpWYU1CVXhF"
    "ekFSQmdOVkJBTU1DbXQxWW1WeWJtVjBaWE13V1RBVEJnY3Foa2pPUFFJQkJnZ3Foa2pPClBRTUJC"
    "d05DQUFTeHVwendDcVgrSHdUZkVGeE9tZmljVGxGV0NiKzRQbUFWYVpXODVpZldPQnllSXhaTmRO"
    "a3EKcmMyWERrUFJaQmJBMXM0ODROVTNMYXNhZCszYVA1WGtvMEl3UURBUEJnTlZIUk1CQWY4RUJU"
    "QURBUUgvTUE0RwpBMVVkRHdFQi93UUVBd0lDcERBZEJnTlZIUTRFRmdRVTlBSmMyblBzc1lWN3dR"
    "YkRCVC8wRDlHLzFSZ3dDZ1lJCktvWkl6ajBFQXdJRFNBQXdSUUlnTWtoNkZMVzJVRUxvMlNSSHR3"
    "S1ZtcXdhM0h6MXl6NXhWSlV2M0FpcGYxOEMKSVFDVGV5VWRDWklCM2k5clNZTVE4UEN6Q0h5ck9j"
    "Q2svOXUwOE5xclEyWnQ3UT09Ci0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K"
)
REAL_KUBECONFIG = (
    "apiVersion: v1\nkind: Config\nclusters:\n- name: ''\n  cluster:\n"
    "    server: https://10.245.0.1:31443\n"
    f"    certificate-authority-data: {REAL_CA_B64}\n"
    "contexts: null\ncurrent-context: ''\npreferences: {}\nusers: null\n")
REAL_TOKEN = "8noe1b.pnvji71rrq0cnvfq"
REAL_SIGNATURE = ("eyJhbGciOiJIUzI1NiIsImtpZCI6Ijhub2UxYiJ9"  # {"alg":"HS256","kid":"8noe1b"}
                  "..ThKnEQAkd4PGjMtlWccvKoYU1ZLcC0cX2ffHlhCEkuY")
REAL_PIN = "sha256:5d75dbfccdb3c8e0cb761083a2a3d01547f854a4c51de66b9fc0271229c79b51"


def real_configmap() -> dict[str, Any]:
    return {"kind": "ConfigMap", "data": {"kubeconfig": REAL_KUBECONFIG,
                                          "jws-kubeconfig-8noe1b": REAL_SIGNATURE}}


def make_ca(name: str, ca: bool = True) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def cluster_info(bundle: bytes, token: str, server: str = "https://10.245.0.1:31443",
                 ) -> dict[str, Any]:
    """A cluster-info as a tenant publishes it (Haku's rendering) signed for ``token``."""
    text = yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "", "cluster": {
            "server": server,
            "certificate-authority-data": base64.b64encode(bundle).decode()}}],
        "contexts": None, "current-context": "", "preferences": {}, "users": None,
    }, sort_keys=False)
    token_id, secret = token.split(".")
    return {"data": {"kubeconfig": text,
                     f"jws-kubeconfig-{token_id}": worker_ca.detached_jws(text, token_id,
                                                                          secret)}}


OLD, OLD_KEY = make_ca("haku-old")
NEW, NEW_KEY = make_ca("haku-new")
TOKEN = "abcdef.0123456789abcdef"


# --- signatures: the bootstrapsigner's detached JWS


def test_the_signature_is_computed_as_the_bootstrapsigner_computes_it() -> None:
    token_id, secret = REAL_TOKEN.split(".")
    assert worker_ca.detached_jws(REAL_KUBECONFIG, token_id, secret) == REAL_SIGNATURE
    assert worker_ca.detached_jws_valid(REAL_KUBECONFIG, REAL_SIGNATURE, token_id, secret)


@pytest.mark.parametrize("change", ["content", "secret", "kid", "alg", "attached", "garbage"])
def test_a_signature_that_does_not_match_is_refused(change: str) -> None:
    token_id, secret = REAL_TOKEN.split(".")
    content, signature = REAL_KUBECONFIG, REAL_SIGNATURE
    header, _, mac = signature.split(".")
    if change == "content":
        content = content.replace("31443", "31444")
    elif change == "secret":
        secret = "0123456789abcdef"
    elif change == "kid":
        token_id = "zzzzzz"
    elif change == "alg":  # a header that says none, with the same MAC
        none = base64.urlsafe_b64encode(b'{"alg":"none","kid":"8noe1b"}').rstrip(b"=")
        signature = f"{none.decode()}..{mac}"
    elif change == "attached":  # a compact JWS with its payload is not a detached one
        signature = f"{header}.eyJ9.{mac}"
    else:
        signature = "not a jws"
    assert not worker_ca.detached_jws_valid(content, signature, token_id, secret)


def test_real_cluster_info_passes_discovery_with_its_token_and_pin() -> None:
    info, pinned = worker_ca.verify(real_configmap(), REAL_TOKEN, REAL_PIN)
    assert info.server == "https://10.245.0.1:31443"
    assert info.kubeconfig == REAL_KUBECONFIG
    assert info.signatures == {"8noe1b": REAL_SIGNATURE}
    assert [c.subject.rfc4514_string() for c in info.cas] == ["CN=kubernetes"]
    assert pinned == info.cas[0]
    assert ca_cert_hash(info.bundle) == REAL_PIN == worker_ca.spki_hash(pinned)


def test_cluster_info_not_signed_for_the_token_is_refused() -> None:
    with pytest.raises(DiscoveryError, match="not signed for token abcdef"):
        worker_ca.verify(real_configmap(), TOKEN, REAL_PIN)
    altered = real_configmap()
    altered["data"]["kubeconfig"] = REAL_KUBECONFIG.replace("10.245.0.1", "10.245.0.66")
    with pytest.raises(DiscoveryError, match="signature for token 8noe1b does not match"):
        worker_ca.verify(altered, REAL_TOKEN, REAL_PIN)


def test_a_pin_no_ca_has_is_refused_naming_what_the_bundle_holds() -> None:
    with pytest.raises(DiscoveryError) as e:
        worker_ca.verify(real_configmap(), REAL_TOKEN, "sha256:" + "0" * 64)
    message = str(e.value)
    assert "no CA in the tenant's cluster-info has the pinned public key sha256:000" in message
    assert "CN=kubernetes (serial " in message and REAL_PIN in message
    assert isinstance(e.value, WorkerError)  # the CLI prints it as haku: ...


# --- a bundle of two CAs, during a rotation


@pytest.mark.parametrize("pinned", ["old", "new"])
def test_a_bundle_of_two_cas_passes_when_either_is_pinned(pinned: str) -> None:
    bundle = pem(OLD, NEW)
    pin = worker_ca.spki_hash(OLD if pinned == "old" else NEW)
    info, ca = worker_ca.verify(cluster_info(bundle, TOKEN), TOKEN, pin)
    assert info.bundle == bundle
    assert [c.subject.rfc4514_string() for c in info.cas] == ["CN=haku-old", "CN=haku-new"]
    assert ca == (OLD if pinned == "old" else NEW)
    assert worker_ca.spki_hash(OLD) == ca_cert_hash(pem(OLD))  # the pin join-command makes
    assert worker_ca.pinned_ca(info.cas, pin.upper()) == ca  # hex in either case


def test_a_bundle_without_the_pinned_ca_is_refused() -> None:
    other, _ = make_ca("someone-else")
    with pytest.raises(DiscoveryError, match="no CA in the tenant's cluster-info"):
        worker_ca.verify(cluster_info(pem(OLD, NEW), TOKEN), TOKEN, worker_ca.spki_hash(other))


@pytest.mark.parametrize(("bundle", "message"), [
    (b"", "not PEM certificates"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not PEM"),
    (pem(OLD, make_ca("leaf", ca=False)[0]), "certificate 2 of the CA bundle \\(CN=leaf\\) is "
     "not a CA"),
])
def test_what_is_not_a_bundle_of_cas_is_refused(bundle: bytes, message: str) -> None:
    with pytest.raises(DiscoveryError, match=message):
        worker_ca.verify(cluster_info(bundle, TOKEN), TOKEN, worker_ca.spki_hash(OLD))


@pytest.mark.parametrize("configmap", [
    {}, {"data": {}}, {"data": {"kubeconfig": "clusters: []"}},
    {"data": {"kubeconfig": "clusters:\n- cluster: {server: https://x}\n"}},
    {"data": {"kubeconfig": "clusters:\n- cluster: {server: https://x, "
                            "certificate-authority-data: '%%%'}\n"}},
])
def test_cluster_info_without_kubeadms_shape_is_refused(configmap: dict[str, Any]) -> None:
    with pytest.raises(DiscoveryError, match="cluster-info"):
        worker_ca.parse_cluster_info(configmap)


# --- the files the node gets


def test_the_bootstrap_kubeconfig_is_kubeadms_with_the_bundle_and_token() -> None:
    bundle = pem(OLD, NEW)
    text = worker_ca.bootstrap_kubeconfig("https://10.245.0.1:31443", bundle, TOKEN)
    assert yaml.safe_load(text) == {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "kubernetes", "cluster": {
            "server": "https://10.245.0.1:31443",
            "certificate-authority-data": base64.b64encode(bundle).decode()}}],
        "contexts": [{"name": "tls-bootstrap-token-user@kubernetes", "context": {
            "cluster": "kubernetes", "user": "tls-bootstrap-token-user"}}],
        "current-context": "tls-bootstrap-token-user@kubernetes",
        "preferences": {},
        "users": [{"name": "tls-bootstrap-token-user", "user": {"token": TOKEN}}],
    }
    assert worker_ca.kubeconfig_bundle(text) == bundle


def test_kubeconfig_bundle_reads_what_the_kubelet_writes() -> None:
    written = ("apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: "
               f"{base64.b64encode(pem(OLD)).decode()}\n    server: https://10.245.0.1:31443\n"
               "  name: default-cluster\nkind: Config\n")
    assert worker_ca.kubeconfig_bundle(written) == pem(OLD)
    assert worker_ca.kubeconfig_bundle("clusters: []") is None
    assert worker_ca.kubeconfig_bundle(": not yaml :\n\t") is None


def test_only_the_client_certificate_store_is_removed() -> None:
    names = ["kubelet-client-current.pem", "kubelet-client-2026-11-30-16-34-28.pem",
             "kubelet-client.crt", "kubelet-client.key", "kubelet-client.key.tmp",
             "kubelet.crt", "kubelet.key", "kubelet-server-current.pem",
             "kubelet-server-2026-11-30-16-34-28.pem", "kubelet-client-notes.txt", "ca.crt"]
    assert worker_ca.client_certificate_files(names) == [
        "kubelet-client-2026-11-30-16-34-28.pem", "kubelet-client-current.pem",
        "kubelet-client.crt", "kubelet-client.key", "kubelet-client.key.tmp"]


def test_the_workers_kubelet_reads_its_client_ca_from_where_the_bundle_is_written() -> None:
    layout = Layout(state_dir=Path("/var/lib/haku/dev"))
    paths = worker_paths(layout, 3)
    served = {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
              "authentication": {"x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"}}}
    dropin = kubelet_dropin(served, paths, WorkerNet(3, layout.node_ip))
    assert worker_ca.dropin_client_ca(dropin) == str(paths.ca)
    assert str(paths.ca).endswith("/workers/w3/etc-kubernetes/pki/ca.crt")
    assert worker_ca.dropin_client_ca({"authentication": {}}) is None
    assert worker_ca.dropin_client_ca(None) is None


def test_describe_and_load_certificate() -> None:
    pair = pem(OLD) + OLD_KEY.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
    loaded = worker_ca.load_certificate(pair)  # a kubelet's pair: certificate, then key
    assert loaded == OLD
    assert worker_ca.describe(OLD) == f"CN=haku-old (serial {OLD.serial_number:x})"
    assert worker_ca.load_certificate(b"") is None


# --- Ready, as reported after a restart


def test_node_ready_since_needs_a_heartbeat_after_the_restart() -> None:
    def node(status: str, beat: str) -> dict[str, Any]:
        return {"status": {"conditions": [
            {"type": "Ready", "status": status, "reason": "KubeletReady", "message": "ok",
             "lastHeartbeatTime": beat}]}}

    restarted = datetime(2026, 11, 30, 16, 35, 54, 700000, tzinfo=UTC)
    assert node_ready(node("True", "2026-11-30T16:35:40Z"))[0]
    ready, why = node_ready(node("True", "2026-11-30T16:35:40Z"), since=restarted)
    assert not ready and "before the kubelet restarted" in why
    assert node_ready(node("True", "2026-11-30T16:35:54Z"), since=restarted)[0]  # same second
    assert node_ready(node("True", "2026-11-30T16:35:55Z"), since=restarted)[0]
    assert not node_ready(node("False", "2026-11-30T16:35:55Z"), since=restarted)[0]
    assert not node_ready(node("True", "never"), since=restarted)[0]


# --- which workers renew-ca takes, before any token is made (no cluster needed)


def make_worker(state_dir: Path, index: int, state: str) -> WorkerPaths:
    layout = Layout(state_dir=state_dir)
    paths = worker_paths(layout, index)
    paths.root.mkdir(parents=True)
    net = WorkerNet(index, layout.node_ip)
    record = workers.Worker(
        name=f"w{index}", index=index, tenant="tenants/t", node_name=f"t-w{index}",
        endpoint="10.245.0.1:31443", address=net.address, pod_cidr=net.pod_cidr,
        netns=net.netns, host_link=net.host_link, cgroup=f"/{net.netns}",
        kubernetes="v1.37.2", created="2026-11-30T16:00:00+00:00", state=state)
    paths.record.write_text(json.dumps(asdict(record)))
    return paths


def pretend_containerd_runs(state_dir: Path, name: str) -> None:
    """A supervisor record of this very process, which is alive."""
    layout = Layout(state_dir=state_dir)
    layout.pids.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    (layout.pids / f"worker-{name}-containerd.json").write_text(json.dumps(
        {"name": f"worker-{name}-containerd", "pid": pid,
         "start_time": process_start_time(pid), "argv": ["containerd"]}))


def renew_cli(capsys: pytest.CaptureFixture[str], state_dir: Path, ref: str) -> tuple[int, str]:
    code = cli.main(["dev", "worker", "renew-ca", ref, "--state-dir", str(state_dir),
                     "--kubeconfig", str(state_dir / "no-admin.kubeconfig")])
    _, err = capsys.readouterr()
    return code, err


def test_renew_ca_of_no_such_worker_says_which_there_are(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert renew_cli(capsys, tmp_path, "t-w200") == (
        1, "haku: no worker 't-w200'; workers: none\n")


def test_renew_ca_refuses_a_worker_that_never_joined_or_has_no_containerd(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = make_worker(tmp_path, 201, "creating")
    code, err = renew_cli(capsys, tmp_path, "w201")
    assert code == 1
    assert err.startswith("haku: worker w201 has not joined its tenant (state creating): "
                          "there is nothing to renew; haku dev worker remove w201")
    record = json.loads(paths.record.read_text())
    paths.record.write_text(json.dumps(record | {"state": "ready"}))
    paths.downloaded_kubelet_config.parent.mkdir(parents=True)
    paths.downloaded_kubelet_config.write_text("kind: KubeletConfiguration\n")
    code, err = renew_cli(capsys, tmp_path, "t-w201")  # by node name too
    assert code == 1 and "w201's containerd does not run" in err


def test_renew_ca_needs_the_kubelet_to_read_its_client_ca_where_the_bundle_goes(
        tmp_path: Path) -> None:
    paths = make_worker(tmp_path, 202, "ready")
    paths.downloaded_kubelet_config.parent.mkdir(parents=True)
    paths.downloaded_kubelet_config.write_text("kind: KubeletConfiguration\n")
    pretend_containerd_runs(tmp_path, "w202")
    layout = Layout(state_dir=tmp_path)
    with pytest.raises(WorkerError, match="no readable kubelet drop-in"):
        workers.renewable(layout, "w202")
    paths.kubelet_config_dir.mkdir()
    paths.kubelet_dropin.write_text(yaml.safe_dump(
        {"authentication": {"x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"}}}))
    with pytest.raises(WorkerError, match="names clientCAFile /etc/kubernetes/pki/ca.crt, not "
                       f"{paths.ca} where the tenant's bundle is written"):
        workers.renewable(layout, "w202")
    net = WorkerNet(202, layout.node_ip)
    paths.kubelet_dropin.write_text(yaml.safe_dump(kubelet_dropin(
        {"kind": "KubeletConfiguration"}, paths, net)))
    assert workers.renewable(layout, "w202").node_name == "t-w202"
