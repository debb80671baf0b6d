"""A CA rotation's certificates, phases and Events (haku.render.ca_rotation), pure; the chains
are checked with real TLS handshakes on loopback."""

from __future__ import annotations

import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.controller.steps.ca_rotation import pem_of, renewed_node
from haku.render import ca_rotation as cr
from haku.render import pki, tenant_kubeconfigs, tenant_pki

ALG = pki.KeyAlgorithm.ECDSA_P256
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
T = "2026-11-30T12:00:00Z"
SPEC = TenantControlPlaneSpec.parse({"metadata": {"name": "t", "namespace": "n", "uid": "u"},
                                     "spec": {"kubernetes": {"version": "v1.37.2"}}})


def plan(existing: dict[str, bytes], rotation: cr.Intent = cr.NO_CHANGE,
         days: int = 0) -> tenant_pki.Plan:
    return tenant_pki.plan(SPEC, existing, ("127.0.0.1",), ALG, NOW + timedelta(days=days),
                           rotation)


@pytest.fixture(scope="module")
def stages() -> dict[str, dict[str, bytes]]:
    before = plan({}).data
    trusting = plan(before, cr.Intent(start="r1")).data
    reissued = plan(trusting, cr.Intent(promote=True)).data
    dropped = plan(reissued, cr.Intent(drop=True)).data
    return {"before": before, "trusting": trusting, "reissued": reissued, "dropped": dropped}


