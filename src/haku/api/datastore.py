"""The DataStore API as typed values, parsed from the object the API server returns."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

DRIVERS = ("etcd", "MySQL", "PostgreSQL")


class SpecError(ValueError):
    """A spec the API server accepted but Haku cannot use (the CRD rules catch most)."""


@dataclass(frozen=True)
class SecretKeyRef:
    namespace: str
    name: str
    key: str


@dataclass(frozen=True)
class ContentRef:
    """Either inline bytes or a Secret key; inline wins, as in Kamaji."""

    content: bytes | None = None
    secret: SecretKeyRef | None = None

    @classmethod
    def parse(cls, data: dict[str, Any] | None, where: str) -> ContentRef | None:
        if data is None:
            return None
        content = None
        if data.get("content") is not None:
            try:
                content = base64.b64decode(data["content"], validate=True)
            except (binascii.Error, ValueError) as e:
                raise SpecError(f"{where}.content is not valid base64") from e
        secret = None
        if ref := data.get("secretReference"):
            secret = SecretKeyRef(ref["namespace"], ref["name"], ref["keyPath"])
        if content is None and secret is None:
            raise SpecError(f"{where} needs content or secretReference")
        return cls(content, secret)


@dataclass(frozen=True)
class DataStoreSpec:
    name: str
    driver: str
    endpoints: tuple[str, ...]
    username: ContentRef | None = None
    password: ContentRef | None = None
    ca_certificate: ContentRef | None = None
    ca_private_key: ContentRef | None = None
    client_certificate: ContentRef | None = None
    client_private_key: ContentRef | None = None

    @classmethod
    def parse(cls, obj: dict[str, Any]) -> DataStoreSpec:
        name = obj["metadata"]["name"]
        spec = obj.get("spec") or {}
        driver = spec.get("driver")
        if driver not in DRIVERS:
            raise SpecError(f"DataStore {name}: driver {driver!r} is not one of {DRIVERS}")
        endpoints = tuple(spec.get("endpoints") or ())
        if not endpoints:
            raise SpecError(f"DataStore {name}: endpoints is empty")
        basic = spec.get("basicAuth") or {}
        tls = spec.get("tlsConfig") or {}
        ca = tls.get("certificateAuthority") or {}
        client = tls.get("clientCertificate") or {}
        p = ContentRef.parse
        return cls(
            name=name,
            driver=driver,
            endpoints=endpoints,
            username=p(basic.get("username"), "basicAuth.username"),
            password=p(basic.get("password"), "basicAuth.password"),
            ca_certificate=p(ca.get("certificate"), "tlsConfig.certificateAuthority.certificate"),
            ca_private_key=p(ca.get("privateKey"), "tlsConfig.certificateAuthority.privateKey"),
            client_certificate=p(client.get("certificate"),
                                 "tlsConfig.clientCertificate.certificate"),
            client_private_key=p(client.get("privateKey"),
                                 "tlsConfig.clientCertificate.privateKey"),
        )
