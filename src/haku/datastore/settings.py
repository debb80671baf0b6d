"""A DataStore spec with every ContentRef resolved to bytes: what a driver connects with.

Secrets are read through an injected reader, so this stays testable without a cluster.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from haku.api.datastore import ContentRef, DataStoreSpec
from haku.datastore.base import DataStoreError

SecretReader = Callable[[str, str], Awaitable[Mapping[str, bytes] | None]]


class MissingSecret(DataStoreError):
    reason = "SecretNotFound"


@dataclass(frozen=True)
class Settings:
    name: str
    driver: str
    endpoints: tuple[str, ...]
    username: str | None = None
    password: str | None = None
    ca_cert: bytes | None = None
    ca_key: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None

    def __repr__(self) -> str:  # never print credentials
        return f"Settings(name={self.name!r}, driver={self.driver!r}, endpoints={self.endpoints})"


async def _value(ref: ContentRef | None, where: str, read: SecretReader) -> bytes | None:
    if ref is None:
        return None
    if ref.content is not None:
        return ref.content
    assert ref.secret is not None
    s = ref.secret
    data = await read(s.namespace, s.name)
    if data is None:
        raise MissingSecret(f"{where}: Secret {s.namespace}/{s.name} does not exist")
    if s.key not in data:
        raise MissingSecret(f"{where}: Secret {s.namespace}/{s.name} has no key {s.key!r}")
    return data[s.key]


def _text(value: bytes | None, where: str) -> str | None:
    if value is None:
        return None
    try:
        return value.decode().strip("\n")
    except UnicodeDecodeError as e:
        raise DataStoreError(f"{where} is not UTF-8 text") from e


async def resolve(spec: DataStoreSpec, read: SecretReader) -> Settings:
    return Settings(
        name=spec.name,
        driver=spec.driver,
        endpoints=spec.endpoints,
        username=_text(await _value(spec.username, "basicAuth.username", read),
                       "basicAuth.username"),
        password=_text(await _value(spec.password, "basicAuth.password", read),
                       "basicAuth.password"),
        ca_cert=await _value(spec.ca_certificate, "tlsConfig.certificateAuthority.certificate",
                             read),
        ca_key=await _value(spec.ca_private_key, "tlsConfig.certificateAuthority.privateKey",
                            read),
        client_cert=await _value(spec.client_certificate,
                                 "tlsConfig.clientCertificate.certificate", read),
        client_key=await _value(spec.client_private_key,
                                "tlsConfig.clientCertificate.privateKey", read),
    )
