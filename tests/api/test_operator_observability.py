"""The operator's metrics and probes, with the operator running in-process against the
API-only tier (no pods run there, so tenants stay Provisioning).

Tenants on DataStore ``missing-ds`` (which does not exist) stop at DataStoreReady=False; tenants
on ``fake-ds`` get an in-memory stand-in for the datastore driver (the only thing faked), so
the real pipeline goes on to issue certificates, apply the Deployment and write status.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Secret

from haku.api.resources import TenantControlPlane
from haku.controller import operator
from haku.controller.metrics import certificate_expiries
from haku.controller.telemetry import Telemetry
from haku.controller.tenant import OperatorConfig
from haku.datastore import Tenant, TenantConnection
from haku.dev.cluster import DevCluster
from haku.render.pki import KeyAlgorithm
from tests.fake_datastores import use_fake_datastores
from tests.observability import Samples, http, matching, samples, value

NS = "observability"
MISSING, FAKE = "missing-ds", "fake-ds"


class FakeDriver:
    """Stands in for a SQL DataStore: remembers tenants, hands out a kine endpoint."""

    driver = "fake"

    def __init__(self) -> None:
        self.tenants: set[str] = set()

    async def ensure_tenant(self, tenant: Tenant) -> None:
        await asyncio.sleep(0.01)
        self.tenants.add(tenant.schema)

    async def delete_tenant(self, tenant: Tenant) -> None:
        self.tenants.discard(tenant.schema)

    def physical_names(self, tenant: Tenant) -> tuple[str, str]:
        return tenant.schema, tenant.user

    def tenant_connection(self, tenant: Tenant) -> TenantConnection:
        return TenantConnection("fake", kine_endpoint=f"postgres://fake/{tenant.schema}",
                                files={"ca.crt": b"not a real CA"})


def tcp(name: str, datastore: str) -> dict[str, Any]:
    return {"apiVersion": "haku.dev/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"dataStore": datastore, "kubernetes": {"version": "v1.37.2"},
                     "controlPlane": {"deployment": {"replicas": 1},
                                      "service": {"serviceType": "ClusterIP"}}}}


class Running:
    def __init__(self, telemetry: Telemetry, client: AsyncClient, fake: FakeDriver) -> None:
        self.telemetry, self.client, self.fake = telemetry, client, fake

    async def scrape(self) -> Samples:
        status, _, body = await http(self.telemetry.port("metrics"), "/metrics")
        assert status == 200
        return samples(body.decode())

    async def until(self, check: Callable[[Samples], bool], timeout: float = 30.0) -> Samples:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            got = await self.scrape()
            if check(got):
                return got
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail("metrics never matched; last scrape:\n" + "\n".join(
                    f"{n} {dict(lbl)} {v}" for (n, lbl), v in sorted(
                        got.items(), key=str) if n.startswith("haku_")))
            await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def running(api_cluster: DevCluster) -> AsyncIterator[Running]:
    fake = FakeDriver()
    client = AsyncClient(KubeConfig.from_file(api_cluster.layout.admin_kubeconfig),
                         field_manager="haku-test", trust_env=False)
    telemetry = Telemetry()
    stop = asyncio.Event()
    options = operator.RunOptions(kubeconfig=api_cluster.layout.admin_kubeconfig, workers=2,
                                  resync=30.0, lease_duration=3.0,
                                  identity="observability-test",
                                  metrics_bind_address="127.0.0.1:0",
                                  health_probe_bind_address="127.0.0.1:0")
    with pytest.MonkeyPatch.context() as mp:
        use_fake_datastores(mp, {FAKE: fake})
        task = asyncio.create_task(operator.run(
            options, OperatorConfig(key_algorithm=KeyAlgorithm.ECDSA_P256), stop, telemetry))
        await asyncio.wait_for(telemetry.serving.wait(), 60)
        await client.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": NS}}))
        yield Running(telemetry, client, fake)
        async for t in client.list(TenantControlPlane, namespace=NS):
            await client.delete(TenantControlPlane, t.metadata.name, namespace=NS)
        for _ in range(60):  # finalized by the operator while it still runs
            if not [t async for t in client.list(TenantControlPlane, namespace=NS)]:
                break
            await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(task, 60)
        assert not telemetry.servers  # the servers stopped with the operator
    await client.close()


async def test_healthz_and_readyz_once_running(running: Running) -> None:
    port = running.telemetry.port("health")
    assert port != running.telemetry.port("metrics")
    seen = set()
    for _ in range(150):  # starting (503), maybe a standby (200), watches starting (503),
        # then leading
        status, _, body = await http(port, "/readyz")
        seen.add((status, body))
        if body == b"leading\n":
            break
        await asyncio.sleep(0.1)
    assert (status, body) == (200, b"leading\n")
    assert seen <= {(503, b"installing CRDs\n"), (200, b"standby, waiting for the Lease\n"),
                    (503, b"leading, starting watches\n"), (200, b"leading\n")}, seen
    assert (await http(port, "/healthz"))[:3:2] == (200, b"ok\n")
    s = await running.scrape()  # both controllers' queues, once leading
    assert value(s, "haku_workqueue_depth", controller="tenantcontrolplane") is not None
    assert value(s, "haku_workqueue_depth", controller="datastore") is not None


async def test_tenant_gauge_follows_creates_and_deletes(running: Running) -> None:
    c = running.client
    for name in ("gone", "stays"):
        await c.apply(from_dict(tcp(name, MISSING)))

    def missing(n: float) -> Callable[[Samples], bool]:
        return lambda s: matching(s, "haku_tenant_control_planes", datastore=MISSING) == {
            frozenset({("status", "Provisioning"), ("datastore", MISSING)}): n}

    s = await running.until(missing(2.0))
    # What the gauge says is what was written to the objects.
    for name in ("gone", "stays"):
        obj = (await c.get(TenantControlPlane, name, namespace=NS)).to_dict()
        assert obj["status"]["kubernetesResources"]["version"]["status"] == "Provisioning"
        ds = next(x for x in obj["status"]["conditions"] if x["type"] == "DataStoreReady")
        assert (ds["status"], ds["reason"]) == ("False", "DataStoreNotFound")
    errors = value(s, "haku_reconcile_errors_total", controller="tenantcontrolplane",
                   reason="DataStoreNotFound")
    assert errors is not None and errors >= 2
    for step in ("total", "finalizer", "datastore", "status"):
        count = value(s, "haku_reconcile_duration_seconds_count",
                      controller="tenantcontrolplane", step=step)
        assert count is not None and count >= 2, step
    assert value(s, "haku_reconcile_duration_seconds_count", controller="tenantcontrolplane",
                 step="certificates") is None  # never got past the missing DataStore

    await c.delete(TenantControlPlane, "gone", namespace=NS)
    s = await running.until(missing(1.0))
    with pytest.raises(ApiError) as e:  # the finalizer came off: the object is gone
        for _ in range(50):
            await c.get(TenantControlPlane, "gone", namespace=NS)
            await asyncio.sleep(0.1)
    assert e.value.status.code == 404
    s = await running.scrape()  # the finalize step is observed once it returned
    assert value(s, "haku_tenant_control_planes", status="Provisioning",
                 datastore=MISSING) == 1.0
    finalized = value(s, "haku_reconcile_duration_seconds_count",
                      controller="tenantcontrolplane", step="cleanup-finalizer")
    assert finalized is not None and finalized >= 1


async def test_certificates_and_provisioning_of_a_tenant_past_its_datastore(
        running: Running) -> None:
    c = running.client
    await c.apply(from_dict(tcp("certs", FAKE)))

    def has_certs(s: Samples) -> bool:
        return len(matching(s, "haku_certificate_expiry_timestamp_seconds", namespace=NS,
                            name="certs")) == 5

    s = await running.until(has_certs)
    secret = await c.get(Secret, "certs-pki", namespace=NS)
    expected = certificate_expiries({k: base64.b64decode(v)
                                     for k, v in (secret.data or {}).items()})
    assert set(expected) == {"ca", "apiserver", "apiserver-kubelet-client", "front-proxy-ca",
                             "front-proxy-client"}
    assert {dict(lbl)["certificate"]: v for lbl, v in matching(
        s, "haku_certificate_expiry_timestamp_seconds", namespace=NS, name="certs").items()
    } == expected
    s = await running.until(lambda s: value(
        s, "haku_tenant_control_planes", status="Provisioning", datastore=FAKE) == 1.0)
    uid = (await c.get(TenantControlPlane, "certs", namespace=NS)).metadata.uid
    assert uid in running.fake.tenants  # dataStoreSchema defaults to the object's UID
    provisioned = value(s, "haku_datastore_provision_seconds_count", driver="fake")
    assert provisioned is not None and provisioned >= 1
    assert (value(s, "haku_datastore_provision_seconds_sum", driver="fake") or 0) >= \
        0.01 * provisioned  # the fake's own sleep is in it
    for step in ("service", "certificates", "deployment", "ingress", "apiserver",
                 "bootstrap"):
        count = value(s, "haku_reconcile_duration_seconds_count",
                      controller="tenantcontrolplane", step=step)
        assert count is not None and count >= 1, step

    await c.delete(TenantControlPlane, "certs", namespace=NS)
    await running.until(lambda s: not matching(
        s, "haku_certificate_expiry_timestamp_seconds", name="certs") and value(
        s, "haku_tenant_control_planes", status="Provisioning", datastore=FAKE) is None)
    assert uid not in running.fake.tenants  # the finalizer cleaned the datastore
