"""Tenant datastore passwords: random, kept in a Secret, replaced only when asked.

The Secret is the source of truth: ensuring a tenant sets the database password to whatever
the Secret holds, so editing the Secret also rotates it.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Secret

from haku.controller.resources import FIELD_MANAGER

PASSWORD_KEY = "password"  # noqa: S105  (the key name, not a secret)


def new_password() -> str:
    """48 hex digits: safe in SQL literals, URLs and kine's DSN without escaping."""
    return secrets.token_hex(24)


async def ensure_password(
    client: AsyncClient,
    namespace: str,
    name: str,
    rotate: bool = False,
    labels: dict[str, str] | None = None,
    owner: dict[str, Any] | None = None,
) -> str:
    """The password in Secret ``namespace/name``, made (or replaced, if ``rotate``) as needed."""
    if not rotate:
        try:
            current = await client.get(Secret, name, namespace=namespace)
        except ApiError as e:
            if e.status.code != 404:
                raise
        else:
            value = (current.data or {}).get(PASSWORD_KEY)
            if value:
                return base64.b64decode(value).decode()
    password = new_password()
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {}}
    if owner:
        metadata["ownerReferences"] = [owner]
    await client.apply(from_dict({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata,
        "data": {PASSWORD_KEY: base64.b64encode(password.encode()).decode()},
    }), field_manager=FIELD_MANAGER, force=True)
    return password
