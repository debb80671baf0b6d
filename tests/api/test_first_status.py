"""A new tenant's first status, written straight from the watch event (not once a worker is
free), over the version the watch saw only: it never overwrites what a reconcile wrote since."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.codecs import from_dict

from haku.api.resources import TenantControlPlane
from haku.controller.config import OperatorConfig
from haku.controller.events import EventRecorder
from haku.controller.tenant import TenantReconciler
from haku.dev.cluster import DevCluster
from tests.kube import namespace_client

NS = "first-status"


@pytest.fixture
async def client(api_cluster: DevCluster) -> AsyncIterator[AsyncClient]:
    async with namespace_client(api_cluster, NS) as c:
        yield c


async def settled(r: TenantReconciler) -> None:
    await asyncio.gather(*r._announce_tasks)


async def status_of(client: AsyncClient, name: str) -> dict[str, Any]:
    got = (await client.get(TenantControlPlane, name, namespace=NS)).to_dict()
    return got.get("status") or {}


async def test_first_status_from_the_watch_never_overwrites_a_later_one(
        client: AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    await client.apply(from_dict({
        "apiVersion": "haku.dev/v1alpha1", "kind": "TenantControlPlane",
        "metadata": {"name": "new", "namespace": NS},
        "spec": {"dataStore": "nowhere", "kubernetes": {"version": "v1.37.2"},
                 "controlPlane": {"deployment": {"replicas": 1},
                                  "service": {"serviceType": "ClusterIP"}}}}), force=True)
    seen = await client.get(TenantControlPlane, "new", namespace=NS)  # as the watch saw it
    r = TenantReconciler(client, OperatorConfig(), EventRecorder(client))

    r.announce(seen)
    r.announce(seen)  # one write per tenant at a time
    assert len(r._announce_tasks) == 1
    await settled(r)
    status = await status_of(client, "new")
    assert status["kubernetesResources"]["version"]["status"] == "Provisioning"
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "Provisioning")

    # A reconcile wrote its status meanwhile; the watch event seen before it comes late.
    await r._apply_status("new", NS, {**status, "controlPlaneEndpoint": "10.0.0.1:6443"})
    r.announce(seen)
    await settled(r)  # refused (409): nothing logged as a failure, nothing overwritten
    assert (await status_of(client, "new"))["controlPlaneEndpoint"] == "10.0.0.1:6443"
    assert "first status not written" not in caplog.text  # a 409, nothing else
    await r.close()
