"""A tenant's certificate set, as kubeadm lays it out, kept in one Secret.

:func:`plan` takes what the Secret holds and returns the full set: everything still valid is
kept byte for byte, and only what is missing, signed by another CA, due to expire, or lacking
a name the API server must answer to is issued again. Key generation is the only costly part
(RSA-2048 ≈ 50 ms a key), so callers on an event loop run this in a thread.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.render import InvalidSpec, pki
from haku.render import ca_rotation as cr
from haku.render.controlplane import kubernetes_service_ips

RENEW_BEFORE = timedelta(days=30)
CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=365)


@dataclass(frozen=True)
class Plan:
    data: dict[str, bytes]
    issued: dict[str, str]  # what was (re)issued -> why

    @property
    def changed(self) -> bool:
        return bool(self.issued)


def _sources(spec: TenantControlPlaneSpec,
             addresses: tuple[str, ...]) -> list[tuple[str, str]]:
    """(field, value) of every name the certificate takes from the spec or the endpoint."""
    found = [("spec.networkProfile.address", spec.address)]
    for value in addresses:
        where = ("spec.networkProfile.advertiseAddress"
                 if value and value == spec.advertise_address else "status.controlPlaneEndpoint")
        found.append((where, value))
    found += [(f"spec.networkProfile.certSANs[{i}]", v) for i, v in enumerate(spec.cert_sans)]
    return found


def apiserver_names(spec: TenantControlPlaneSpec,
                    addresses: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(DNS names, IPs) the tenant API server's certificate must hold. :class:`InvalidSpec`
    for a service CIDR with no first address, or a name a certificate cannot hold (not an IP,
    and not ASCII: a DNS SAN is an IA5String, so an internationalised name goes in as its
    ``xn--`` A-label)."""
    domain = spec.cluster_domain
    svc = f"{spec.name}.{spec.namespace}"
    dns = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
           f"kubernetes.default.svc.{domain}", "localhost",
           spec.name, svc, f"{svc}.svc", f"{svc}.svc.{domain}"]
    ips = ["127.0.0.1", *kubernetes_service_ips(spec)]
    for where, value in _sources(spec, addresses):
        if not value:
            continue
        try:
            ips.append(str(ipaddress.ip_address(value)))
            continue
        except ValueError:
            pass
        if not value.isascii():
            raise InvalidSpec(where, f"{value!r} is neither an IP address nor an ASCII DNS "
                              "name; write an internationalised name as its xn-- A-label")
        dns.append(value)
    for where, hostname in (("spec.controlPlane.ingress.hostname", spec.ingress_hostname),
                            ("spec.controlPlane.gateway.hostname",
                             spec.gateway.hostname if spec.gateway else None)):
        if not hostname:
            continue
        host = hostname.rsplit(":", 1)[0]
        if not host.isascii():
            raise InvalidSpec(where, f"{host!r} is not an ASCII DNS name")
        dns.append(host)
    return list(dict.fromkeys(dns)), list(dict.fromkeys(ips))


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return (set(ext.get_values_for_type(x509.DNSName)),
            {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)})


def why_reissue(existing: Mapping[str, bytes], name: str, ca: pki.KeyPair, now: datetime,
                 dns: list[str] | None = None, ips: list[str] | None = None) -> str | None:
    cert_pem, key_pem = existing.get(f"{name}.crt"), existing.get(f"{name}.key")
    if not cert_pem or not key_pem:
        return "missing"
    pair = pki.KeyPair(cert_pem, key_pem)
    try:
        cert = pair.cert
        if not pki.matches(pair):
            return "key does not match"
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return "not signed by the current CA"
    if cert.not_valid_after_utc - RENEW_BEFORE <= now:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    if dns is not None and ips is not None:
        have_dns, have_ips = _sans(cert)
        missing = sorted(set(dns) - have_dns) + sorted(set(ips) - have_ips)
        if missing:
            return f"lacks {', '.join(missing)}"
    return None


