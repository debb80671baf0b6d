"""Deleting a DataStore loses nothing: it stays, with a Condition naming its tenants, while
any TenantControlPlane uses it, and no new tenant is provisioned on it meanwhile. (Real API
server; the DataStore points nowhere, so its check says Unreachable, which does not matter.)"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict

from haku.api.resources import DataStore, TenantControlPlane
from haku.controller.datastore_status import FINALIZER, reconcile_datastore
from haku.controller.events import EventRecorder
from haku.controller.operator import install_crds
from haku.controller.tenant import OperatorConfig, TenantReconciler
from haku.dev.cluster import DevCluster
from tests.kube import list_when_served

NAME = "doomed-ds"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
async def client(api_cluster: DevCluster) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(KubeConfig.from_file(api_cluster.layout.admin_kubeconfig),
                    field_manager="haku-test", trust_env=False)
    await install_crds(c, "haku-system")
    await c.apply(from_dict({
        "apiVersion": "haku.dev/v1alpha1", "kind": "DataStore", "metadata": {"name": NAME},
        "spec": {"driver": "PostgreSQL", "endpoints": ["127.0.0.1:1"],
                 "basicAuth": {"username": {"content": b64("u")},
                               "password": {"content": b64("p")}}}}), force=True)
    yield c
    for t in await list_when_served(c, TenantControlPlane, "default"):
        await c.patch(TenantControlPlane, t.metadata.name, {"metadata": {"finalizers": []}},
                      namespace="default", patch_type=_merge())
        await c.delete(TenantControlPlane, t.metadata.name, namespace="default")
    try:
        await c.patch(DataStore, NAME, {"metadata": {"finalizers": []}}, patch_type=_merge())
        await c.delete(DataStore, NAME)
    except ApiError:
        pass
    await c.close()


def _merge() -> Any:
    from lightkube.types import PatchType
    return PatchType.MERGE


async def test_a_datastore_in_use_stays_until_its_last_tenant_is_gone(
        client: AsyncClient) -> None:
    await reconcile_datastore(client, NAME, [])
    got = await client.get(DataStore, NAME)
    assert FINALIZER in (got.metadata.finalizers or [])

    await client.delete(DataStore, NAME)
    status = await reconcile_datastore(client, NAME, ["default/a", "team/b"])
    assert status is not None
    got = await client.get(DataStore, NAME)  # still there
    assert got.metadata.deletionTimestamp is not None
    deleting = {c["type"]: c for c in status["conditions"]}["Deleting"]
    assert deleting["reason"] == "InUse"
    assert "default/a" in deleting["message"] and "team/b" in deleting["message"]

    assert await reconcile_datastore(client, NAME, []) is not None  # the last one went
    with pytest.raises(ApiError) as gone:
        await client.get(DataStore, NAME)
    assert gone.value.status.code == 404
    assert await reconcile_datastore(client, NAME, []) is None


async def test_no_new_tenant_goes_onto_a_datastore_being_deleted(client: AsyncClient) -> None:
    await reconcile_datastore(client, NAME, [])
    await client.delete(DataStore, NAME)
    await client.apply(from_dict({
        "apiVersion": "haku.dev/v1alpha1", "kind": "TenantControlPlane",
        "metadata": {"name": "late", "namespace": "default"},
        "spec": {"dataStore": NAME, "kubernetes": {"version": "v1.37.2"},
                 "controlPlane": {"service": {"serviceType": "ClusterIP"}}}}), force=True)
    recorder = EventRecorder(client)
    r = TenantReconciler(client, OperatorConfig(), recorder)
    try:
        result = await r.reconcile(("default", "late"))
    finally:
        await recorder.flush()
        await r.close()
    assert result.requeue_after is not None
    got = (await client.get(TenantControlPlane, "late", namespace="default")).to_dict()
    conds = {c["type"]: c for c in got["status"]["conditions"]}
    assert conds["DataStoreReady"]["reason"] == "DataStoreDeleting"
    assert "storage" not in got["status"]  # nothing provisioned, nothing pinned
