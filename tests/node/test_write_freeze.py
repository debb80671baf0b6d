"""A write freeze (spec.writePermissions, issue 15): the tenant's own API server refuses the
blocked writes with a message naming the TenantControlPlane, reads go on, the joined worker
stays Ready (its leases and status updates are not writes the freeze stops), the status says
WriteLimited, and lifting it lets writes in again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.codecs import from_dict
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap, Event, Node
from lightkube.types import PatchType

from haku.api.resources import TenantControlPlane
from haku.dev import samples
from haku.dev import worker as workers
from haku.dev.cluster import DevCluster
from haku.dev.versions import KUBERNETES_VERSION
from haku.tenant import access

from .helpers import add_worker, client, eventually, wait_tenant_ready

NS = "freezes"
TENANT = "freeze"


@dataclass
class Setup:
    cluster: DevCluster
    tenant: access.TenantAccess
    node: str


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c["type"] == ctype), None)


@pytest.fixture(scope="module")
async def setup(running_operator: DevCluster) -> AsyncIterator[Setup]:
    cluster = running_operator
    c = client(cluster)
    try:
        doc = samples.tenant_control_plane(TENANT, NS, "dev-etcd", KUBERNETES_VERSION,
                                           replicas=1, service_type="NodePort", port=None,
                                           addons=True)
        await c.apply(from_dict(doc), force=True)
        tenant = await wait_tenant_ready(c, NS, TENANT)
        result = await add_worker(cluster, tenant)
        yield Setup(cluster, tenant, result.worker.node_name)
    finally:
        await c.close()
        await asyncio.to_thread(workers.remove_all, cluster.layout)


async def test_a_freeze_refuses_writes_keeps_reads_and_the_node(setup: Setup) -> None:
    c = client(setup.cluster)
    t = setup.tenant.client()
    try:
        await t.create(ConfigMap(metadata=ObjectMeta(name="before", namespace="default"),
                                 data={"k": "v"}))
        await c.patch(TenantControlPlane, TENANT, {"spec": {"writePermissions": {
            "blockCreation": True, "blockUpdate": True, "blockDeletion": True}}},
            namespace=NS, patch_type=PatchType.MERGE)

        async def frozen() -> bool:
            obj = (await c.get(TenantControlPlane, TENANT, namespace=NS)).to_dict()
            found = condition(obj, "WriteLimited")
            return bool(found and found["status"] == "True") and \
                obj["status"]["kubernetesResources"]["version"]["status"] == "WriteLimited"

        await eventually(frozen, 60, "WriteLimited")
        refused: list[str] = []
        writes = [
            ("create", t.create(ConfigMap(metadata=ObjectMeta(name="during",
                                                              namespace="default")))),
            ("update", t.patch(ConfigMap, "before", {"data": {"k": "w"}},
                               namespace="default", patch_type=PatchType.MERGE)),
            ("delete", t.delete(ConfigMap, "before", namespace="default")),
        ]
        for what, call in writes:
            with pytest.raises(ApiError) as e:
                await call
            assert e.value.status.code == 403, (what, e.value.status)
            refused.append(e.value.status.message or "")
        for message in refused:
            assert f"TenantControlPlane {NS}/{TENANT} spec.writePermissions" in message, message
            assert "blockCreation, blockUpdate, blockDeletion" in message
        # Reads work; so do leases (what node heartbeats and leader election write).
        cm = await t.get(ConfigMap, "before", namespace="default")
        assert (cm.data or {}).get("k") == "v"
        lease = Lease(metadata=ObjectMeta(name="freeze-probe", namespace="default"))
        await t.create(lease)
        await t.delete(Lease, "freeze-probe", namespace="default")
        # The worker keeps its heartbeats for longer than the node monitor's grace period
        # would forgive a missed lease renewal (40 s).
        started = time.monotonic()
        while time.monotonic() - started < 50:
            node = await t.get(Node, setup.node)
            ready = next(x for x in node.status.conditions or [] if x.type == "Ready")
            assert ready.status == "True", ready
            await asyncio.sleep(5)
        # Lifted: writes come back, the Condition goes, the status is Ready again.
        await c.patch(TenantControlPlane, TENANT, {"spec": {"writePermissions": None}},
                      namespace=NS, patch_type=PatchType.MERGE)

        async def writable() -> bool:
            obj = (await c.get(TenantControlPlane, TENANT, namespace=NS)).to_dict()
            return condition(obj, "WriteLimited") is None and \
                obj["status"]["kubernetesResources"]["version"]["status"] == "Ready"

        await eventually(writable, 60, "the freeze lifted")
        await t.create(ConfigMap(metadata=ObjectMeta(name="after", namespace="default")))
        await t.delete(ConfigMap, "before", namespace="default")
        reasons = [e.reason async for e in c.list(
            Event, namespace=NS, fields={"involvedObject.name": TENANT})]
        assert "WritesAllowed" in reasons
    finally:
        await t.close()
        await c.close()