def plan(
    spec: TenantControlPlaneSpec,
    existing: Mapping[str, bytes],
    addresses: tuple[str, ...] = (),
    algorithm: pki.KeyAlgorithm = pki.KeyAlgorithm.RSA_2048,
    now: datetime | None = None,
    rotation: cr.Intent = cr.NO_CHANGE,
) -> Plan:
    """The full set (see the module). ``rotation`` starts a CA rotation, promotes its new CA
    or drops the old one (haku.render.ca_rotation); ``ca-bundle.crt`` is always the CAs the
    tenant trusts, the signing one first."""
    now = now or datetime.now(UTC)
    data = dict(existing)
    issued: dict[str, str] = {}

    def ca(name: str, common_name: str) -> pki.KeyPair:
        cert, key = existing.get(f"{name}.crt"), existing.get(f"{name}.key")
        if cert and key and pki.matches(pki.KeyPair(cert, key)):
            return pki.KeyPair(cert, key)
        pair = pki.new_ca(common_name, algorithm, CA_VALIDITY, now)
        data[f"{name}.crt"], data[f"{name}.key"] = pair.cert_pem, pair.key_pem
        issued[name] = "missing"
        return pair

    def leaf(name: str, signer: pki.KeyPair, common_name: str, usage: pki.Usage,
             organizations: tuple[str, ...] = (), dns: list[str] | None = None,
             ips: list[str] | None = None) -> None:
        # A new CA fails the signature check, so every leaf it signs is issued again too.
        why = why_reissue(data, name, signer, now, dns, ips)
        if why is None:
            return
        pair = pki.issue(signer, common_name, usage, organizations=organizations,
                         dns_names=dns or (), ip_addresses=ips or (), algorithm=algorithm,
                         valid_for=LEAF_VALIDITY, now=now)
        data[f"{name}.crt"], data[f"{name}.key"] = pair.cert_pem, pair.key_pem
        issued[name] = why

    cluster_ca = ca("ca", "kubernetes")
    if rotation.start and rotation.start.encode() != existing.get(cr.REQUEST) and \
            cr.NEXT_CERT not in data and cr.PREVIOUS not in data:
        # A rotation starts: a new CA, trusted (in the bundle) before it signs anything.
        nxt = pki.new_ca(f"kubernetes-{now:%Y%m%d%H%M%S}", algorithm, CA_VALIDITY, now)
        data[cr.NEXT_CERT], data[cr.NEXT_KEY] = nxt.cert_pem, nxt.key_pem
        data[cr.REQUEST] = rotation.start.encode()
        issued["ca-next"] = f"rotation {rotation.start!r}: a new CA, trusted before it signs"
    if rotation.promote and cr.NEXT_CERT in data:
        # It signs from now on; the old CA's certificate stays trusted (and vouches for the
        # new one, cross-signed) until the drop; its key goes.
        new = pki.KeyPair(data.pop(cr.NEXT_CERT), data.pop(cr.NEXT_KEY))
        data[cr.PREVIOUS] = cluster_ca.cert_pem
        data[cr.CROSS] = pki.cross_sign(new, cluster_ca, now)
        data["ca.crt"], data["ca.key"] = new.cert_pem, new.key_pem
        issued["ca"] = "rotation: the new CA signs from now on"
        cluster_ca = new
    if rotation.drop and cr.PREVIOUS in data:
        del data[cr.PREVIOUS]
        data.pop(cr.CROSS, None)
        issued["ca-previous"] = "dropped: the rotation is over"
    bundle = cluster_ca.cert_pem + data.get(cr.NEXT_CERT, b"") + data.get(cr.PREVIOUS, b"")
    if data.get(cr.BUNDLE) != bundle:
        data[cr.BUNDLE] = bundle
        issued[cr.BUNDLE.removesuffix(".crt")] = "the CAs trusted changed"
    front_proxy_ca = ca("front-proxy-ca", "front-proxy-ca")
    dns, ips = apiserver_names(spec, addresses)
    leaf("apiserver", cluster_ca, "kube-apiserver", pki.Usage.SERVER, dns=dns, ips=ips)
    leaf("apiserver-kubelet-client", cluster_ca, "kube-apiserver-kubelet-client",
         pki.Usage.CLIENT, ("kubeadm:cluster-admins",))
    for name in cr.CHAINED:  # the leaf, then the cross-signed CA while there is one
        chained = cr.certificates(data[f"{name}.crt"])[0] + data.get(cr.CROSS, b"")
        if data[f"{name}.crt"] != chained:
            data[f"{name}.crt"] = chained
            issued.setdefault(name, "chain changed")
    leaf("front-proxy-client", front_proxy_ca, "front-proxy-client", pki.Usage.CLIENT)
    if not existing.get("sa.key") or not existing.get("sa.pub"):
        key = pki.new_key(algorithm)
        data["sa.key"], data["sa.pub"] = pki.key_pem(key), pki.public_key_pem(key)
        issued["sa"] = "missing"
    return Plan(data, issued)
