"""Small helpers for tests that talk to a real API server."""

from __future__ import annotations

import asyncio
from typing import Any

from lightkube import ApiError, AsyncClient


async def list_when_served(client: AsyncClient, kind: Any, namespace: str,
                           tries: int = 50) -> list[Any]:
    """Every ``kind`` in ``namespace``, retrying the 429 "storage is (re)initializing" an API
    server answers for a while right after its CRD was updated."""
    for _ in range(tries - 1):
        try:
            return [o async for o in client.list(kind, namespace=namespace)]
        except ApiError as e:
            if e.status.code != 429:
                raise
            await asyncio.sleep(0.2)
    return [o async for o in client.list(kind, namespace=namespace)]
