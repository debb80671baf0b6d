"""X.509 building blocks: keys, CAs and leaf certificates, as PEM.

Pure apart from randomness. RSA key generation holds the GIL for ~50 ms a key, so callers on an
event loop run :func:`new_key` in a thread; ECDSA-P256 costs well under a millisecond.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class KeyAlgorithm(StrEnum):
    """The names kubeadm's ClusterConfiguration.encryptionAlgorithm uses."""

    RSA_2048 = "RSA-2048"
    RSA_3072 = "RSA-3072"
    RSA_4096 = "RSA-4096"
    ECDSA_P256 = "ECDSA-P256"
    ECDSA_P384 = "ECDSA-P384"


class Usage(StrEnum):
    SERVER = "server"
    CLIENT = "client"
    SERVER_AND_CLIENT = "server+client"


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def key(self) -> PrivateKey:
        # RSA validation costs ~30 ms a load; these keys are Haku's own, read back from its
        # own Secrets, and `matches` checks each against its certificate.
        key = serialization.load_pem_private_key(self.key_pem, password=None,
                                                 unsafe_skip_rsa_key_validation=True)
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise TypeError("only RSA and ECDSA keys are supported")
        return key


def new_key(algorithm: KeyAlgorithm = KeyAlgorithm.RSA_2048) -> PrivateKey:
    match algorithm:
        case KeyAlgorithm.ECDSA_P256:
            return ec.generate_private_key(ec.SECP256R1())
        case KeyAlgorithm.ECDSA_P384:
            return ec.generate_private_key(ec.SECP384R1())
        case _:
            bits = int(algorithm.value.split("-")[1])
            return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _name(common_name: str, organizations: Iterable[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


# What a CA's key may do: sign certificates (and, as kubeadm's CAs, sign and encipher).
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, key_encipherment=True, key_cert_sign=True,
    content_commitment=False, data_encipherment=False, key_agreement=False,
    crl_sign=False, encipher_only=False, decipher_only=False,
)


def new_ca(
    common_name: str,
    algorithm: KeyAlgorithm = KeyAlgorithm.RSA_2048,
    valid_for: timedelta = timedelta(days=3650),
    now: datetime | None = None,
) -> KeyPair:
    now = now or datetime.now(UTC)
    key = new_key(algorithm)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


def cross_sign(ca: KeyPair, by: KeyPair, now: datetime | None = None) -> bytes:
    """CA ``ca``'s certificate issued by CA ``by`` (its subject, key and key identifier, so
    chains built from ``ca`` reach ``by`` too): served after a leaf of ``ca``, it lets
    clients that trust only ``by`` verify that leaf. PEM; valid while both are."""
    now = now or datetime.now(UTC)
    cert, signer = ca.cert, by.cert
    cross = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(signer.subject)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(min(cert.not_valid_after_utc, signer.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(cert.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            by.key.public_key()), critical=False)
        .sign(by.key, hashes.SHA256())
    )
    return cross.public_bytes(serialization.Encoding.PEM)


def issue(
    ca: KeyPair,
    common_name: str,
    usage: Usage,
    organizations: Iterable[str] = (),
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    algorithm: KeyAlgorithm = KeyAlgorithm.RSA_2048,
    valid_for: timedelta = timedelta(days=365),
    now: datetime | None = None,
    key: PrivateKey | None = None,
) -> KeyPair:
    """A leaf certificate signed by ``ca`` for ``usage``, with the given subject and SANs."""
    now = now or datetime.now(UTC)
    key = key or new_key(algorithm)
    ca_cert, ca_key = ca.cert, ca.key
    eku = {
        Usage.SERVER: [ExtendedKeyUsageOID.SERVER_AUTH],
        Usage.CLIENT: [ExtendedKeyUsageOID.CLIENT_AUTH],
        Usage.SERVER_AND_CLIENT: [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    }[usage]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organizations))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(min(now + valid_for, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                key_cert_sign=False, content_commitment=False, data_encipherment=False,
                key_agreement=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(_dns_name(d)) for d in dict.fromkeys(dns_names)]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(ip_addresses)]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


def _dns_name(name: str) -> str:
    """``name`` if a certificate can hold it as a DNS SAN (an IA5String: ASCII), else a
    ValueError that names it."""
    if not name.isascii():
        raise ValueError(f"DNS name {name!r} cannot go in a certificate: it must be ASCII "
                         "(an internationalised name as its xn-- A-label)")
    return name


def common_name(pair: KeyPair) -> str:
    return str(pair.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def matches(pair: KeyPair) -> bool:
    """Whether the private key belongs to the certificate."""
    try:
        return public_key_pem(pair.key) == pair.cert.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except ValueError:
        return False
