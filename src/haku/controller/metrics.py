"""Prometheus metrics of one operator, in a registry of its own (several operators can run in
one process, as the tests do).

Counters and histograms are updated as things happen; the gauges are computed at scrape time
from what the operator knows: the last status each TenantControlPlane was reconciled to, the
certificates it holds, the length of each work queue.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from cryptography import x509
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from haku.render import ca_rotation

Key = tuple[str, str]

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def certificate_expiries(data: Mapping[str, bytes]) -> dict[str, float]:
    """notAfter (Unix seconds) of each ``NAME.crt`` in a Secret's data, by NAME; not the
    trust bundle (``ca-bundle.crt``: the CAs listed on their own)."""
    out: dict[str, float] = {}
    for name, pem in data.items():
        if not name.endswith(".crt") or name == ca_rotation.BUNDLE:
            continue
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            continue
        out[name.removesuffix(".crt")] = cert.not_valid_after_utc.timestamp()
    return out


@dataclass
class TenantState:
    """What the last reconcile of each TenantControlPlane found; dropped when it is deleted."""

    status: dict[Key, tuple[str, str]] = field(default_factory=dict)  # (status, datastore)
    certificates: dict[Key, dict[str, float]] = field(default_factory=dict)

    def observe(self, key: Key, status: str, datastore: str) -> None:
        self.status[key] = (status, datastore)

    def observe_certificates(self, key: Key, expiries: dict[str, float]) -> None:
        self.certificates[key] = expiries

    def forget(self, key: Key) -> None:
        self.status.pop(key, None)
        self.certificates.pop(key, None)


class _Snapshot(Collector):
    """The scrape-time gauges."""

    def __init__(self, tenants: TenantState, queues: dict[str, Callable[[], int]]) -> None:
        self.tenants, self.queues = tenants, queues

    def collect(self) -> Iterable[Metric]:
        tcps = GaugeMetricFamily(
            "haku_tenant_control_planes",
            "TenantControlPlanes by status.kubernetesResources.version.status and DataStore, "
            "as last reconciled", labels=["datastore", "status"])
        for (status, datastore), n in sorted(Tally(self.tenants.status.values()).items()):
            tcps.add_metric([datastore, status], n)
        yield tcps
        depth = GaugeMetricFamily("haku_workqueue_depth",
                                  "Keys waiting in a controller's work queue",
                                  labels=["controller"])
        for name, length in sorted(self.queues.items()):
            depth.add_metric([name], length())
        yield depth
        expiry = GaugeMetricFamily(
            "haku_certificate_expiry_timestamp_seconds",
            "notAfter of each certificate in a tenant's <tcp>-pki Secret, Unix seconds",
            labels=["namespace", "name", "certificate"])
        for (ns, name), certs in sorted(self.tenants.certificates.items()):
            for cert, not_after in sorted(certs.items()):
                expiry.add_metric([ns, name, cert], not_after)
        yield expiry


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reconcile_duration = Histogram(
            "haku_reconcile_duration_seconds",
            "Wall time of reconciles (step=total) and of each tenant pipeline step",
            ["controller", "step"], buckets=BUCKETS, registry=self.registry)
        self.reconcile_errors = Counter(
            "haku_reconcile_errors",
            "Failed reconciles by exception class, and Conditions set False for an error, "
            "by reason", ["controller", "reason"], registry=self.registry)
        self.datastore_provision = Histogram(
            "haku_datastore_provision_seconds",
            "Time to ensure a tenant in its DataStore (user, space, connection Secret)",
            ["driver"], buckets=BUCKETS, registry=self.registry)
        self.tenants = TenantState()
        self.queues: dict[str, Callable[[], int]] = {}
        self.registry.register(_Snapshot(self.tenants, self.queues))

    def add_queue(self, controller: str, length: Callable[[], int]) -> None:
        self.queues[controller] = length

    def exposition(self) -> tuple[str, bytes]:
        """(content type, body) for a /metrics answer."""
        return CONTENT_TYPE_LATEST, generate_latest(self.registry)
