"""Node-tier fixtures: the operator running in-process against the full local cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from lightkube.codecs import from_dict

from haku.api.resources import TenantControlPlane
from haku.controller import operator
from haku.controller.tenant import OperatorConfig
from haku.dev import samples
from haku.dev.cluster import DevCluster
from haku.render.pki import KeyAlgorithm

from .helpers import client


@pytest.fixture(scope="module")
async def running_operator(node_handle: Any, request: pytest.FixtureRequest,
                           ) -> AsyncIterator[DevCluster]:
    """The cluster with the operator running in-process; stopped before the module ends, so
    nothing talks to the cluster's addresses once a later test takes it down. TCPs in the
    module's ``NS`` are deleted (and finalized by the operator) first."""
    ns = getattr(request.module, "NS", "tenants")
    cluster = node_handle.ensure_up()
    stop = asyncio.Event()
    options = operator.RunOptions(kubeconfig=cluster.layout.admin_kubeconfig, workers=4,
                                  resync=30.0, metrics_bind_address="0",
                                  health_probe_bind_address="0")
    config = OperatorConfig(key_algorithm=KeyAlgorithm.ECDSA_P256)
    c = client(cluster)
    await operator.install_crds(c, options.namespace)  # as the operator does, idempotent
    task = asyncio.create_task(operator.run(options, config, stop))
    for obj in samples.datastore_objects(cluster.layout):
        await c.apply(from_dict(obj), force=True)
    await c.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": ns}}))
    await c.close()
    yield cluster
    c = client(cluster)
    async for tcp in c.list(TenantControlPlane, namespace=ns):
        await c.delete(TenantControlPlane, tcp.metadata.name, namespace=ns)
    for _ in range(60):  # let the operator finalize them while it still runs
        if not [t async for t in c.list(TenantControlPlane, namespace=ns)]:
            break
        await asyncio.sleep(0.5)
    await c.close()
    stop.set()
    await asyncio.wait_for(task, 60)
