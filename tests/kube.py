"""Small helpers for tests that talk to a real API server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.resources.core_v1 import Namespace
from lightkube.types import PatchType

from haku.api.resources import TenantControlPlane
from haku.controller.operator import install_crds
from haku.dev.cluster import DevCluster


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


@contextlib.asynccontextmanager
async def namespace_client(cluster: DevCluster, namespace: str) -> AsyncIterator[AsyncClient]:
    """A client of ``cluster`` with Haku's CRDs installed and ``namespace`` made; on the way out
    every TenantControlPlane there is unfinalized and deleted (the tests run no operator)."""
    c = AsyncClient(KubeConfig.from_file(cluster.layout.admin_kubeconfig),
                    field_manager="haku-test", trust_env=False)
    await install_crds(c, "haku-system")
    await c.apply(Namespace.from_dict({"metadata": {"name": namespace}}))  # type: ignore[attr-defined]
    try:
        yield c
        for t in await list_when_served(c, TenantControlPlane, namespace):
            await c.patch(TenantControlPlane, t.metadata.name, {"metadata": {"finalizers": []}},
                          namespace=namespace, patch_type=PatchType.MERGE)
            await c.delete(TenantControlPlane, t.metadata.name, namespace=namespace)
    finally:
        await c.close()


async def conditions_of(client: AsyncClient, namespace: str,
                        name: str) -> dict[str, dict[str, Any]]:
    """The Conditions of TenantControlPlane ``namespace/name``, by type."""
    got = (await client.get(TenantControlPlane, name, namespace=namespace)).to_dict()
    return {c["type"]: c for c in (got.get("status") or {}).get("conditions") or []}
