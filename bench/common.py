"""What the node benchmarks share: a fresh local cluster with the operator as its own process
(``haku operator run``), the CRDs, the dev DataStores and a namespace; all of it torn down
(``haku dev down --purge``) when done."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from lightkube import AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Node

from haku.controller.operator import install_crds
from haku.dev import samples
from haku.dev.cluster import DevCluster
from haku.dev.layout import Layout


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class NodeReadyPolls:
    """Polls a tenant's Node once a second until stopped; ``not_ready`` counts the polls that
    found it not Ready (a poll without an answer is the client loop's to count)."""

    def __init__(self, tenant_client: AsyncClient, node: str) -> None:
        self.client = tenant_client
        self.node = node
        self.not_ready = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                n = await self.client.get(Node, self.node)
                if not any(c.type == "Ready" and c.status == "True"
                           for c in (n.status.conditions if n.status else None) or []):
                    self.not_ready += 1
            except Exception as e:  # logged; an unanswered poll is the client loop's to count
                log(f"  node poll: {e}")
            await asyncio.sleep(1.0)


@asynccontextmanager
async def operator_cluster(state_dir: Path, namespace: str,
                           before_operator: Callable[[DevCluster], None] = lambda _: None,
                           ) -> AsyncIterator[tuple[DevCluster, AsyncClient]]:
    """The cluster at ``state_dir`` (purged first) and an admin client; ``before_operator``
    runs once the cluster is up (images to import, say)."""
    cluster = DevCluster(Layout(state_dir=state_dir), printer=log)
    cluster.down(purge=True)
    cluster.up()
    lay = cluster.layout
    try:
        before_operator(cluster)
        proc = subprocess.Popen(
            [sys.executable, "-m", "haku", "operator", "run",
             f"--kubeconfig={lay.admin_kubeconfig}", "--lease-duration=5"],
            stdout=(lay.logs / "bench-operator.log").open("wb"), stderr=subprocess.STDOUT)
        client = AsyncClient(KubeConfig.from_file(lay.admin_kubeconfig), field_manager="bench",
                             trust_env=False)
        try:
            await install_crds(client, "haku-system")
            for obj in samples.datastore_objects(lay):
                await client.apply(from_dict(obj), force=True)
            await client.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": namespace}}), force=True)
            yield cluster, client
        finally:
            await client.close()
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    finally:
        cluster.down(purge=True)
