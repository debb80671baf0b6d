"""What the node benchmarks share: a fresh local cluster with the operator as its own process
(``haku operator run``), the CRDs, the dev DataStores and a namespace; all of it torn down
(``haku dev down --purge``) when done."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from lightkube import AsyncClient, KubeConfig
from lightkube.codecs import from_dict

from haku.controller.operator import install_crds
from haku.dev import samples
from haku.dev.cluster import DevCluster
from haku.dev.layout import Layout


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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
