"""What keeps 1,000 tenants cheap to reconcile: a new tenant's first look goes before the
requeues of the ones already there; the watch echo of the operator's own writes does not
reconcile a tenant again (held back while its reconcile runs, decided when it ends); a
DataStore is probed at most once a while for a burst of tenant events; DataStores as watched
stand in for reads; the benchmark's restart count of tenant containers."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from haku.api.conditions import Condition
from haku.controller import datastore_status, drivers
from haku.controller.datastore_status import RecentProbes
from haku.controller.drivers import DriverCache
from haku.controller.runtime import WorkQueue
from haku.controller.steps.deps import Deps

ROOT = Path(__file__).resolve().parents[2]


def obj(kind_ns: str, name: str, version: str) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(namespace=kind_ns, name=name,
                                                    resourceVersion=version))


# ------------------------------------------------------------------ work queue


async def test_urgent_keys_go_before_the_waiting_ones() -> None:
    q = WorkQueue()
    for name in ("a", "b"):
        q.add(("ns", name))
    q.add(("ns", "new"), urgent=True)
    q.add(("ns", "b"), urgent=True)  # already waiting: moved up, handed out once
    got = [await asyncio.wait_for(q.get(), 1) for _ in range(3)]
    assert got == [("ns", "new"), ("ns", "b"), ("ns", "a")]
    for key in got:
        q.done(key)
    assert len(q) == 0
    with pytest.raises(TimeoutError):  # the moved key's old entry is skipped
        await asyncio.wait_for(q.get(), 0.05)


async def test_an_urgent_key_in_progress_runs_again_afterwards_first() -> None:
    q = WorkQueue()
    q.add(("ns", "busy"))
    busy = await q.get()
    q.add(("ns", "other"))
    q.add(("ns", "busy"), urgent=True)  # held back while in progress
    assert await asyncio.wait_for(q.get(), 1) == ("ns", "other")
    assert busy is not None
    q.done(busy)
    assert await asyncio.wait_for(q.get(), 1) == ("ns", "busy")


async def test_shutdown_wakes_workers_before_waiting_keys() -> None:
    q = WorkQueue()
    q.add(("ns", "a"), urgent=True)
    q.shutdown(1)
    assert await asyncio.wait_for(q.get(), 1) is None


# ------------------------------------------------------------------ echoes of own writes


def deps() -> Deps:
    return Deps(None, None, None, None, None)  # type: ignore[arg-type]


def test_the_echo_of_a_write_is_no_news_but_anything_else_is() -> None:
    d = deps()
    d.wrote("Secret", obj("ns", "t-pki", "10"))
    assert d.echo("Secret", "ADDED", obj("ns", "t-pki", "10"))
    assert not d.echo("Secret", "MODIFIED", obj("ns", "t-pki", "10"))  # seen once only
    d.wrote("Secret", obj("ns", "t-pki", "11"))
    assert not d.echo("Secret", "MODIFIED", obj("ns", "t-pki", "12"))  # someone else's
    assert not d.echo("Deployment", "MODIFIED", obj("ns", "t-pki", "11"))  # another kind
    assert not d.echo("Secret", "DELETED", obj("ns", "t-pki", "11"))
    assert d.written == {}


def test_events_held_back_during_a_reconcile_are_settled_at_its_end() -> None:
    d, key = deps(), ("ns", "t")
    # The watch delivers the write before its answer is in: held back, then an echo.
    d.defer(key, "Service", obj("ns", "t", "5"))
    d.wrote("Service", obj("ns", "t", "5"))
    assert d.settle(key) is False
    # A change of someone else's (a Deployment's status) meanwhile: look again.
    d.defer(key, "Deployment", obj("ns", "t", "7"))
    d.wrote("Deployment", obj("ns", "t", "6"))
    assert d.settle(key) is True
    assert d.settle(key) is False  # settled once
    assert d.deferred == {}


def test_no_ingress_is_trusted_only_once_the_watches_listed() -> None:
    d = deps()
    assert not d.no_ingress("ns", "t")
    d.watches_listed = lambda: True
    assert d.no_ingress("ns", "t")
    d.ingresses.add(("ns", "t"))
    assert not d.no_ingress("ns", "t")


# ------------------------------------------------------------------ DataStores


def test_a_recent_probe_stands_in_while_the_generation_holds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(datastore_status.time, "monotonic", lambda: now[0])
    recent = RecentProbes(max_age=50.0)
    probed = (Condition("Ready", "True", "Connected", "ok"), "3.7", 4)
    assert recent.get("ds", 1) is None
    recent.put("ds", 1, probed)
    now[0] += 49
    assert recent.get("ds", 1) == probed
    assert recent.get("ds", 2) is None  # the spec changed: probe again
    now[0] += 2
    assert recent.get("ds", 1) is None  # too old: the periodic check probes
    recent.forget("ds")
    assert recent.found == {}


async def test_a_watched_datastore_stands_in_for_a_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(drivers.time, "monotonic", lambda: now[0])
    reads: list[str] = []

    class Client:
        async def get(self, resource: Any, name: str) -> Any:
            reads.append(name)
            return obj("", name, "read")

    cache = DriverCache(Client())  # type: ignore[arg-type]
    watched = obj("", "ds", "watched")
    cache.observe("ADDED", watched)
    assert await cache.read("ds") is watched and reads == []
    now[0] += drivers.WATCHED_TTL + 1  # a delete missed by a broken watch ends here
    assert (await cache.read("ds")).metadata.resourceVersion == "read"
    cache.observe("MODIFIED", watched)
    cache.observe("DELETED", watched)
    await cache.read("ds")
    assert reads == ["ds", "ds"]


# ------------------------------------------------------------------ the benchmark


def load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("operator_bench",
                                                  ROOT / "bench" / "operator_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("operator_bench", module)
    spec.loader.exec_module(module)
    return module


def pod(uid: str, **restarts: int) -> dict[str, Any]:
    return {"metadata": {"name": f"p-{uid}", "uid": uid},
            "status": {"initContainerStatuses": [],
                       "containerStatuses": [{"name": n, "restartCount": c}
                                             for n, c in restarts.items()]}}


def test_restarts_are_counted_per_container_and_kept_when_a_pod_goes() -> None:
    bench = load_bench()
    seen: dict[str, int] = {}
    bench.merge_restarts(seen, [pod("a", **{"kube-apiserver": 2, "kube-scheduler": 0}),
                                pod("b", **{"kube-apiserver": 0})])
    # Later: pod a restarted once more, pod b was replaced by c (its count stays counted).
    bench.merge_restarts(seen, [pod("a", **{"kube-apiserver": 3, "kube-scheduler": 1}),
                                pod("c", **{"kube-controller-manager": 1})])
    assert sum(seen.values()) == 5
    assert bench.restarts_by_container(seen) == {
        "kube-apiserver": 3, "kube-scheduler": 1, "kube-controller-manager": 1}
    assert bench.container_restarts([{"metadata": {"name": "x"}, "status": None}]) == {}


def test_request_counts_are_per_tenant() -> None:
    bench = load_bench()
    before = bench.request_counts(
        b'apiserver_request_total{code="201",verb="POST",resource="events",'
        b'subresource="",version="v1"} 10\n')
    after = bench.request_counts(
        b'# HELP apiserver_request_total x\n'
        b'apiserver_request_total{code="201",verb="POST",resource="events",'
        b'subresource="",version="v1"} 30\n'
        b'apiserver_request_total{code="200",verb="APPLY",resource="tenantcontrolplanes",'
        b'subresource="status",version="v1alpha1"} 20\n'
        b'apiserver_request_total{code="200",verb="WATCH",resource="secrets",'
        b'subresource="",version="v1"} 5\n')
    assert bench.requests_per_tenant(before, after, 10) == {
        "POST events": 2.0, "APPLY tenantcontrolplanes/status": 2.0, "total": 4.0}
