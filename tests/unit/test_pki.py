import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from haku.render import kubeconfig, pki


def test_leaf_carries_subject_sans_and_usage_and_verifies_against_its_ca() -> None:
    ca = pki.new_ca("test-ca", pki.KeyAlgorithm.ECDSA_P256)
    leaf = pki.issue(
        ca, "kube-apiserver", pki.Usage.SERVER, organizations=["o1"],
        dns_names=["kubernetes", "kubernetes"], ip_addresses=["10.96.0.1"],
        algorithm=pki.KeyAlgorithm.ECDSA_P256,
    )
    cert = leaf.cert
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kube-apiserver"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "o1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["kubernetes"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.96.0.1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    cert.verify_directly_issued_by(ca.cert)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(leaf.key, ec.EllipticCurvePrivateKey)


def test_rsa_is_the_default_like_kubeadm_and_leaves_never_outlive_the_ca() -> None:
    from datetime import timedelta

    ca = pki.new_ca("ca", pki.KeyAlgorithm.ECDSA_P256, valid_for=timedelta(days=10))
    leaf = pki.issue(ca, "client", pki.Usage.CLIENT, valid_for=timedelta(days=400))
    assert isinstance(leaf.key, rsa.RSAPrivateKey) and leaf.key.key_size == 2048
    assert leaf.cert.not_valid_after_utc <= ca.cert.not_valid_after_utc


def test_kubeconfig_embeds_credentials() -> None:
    doc = kubeconfig.client_certificate_kubeconfig(
        "c", "https://127.0.0.1:6443", b"CA", "admin", b"CERT", b"KEY")
    assert doc["current-context"] == "admin@c"
    assert doc["clusters"][0]["cluster"]["certificate-authority-data"] == "Q0E="
    assert doc["users"][0]["user"]["client-key-data"] == "S0VZ"
    assert "server: https://127.0.0.1:6443" in kubeconfig.dump(doc)


def test_a_key_that_does_not_belong_to_the_certificate_is_detected() -> None:
    ca = pki.new_ca("ca", pki.KeyAlgorithm.ECDSA_P256)
    one = pki.issue(ca, "a", pki.Usage.SERVER, algorithm=pki.KeyAlgorithm.ECDSA_P256)
    two = pki.issue(ca, "b", pki.Usage.SERVER, algorithm=pki.KeyAlgorithm.ECDSA_P256)
    assert pki.matches(one)
    assert not pki.matches(pki.KeyPair(one.cert_pem, two.key_pem))