def handshake(tmp: Path, served: dict[str, bytes], trust: bytes) -> str | None:
    """A TLS handshake against a server presenting ``served``'s apiserver chain, from a
    client trusting ``trust``: None if it verified, else why not."""
    (tmp / "chain.crt").write_bytes(served["apiserver.crt"])
    (tmp / "key.pem").write_bytes(served["apiserver.key"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp / "chain.crt", tmp / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    client = ssl.create_default_context(cadata=trust.decode())
    try:
        with socket.create_connection(("127.0.0.1", port), 5) as raw, \
                client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"x")
        return None
    except ssl.SSLCertVerificationError as e:
        return e.verify_message
    finally:
        thread.join(5)
        listener.close()


def test_a_rotation_trusts_the_new_ca_before_it_signs_then_only_it(
        stages: dict[str, dict[str, bytes]]) -> None:
    before, trusting = stages["before"], stages["trusting"]
    reissued, dropped = stages["reissued"], stages["dropped"]
    old = before["ca.crt"]
    # Trusting: a new CA in the bundle, signing nothing yet; nothing else changes.
    new = trusting[cr.NEXT_CERT]
    assert before[cr.BUNDLE] == old and trusting[cr.BUNDLE] == old + new
    assert trusting["ca.crt"] == old and trusting[cr.REQUEST] == b"r1"
    for name in ("apiserver", "apiserver-kubelet-client", "front-proxy-client"):
        assert trusting[f"{name}.crt"] == before[f"{name}.crt"]
    # Reissuing: the new CA signs; the old one is only trusted now (its key is gone).
    assert reissued["ca.crt"] == new and reissued[cr.PREVIOUS] == old
    assert reissued[cr.BUNDLE] == new + old
    assert before["ca.key"] not in reissued.values() and cr.NEXT_KEY not in reissued
    for name in ("apiserver", "apiserver-kubelet-client"):
        chain = cr.certificates(reissued[f"{name}.crt"])
        assert len(chain) == 2 and chain[1] == reissued[cr.CROSS]
        assert pki.KeyPair(chain[0], reissued[f"{name}.key"]).cert.issuer == \
            pki.KeyPair(new, reissued["ca.key"]).cert.subject
    assert dropped[cr.BUNDLE] == new and cr.PREVIOUS not in dropped and cr.CROSS not in dropped
    assert len(cr.certificates(dropped["apiserver.crt"])) == 1
    # The leaves themselves are kept through the drop (only the chain changes).
    assert cr.certificates(dropped["apiserver.crt"])[0] == \
        cr.certificates(reissued["apiserver.crt"])[0]
    assert dropped["apiserver.key"] == reissued["apiserver.key"]


def test_clients_of_either_ca_verify_the_server_until_the_drop(
        stages: dict[str, dict[str, bytes]], tmp_path: Path) -> None:
    before, reissued, dropped = stages["before"], stages["reissued"], stages["dropped"]
    old, new = before["ca.crt"], reissued["ca.crt"]
    assert handshake(tmp_path, before, old) is None
    assert handshake(tmp_path, before, reissued[cr.BUNDLE]) is None
    # While both are trusted: a client that still knows only the old CA verifies the new
    # serving certificate through the cross-signed CA; one that knows the new CA alone, or
    # the bundle, verifies it directly.
    assert handshake(tmp_path, reissued, old) is None
    assert handshake(tmp_path, reissued, new) is None
    assert handshake(tmp_path, reissued, reissued[cr.BUNDLE]) is None
    # After the drop only the new CA verifies it.
    assert handshake(tmp_path, dropped, new) is None
    assert handshake(tmp_path, dropped, old) is not None


def test_a_started_rotation_is_not_started_twice(stages: dict[str, dict[str, bytes]]) -> None:
    for stage in ("trusting", "reissued"):
        data = stages[stage]
        again = plan(data, cr.Intent(start="r1"), days=1)
        assert not again.changed and again.data == data
        # A new request while a rotation is in the Secret waits for it to end.
        assert not plan(data, cr.Intent(start="r2"), days=1).changed
    assert not plan(stages["reissued"], cr.Intent(promote=True), days=1).changed


def test_kubeconfigs_trust_the_bundle_and_carry_new_ca_clients(
        stages: dict[str, dict[str, bytes]]) -> None:
    import base64

    import yaml

    before, trusting = stages["before"], stages["reissued"]
    ca_old = pki.KeyPair(before["ca.crt"], before["ca.key"])
    ca_new = pki.KeyPair(trusting["ca.crt"], trusting["ca.key"])
    first = tenant_kubeconfigs.plan("t", ca_old, {}, "https://e:6443", "https://127.0.0.1:6443",
                                    algorithm=ALG, now=NOW, trust=before[cr.BUNDLE])
    rotated = tenant_kubeconfigs.plan("t", ca_new, first.data, "https://e:6443",
                                      "https://127.0.0.1:6443", algorithm=ALG, now=NOW,
                                      trust=trusting[cr.BUNDLE])
    assert set(rotated.issued) == set(first.data)
    doc = yaml.safe_load(rotated.data["admin.conf"])
    assert base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"]) == \
        trusting[cr.BUNDLE]
    cert = base64.b64decode(doc["users"][0]["user"]["client-certificate-data"])
    assert pki.KeyPair(cert, b"").cert.issuer == ca_new.cert.subject
    kept = tenant_kubeconfigs.plan("t", ca_new, rotated.data, "https://e:6443",
                                   "https://127.0.0.1:6443", algorithm=ALG, now=NOW,
                                   trust=trusting[cr.BUNDLE])
    assert not kept.changed


def test_the_annotation_starts_once_and_the_phase_drives_the_rest() -> None:
    assert cr.intent("", {}) == cr.NO_CHANGE
    assert cr.intent("r1", {}) == cr.Intent(start="r1")
    assert cr.intent("r1", {"requested": "r1", "phase": "Completed"}) == cr.NO_CHANGE
    assert cr.intent("r2", {"requested": "r1", "phase": "Completed"}) == cr.Intent(start="r2")
    assert cr.intent("r2", {"requested": "r1", "phase": "Trusting"}) == cr.NO_CHANGE
    assert cr.intent("r1", {"requested": "r1", "phase": "Reissuing"}) == \
        cr.Intent(promote=True)
    assert cr.intent("r2", {"requested": "r1", "phase": "NodesPending"}) == cr.NO_CHANGE
    assert cr.intent("r1", {"requested": "r1", "phase": "Dropping"}) == cr.Intent(drop=True)
    assert cr.requested({cr.ANNOTATION: " r1 "}) == "r1"


def seen(rolled_out: bool = True, new_only: bool = True, bundle: bytes | None = None,
         pending: tuple[str, ...] | None = (), moved: tuple[str, ...] = ()) -> cr.Observed:
    return cr.Observed(rolled_out, new_only, bundle, pending, moved)


def test_the_phases_wait_for_what_each_needs(stages: dict[str, dict[str, bytes]]) -> None:
    trusting, reissued, dropped = stages["trusting"], stages["reissued"], stages["dropped"]
    # The certificate step started it: Trusting, with both fingerprints.
    s1 = cr.advance({}, trusting, seen(rolled_out=False, pending=None), T)
    assert s1["phase"] == cr.TRUSTING and s1["requested"] == "r1"
    assert s1["previousCA"] == cr.fingerprint(trusting["ca.crt"])
    assert s1["currentCA"] == cr.fingerprint(trusting[cr.NEXT_CERT])
    # The new CA signs only once every pod and the in-tenant objects trust it.
    assert cr.advance(s1, trusting, seen(rolled_out=False, bundle=trusting[cr.BUNDLE]),
                      T)["phase"] == cr.TRUSTING
    assert cr.advance(s1, trusting, seen(bundle=b"other"), T)["phase"] == cr.TRUSTING
    s2 = cr.advance(s1, trusting, seen(new_only=False, bundle=trusting[cr.BUNDLE],
                                             pending=None), T)
    assert s2["phase"] == cr.REISSUING and cr.intent("r1", s2) == cr.Intent(promote=True)
    bundle = reissued[cr.BUNDLE]
    # Reissued, but the operator's client has not verified with the new CA alone, or the
    # in-tenant objects hold another bundle: still Reissuing.
    assert cr.advance(s2, reissued, seen(new_only=False, bundle=bundle, pending=None),
                      T)["phase"] == cr.REISSUING
    assert cr.advance(s2, reissued, seen(bundle=trusting[cr.BUNDLE], pending=None),
                      T)["phase"] == cr.REISSUING
    # Settled with a Ready node still on the old CA: NodesPending, naming it.
    s3 = cr.advance(s2, reissued, seen(bundle=bundle, pending=("w1",)), T)
    assert s3["phase"] == cr.NODES_PENDING and s3["pendingNodes"] == ["w1"]
    # Nodes not looked at this pass: nothing moves.
    assert cr.advance(s3, reissued, seen(bundle=bundle, pending=None), T) == s3
    # The node renewed: Dropping, and it is remembered (CSRs are garbage-collected).
    s4 = cr.advance(s3, reissued, seen(bundle=bundle, pending=(), moved=("w1",)), T)
    assert s4["phase"] == cr.DROPPING and s4["renewedNodes"] == ["w1"]
    assert cr.intent("r1", s4) == cr.Intent(drop=True)
    # Not Completed until the old CA is out of the Secret and everything settled on it.
    assert cr.advance(s4, reissued, seen(bundle=bundle), T)["phase"] == cr.DROPPING
    assert cr.advance(s4, dropped, seen(bundle=bundle), T)["phase"] == cr.DROPPING
    s5 = cr.advance(s4, dropped, seen(bundle=dropped[cr.BUNDLE]), "2026-11-30T12:05:00Z")
    assert s5["phase"] == cr.COMPLETED and s5["completedAt"] == "2026-11-30T12:05:00Z"
    assert cr.advance(s5, dropped, seen(bundle=dropped[cr.BUNDLE]), T) == s5


def test_a_lost_status_write_does_not_start_a_second_rotation(
        stages: dict[str, dict[str, bytes]]) -> None:
    # The Secret says r1 started; the status never recorded it: it is picked up, once, in
    # the phase the Secret is in.
    done = {"requested": "r0", "phase": "Completed"}
    s = cr.advance(done, stages["trusting"], seen(rolled_out=False, pending=None), T)
    assert s["phase"] == cr.TRUSTING and s["requested"] == "r1"
    assert cr.intent("r1", s) == cr.NO_CHANGE
    s = cr.advance(done, stages["reissued"], seen(rolled_out=False, pending=None), T)
    assert s["phase"] == cr.REISSUING and s["requested"] == "r1"


def test_events_name_each_phase_once() -> None:
    base: dict[str, Any] = {"requested": "r1", "previousCA": "aa", "currentCA": "bb"}
    phases = [{**base, "phase": p, "pendingNodes": ["w1"] if p == cr.NODES_PENDING else []}
              for p in cr.PHASES]
    assert [e.reason for e in cr.events({}, phases[0])] == ["CertificateAuthorityRotating"]
    assert cr.events(phases[0], phases[0]) == []
    assert [e.reason for e in cr.events(phases[0], phases[1])] == [
        "CertificateAuthorityReissuing"]
    pending = cr.events(phases[1], phases[2])
    assert [e.reason for e in pending] == ["CertificateAuthorityNodesPending"]
    assert "w1" in pending[0].message and cr.DOC in pending[0].message
    assert [e.reason for e in cr.events(phases[2], phases[4])] == [
        "CertificateAuthorityDropping", "CertificateAuthorityRotated"]
    # A second rotation starts its own series.
    again = {**phases[0], "requested": "r2"}
    assert [e.reason for e in cr.events(phases[4], again)] == ["CertificateAuthorityRotating"]


def test_a_kubelet_certificate_counts_only_from_the_new_ca(
        stages: dict[str, dict[str, bytes]]) -> None:
    import base64

    before, trusting = stages["before"], stages["reissued"]
    new = pki.KeyPair(trusting["ca.crt"], trusting["ca.key"])
    old = pki.KeyPair(before["ca.crt"], before["ca.key"])
    renewed = pki.issue(new, "system:node:w1", pki.Usage.CLIENT, ("system:nodes",), algorithm=ALG)
    stale = pki.issue(old, "system:node:w2", pki.Usage.CLIENT, ("system:nodes",), algorithm=ALG)
    other = pki.issue(new, "someone", pki.Usage.CLIENT, algorithm=ALG)
    assert renewed_node(renewed.cert_pem, new.cert_pem) == "w1"
    assert renewed_node(stale.cert_pem, new.cert_pem) is None
    assert renewed_node(other.cert_pem, new.cert_pem) is None
    assert renewed_node(b"junk", new.cert_pem) is None
    # The API returns status.certificate base64-encoded.
    assert pem_of(base64.b64encode(renewed.cert_pem).decode()) == renewed.cert_pem
    assert pem_of(renewed.cert_pem) == renewed.cert_pem
