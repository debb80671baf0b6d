"""Helpers for node-tier tests: a lightkube client and the cluster's own kubectl."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

from lightkube import AsyncClient, KubeConfig

from haku.dev.cluster import DevCluster


def client(cluster: DevCluster) -> AsyncClient:
    return AsyncClient(KubeConfig.from_file(cluster.layout.admin_kubeconfig),
                       field_manager="haku-test")


def kubectl(cluster: DevCluster, *args: str, kubeconfig: Path | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    config = kubeconfig or cluster.layout.admin_kubeconfig
    return subprocess.run([str(cluster.layout.bin / "kubectl"), f"--kubeconfig={config}", *args],
                          capture_output=True, text=True, check=check, timeout=60)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.5)
