"""The operator's metrics: gauges computed from what the reconciler last saw, counters and
histograms fed by the runtime and the tenant pipeline, in a registry per operator."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from haku.api.conditions import Condition
from haku.controller import logs
from haku.controller.metrics import Metrics, certificate_expiries
from haku.controller.pipeline import Context
from haku.controller.runtime import Controller, Key, Result
from haku.controller.tenant import OperatorConfig, StepTimer, TenantReconciler
from haku.render import pki
from tests.observability import matching, samples, value


def scrape(m: Metrics) -> dict[Any, float]:
    ctype, body = m.exposition()
    assert ctype.startswith("text/plain")
    return samples(body.decode())


def test_certificate_expiries_reads_not_after_of_each_crt() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ca = pki.new_ca("kubernetes", pki.KeyAlgorithm.ECDSA_P256, timedelta(days=3650), now)
    leaf = pki.issue(ca, "kube-apiserver", pki.Usage.SERVER,
                     algorithm=pki.KeyAlgorithm.ECDSA_P256, valid_for=timedelta(days=365),
                     now=now)
    got = certificate_expiries({"ca.crt": ca.cert_pem, "ca.key": ca.key_pem,
                                "apiserver.crt": leaf.cert_pem, "broken.crt": b"nope",
                                "sa.pub": b"-----BEGIN PUBLIC KEY-----"})
    assert got == {"ca": (now + timedelta(days=3650)).timestamp(),
                   "apiserver": (now + timedelta(days=365)).timestamp()}


def test_tenant_gauge_counts_by_status_and_datastore_and_drops_deleted() -> None:
    m = Metrics()
    m.tenants.observe(("a", "t1"), "Provisioning", "dev-etcd")
    m.tenants.observe(("a", "t2"), "Provisioning", "dev-etcd")
    m.tenants.observe(("b", "t3"), "Ready", "dev-postgres")
    m.tenants.observe_certificates(("b", "t3"), {"ca": 2e9, "apiserver": 1.9e9})
    s = scrape(m)
    assert matching(s, "haku_tenant_control_planes") == {
        frozenset({("status", "Provisioning"), ("datastore", "dev-etcd")}): 2.0,
        frozenset({("status", "Ready"), ("datastore", "dev-postgres")}): 1.0}
    assert value(s, "haku_certificate_expiry_timestamp_seconds", namespace="b", name="t3",
                 certificate="apiserver") == 1.9e9
    m.tenants.observe(("a", "t2"), "Ready", "dev-etcd")  # a status change moves it
    m.tenants.forget(("b", "t3"))
    s = scrape(m)
    assert matching(s, "haku_tenant_control_planes") == {
        frozenset({("status", "Provisioning"), ("datastore", "dev-etcd")}): 1.0,
        frozenset({("status", "Ready"), ("datastore", "dev-etcd")}): 1.0}
    assert matching(s, "haku_certificate_expiry_timestamp_seconds") == {}


def test_registries_are_per_operator() -> None:
    one, two = Metrics(), Metrics()  # a global registry would refuse the second
    one.reconcile_errors.labels("c", "Boom").inc()
    assert value(scrape(one), "haku_reconcile_errors_total", controller="c",
                 reason="Boom") == 1.0
    assert matching(scrape(two), "haku_reconcile_errors_total") == {}


async def test_controller_reports_queue_depth_durations_and_failures() -> None:
    m = Metrics()
    calls: list[Key] = []
    gate = asyncio.Event()

    async def reconcile(key: Key) -> Result:
        calls.append(key)
        await gate.wait()
        if key == ("ns", "bad") and calls.count(key) == 1:
            raise ValueError("first time fails")
        return Result()

    c = Controller("things", reconcile, workers=1, metrics=m)
    c.queue.base_delay = 0.01
    task = asyncio.create_task(c.run(None, [], []))  # type: ignore[arg-type]
    c.observe("ADDED", [("ns", "bad"), ("ns", "b"), ("ns", "c")], parent=True)
    await asyncio.sleep(0.05)  # one key taken by the worker, two waiting
    assert value(scrape(m), "haku_workqueue_depth", controller="things") == 2.0
    gate.set()
    for _ in range(100):
        if len(calls) >= 4 and len(c.queue) == 0:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    s = scrape(m)
    assert value(s, "haku_reconcile_errors_total", controller="things",
                 reason="ValueError") == 1.0
    assert value(s, "haku_reconcile_duration_seconds_count", controller="things",
                 step="total") == 4.0
    assert value(s, "haku_workqueue_depth", controller="things") == 0.0


def test_step_timer_observes_each_step_and_binds_it_for_logs() -> None:
    seen: list[tuple[str, float]] = []
    token = logs.FIELDS.set({})
    try:
        timer = StepTimer(lambda step, took: seen.append((step, took)))
        timer.enter("datastore")
        assert logs.FIELDS.get()["step"] == "datastore"
        timer.enter("service")
        assert logs.FIELDS.get()["step"] == "service"
        timer.finish()
        timer.finish()  # nothing in progress: nothing observed
    finally:
        logs.FIELDS.reset(token)
    assert [s for s, _ in seen] == ["datastore", "service"]
    assert all(took >= 0 for _, took in seen)


def test_reconcile_outcome_sets_the_gauge_and_counts_error_reasons_only() -> None:
    m = Metrics()
    r = TenantReconciler(None, OperatorConfig(default_datastore="fallback"),  # type: ignore[arg-type]
                         None, m)  # type: ignore[arg-type]
    spec: Any = type("S", (), {"data_store": None, "namespace": "ns", "name": "t"})()
    found = {"DataStoreReady": Condition("DataStoreReady", "False", "DataStoreNotFound", "x"),
             "CertificatesReady": Condition("CertificatesReady", "Unknown", "Pending", "x"),
             "ControlPlaneAvailable": Condition("ControlPlaneAvailable", "False",
                                                "NoReadyPods", "x"),
             "Ready": Condition("Ready", "False", "DataStoreNotFound", "x")}
    status = {"kubernetesResources": {"version": {"status": "Provisioning"}}}
    ctx = Context({}, spec, found, status)
    r._observe_outcome(ctx)
    r._observe_outcome(ctx)
    s = scrape(m)
    # Counted once per reconcile (not again for Ready), progress reasons not at all.
    assert matching(s, "haku_reconcile_errors_total") == {
        frozenset({("controller", "tenantcontrolplane"), ("reason", "DataStoreNotFound")}): 2.0}
    assert value(s, "haku_tenant_control_planes", status="Provisioning",
                 datastore="fallback") == 1.0
    status["storage"] = {"dataStoreName": "dev-etcd"}  # where it was set up wins
    r._observe_outcome(Context({}, spec, {}, status))
    assert matching(scrape(m), "haku_tenant_control_planes") == {
        frozenset({("status", "Provisioning"), ("datastore", "dev-etcd")}): 1.0}
