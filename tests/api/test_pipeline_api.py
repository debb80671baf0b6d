"""The reconcile pipeline against a real API server, with only the datastore faked (its
drivers are tested on the real servers in tests/datastore): no DDL on routine reconciles, the
first status before any key, a refused tenant that never touches the holder's data, and a
reconcile deadline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Secret

from haku.api.resources import TenantControlPlane
from haku.controller.config import OperatorConfig
from haku.controller.events import EventRecorder
from haku.controller.tenant import TenantReconciler
from haku.render.pki import KeyAlgorithm
from tests.fake_datastores import CountingDriver
from tests.kube import conditions_of

NS = "pipeline"
DS = "fake-pipeline"


def tcp(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "haku.dev/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"dataStore": DS, "kubernetes": {"version": "v1.37.2"},
                     "controlPlane": {"deployment": {"replicas": 1},
                                      "service": {"serviceType": "ClusterIP"}}, **spec}}


def reconciler(client: AsyncClient, **config: Any) -> TenantReconciler:
    return TenantReconciler(client, OperatorConfig(key_algorithm=KeyAlgorithm.ECDSA_P256,
                                                   **config), EventRecorder(client))


async def test_routine_reconciles_run_no_ddl(client: AsyncClient,
                                             fake: CountingDriver) -> None:
    await client.apply(from_dict(tcp("routine")), force=True)
    r = reconciler(client)
    for _ in range(3):
        await r.reconcile((NS, "routine"))
    assert len(fake.ensured) == 1  # provisioned once; the checksum held since
    assert fake.verified == 0  # confirmed by the ensure itself, within verify_every
    conds = await conditions_of(client, NS, "routine")
    assert conds["DataStoreReady"]["status"] == "True"

    # A restarted operator knows nothing: one cheap read-only check, still no DDL.
    again = reconciler(client)
    await again.reconcile((NS, "routine"))
    assert (len(fake.ensured), fake.verified) == (1, 1)

    # The space vanished behind Haku's back: the check fails, provisioning runs again.
    fake.present.clear()
    later = reconciler(client, verify_every=0.0)
    await later.reconcile((NS, "routine"))
    assert len(fake.ensured) == 2

    # A rotated password (the Secret deleted) changes the checksum: provisioned again.
    await client.delete(Secret, "routine-datastore-password", namespace=NS)
    await later.reconcile((NS, "routine"))
    assert len(fake.ensured) == 3
    assert fake.ensured[2].password != fake.ensured[1].password
    for r_ in (r, again, later):
        await r_.events.flush()
        await r_.close()


async def test_the_first_status_comes_before_any_key(client: AsyncClient,
                                                     fake: CountingDriver) -> None:
    fake.ensure_gate = asyncio.Event()  # provisioning hangs until released
    await client.apply(from_dict(tcp("early")), force=True)
    r = reconciler(client)
    running = asyncio.create_task(r.reconcile((NS, "early")))
    try:
        for _ in range(100):
            got = (await client.get(TenantControlPlane, "early", namespace=NS)).to_dict()
            if got.get("status"):
                break
            await asyncio.sleep(0.05)
        status = got["status"]
        assert status["kubernetesResources"]["version"]["status"] == "Provisioning"
        conds = {c["type"]: c for c in status["conditions"]}
        assert conds["Ready"]["reason"] == "Provisioning"
        assert all(c["status"] == "Unknown" for t, c in conds.items() if t != "Ready")
        with pytest.raises(ApiError) as none:  # no key generated yet
            await client.get(Secret, "early-pki", namespace=NS)
        assert none.value.status.code == 404
    finally:
        fake.ensure_gate.set()
        await running
        await r.events.flush()
        await r.close()
    await client.get(Secret, "early-pki", namespace=NS)  # then the keys come


async def test_a_refused_tenant_names_the_holder_and_its_delete_touches_nothing(
        client: AsyncClient, fake: CountingDriver) -> None:
    holder = await client.apply(from_dict(tcp("holder", dataStoreSchema="shared")),
                                force=True)
    await client.apply(from_dict(tcp("late", dataStoreSchema="shared")), force=True)
    fake.refuse = holder.metadata.uid
    r = reconciler(client)
    await r.reconcile((NS, "late"))
    conds = await conditions_of(client, NS, "late")
    assert conds["DataStoreReady"]["reason"] == "SchemaInUse"
    assert f"TenantControlPlane {NS}/holder" in conds["DataStoreReady"]["message"]
    got = (await client.get(TenantControlPlane, "late", namespace=NS)).to_dict()
    assert "storage" not in got["status"]  # nothing provisioned, nothing pinned

    await client.delete(TenantControlPlane, "late", namespace=NS)
    await r.reconcile((NS, "late"))
    assert fake.deleted == []  # never provisioned: its finalizer drops nothing
    with pytest.raises(ApiError) as gone:
        await client.get(TenantControlPlane, "late", namespace=NS)
    assert gone.value.status.code == 404
    await r.events.flush()
    await r.close()


async def test_a_reconcile_that_overruns_its_deadline_stops_and_says_where(
        client: AsyncClient, fake: CountingDriver) -> None:
    fake.ensure_gate = asyncio.Event()  # never set: provisioning hangs
    await client.apply(from_dict(tcp("slow")), force=True)
    r = reconciler(client, reconcile_deadline=1.0)
    started = asyncio.get_running_loop().time()
    result = await r.reconcile((NS, "slow"))
    assert asyncio.get_running_loop().time() - started < 10
    assert result.requeue_after is not None
    conds = await conditions_of(client, NS, "slow")
    assert conds["DataStoreReady"]["reason"] == "Timeout"
    assert "datastore" in conds["DataStoreReady"]["message"]
    await r.events.flush()
    await r.close()


async def test_a_foreign_object_of_a_tenants_name_is_never_taken_over(
        client: AsyncClient, fake: CountingDriver) -> None:
    from lightkube.resources.core_v1 import Service

    mine = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "squat-pki", "namespace": NS},
            "stringData": {"hello": "not Haku's"}}
    await client.create(Secret.from_dict(mine))  # type: ignore[attr-defined]
    await client.apply(from_dict(tcp("squat")), force=True)
    r = reconciler(client)
    await r.reconcile((NS, "squat"))
    conds = await conditions_of(client, NS, "squat")
    assert conds["CertificatesReady"]["reason"] == "NameConflict"
    assert f"Secret {NS}/squat-pki" in conds["CertificatesReady"]["message"]
    assert conds["Ready"]["reason"] == "NameConflict"
    kept = await client.get(Secret, "squat-pki", namespace=NS)
    assert set(kept.data or {}) == {"hello"}  # untouched: no certificate written into it
    assert not kept.metadata.ownerReferences

    # A foreign Service is left alone the same way (before the certificates step).
    await client.create(Service.from_dict({  # type: ignore[attr-defined]
        "metadata": {"name": "squat2", "namespace": NS},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "theirs"}}}))
    await client.apply(from_dict(tcp("squat2")), force=True)
    await r.reconcile((NS, "squat2"))
    conds = await conditions_of(client, NS, "squat2")
    assert conds["ControlPlaneAvailable"]["reason"] == "NameConflict"
    svc = await client.get(Service, "squat2", namespace=NS)
    assert svc.spec.selector == {"app": "theirs"} and not svc.metadata.ownerReferences

    # Deleting the tenants leaves both objects where they were.
    for name in ("squat", "squat2"):
        await client.delete(TenantControlPlane, name, namespace=NS)
        await r.reconcile((NS, name))
    await client.get(Secret, "squat-pki", namespace=NS)
    await client.get(Service, "squat2", namespace=NS)
    await client.delete(Secret, "squat-pki", namespace=NS)
    await client.delete(Service, "squat2", namespace=NS)
    await r.events.flush()
    await r.close()


async def test_super_admin_never_reaches_the_user_facing_secret(
        client: AsyncClient, fake: CountingDriver) -> None:
    import base64

    import yaml

    await client.apply(from_dict(tcp("split")), force=True)
    r = reconciler(client)
    await r.reconcile((NS, "split"))
    status = (await client.get(TenantControlPlane, "split", namespace=NS)).to_dict()["status"]
    user_facing = await client.get(Secret, status["kubeconfig"]["admin"]["secretName"],
                                   namespace=NS)
    assert set(user_facing.data or {}) == {"admin.conf"}
    admin = yaml.safe_load(base64.b64decode(user_facing.data["admin.conf"]))
    assert admin["users"][0]["name"] == "kubernetes-admin"
    internal = await client.get(Secret, "split-kubeconfigs", namespace=NS)
    assert set(internal.data or {}) == {"controller-manager.conf", "scheduler.conf",
                                        "super-admin.conf"}
    # An older Haku's Secret that still holds super-admin.conf loses it at the next pass.
    legacy = dict(user_facing.data or {}) | {"super-admin.conf": internal.data[
        "super-admin.conf"]}
    await client.apply(Secret.from_dict({  # type: ignore[attr-defined]
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": user_facing.metadata.name, "namespace": NS}, "data": legacy}),
        field_manager="haku", force=True)  # as older Haku applied it
    await r.reconcile((NS, "split"))
    again = await client.get(Secret, user_facing.metadata.name, namespace=NS)
    assert set(again.data or {}) == {"admin.conf"}
    await r.events.flush()
    await r.close()
