"""Small readers for core objects (the CRDs' resource classes live in haku.api.resources,
re-exported here)."""

from __future__ import annotations

import base64
from collections.abc import Mapping

from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Secret

from haku.api.resources import FIELD_MANAGER, GROUP, VERSION, DataStore, TenantControlPlane
from haku.datastore.settings import SecretReader

__all__ = ["FIELD_MANAGER", "GROUP", "VERSION", "DataStore", "TenantControlPlane",
           "secret_reader"]


def secret_reader(client: AsyncClient) -> SecretReader:
    async def read(namespace: str, name: str) -> Mapping[str, bytes] | None:
        try:
            secret = await client.get(Secret, name, namespace=namespace)
        except ApiError as e:
            if e.status.code == 404:
                return None
            raise
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    return read
