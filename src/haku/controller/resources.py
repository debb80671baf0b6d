"""lightkube resource classes for Haku's CRDs, and small readers for core objects."""

from __future__ import annotations

import base64
from collections.abc import Mapping

from lightkube import ApiError, AsyncClient
from lightkube.generic_resource import create_global_resource
from lightkube.resources.core_v1 import Secret

from haku.datastore.settings import SecretReader

GROUP, VERSION = "haku.dev", "v1alpha1"
FIELD_MANAGER = "haku"

DataStore = create_global_resource(GROUP, VERSION, "DataStore", "datastores")


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
