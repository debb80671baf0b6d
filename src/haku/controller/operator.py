"""``haku operator run``: the controllers, their watches and leader election, wired together."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from lightkube import ALL_NS, ApiError, AsyncClient, KubeConfig, operators
from lightkube.codecs import from_dict
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Secret, Service
from lightkube.resources.networking_v1 import Ingress, NetworkPolicy

from haku.api import crds, policies
from haku.api.resources import TenantControlPlane
from haku.controller.compaction import INTERVAL, EtcdCompactor
from haku.controller.datastore_status import RecentProbes, reconcile_datastore
from haku.controller.events import EventRecorder
from haku.controller.fencing import Fence
from haku.controller.lease import LeaseElector, LostLeadership
from haku.controller.resources import FIELD_MANAGER, DataStore
from haku.controller.runtime import Controller, Key, Result, SpecChanges, Watcher, key_of
from haku.controller.steps.gateway import TLSRoute
from haku.controller.telemetry import Telemetry
from haku.controller.tenant import OperatorConfig, TenantReconciler
from haku.controller.tenant_watches import TenantWatches
from haku.render import controlplane, migration
from haku.render.controlplane import MANAGED_BY, TENANT_LABEL

log = logging.getLogger("haku.operator")


LEASE_NAME = "haku-operator"
# Tenant adds and deletes re-check their DataStore (who uses it) at most this often (s),
# or this much per tenant known.
DATASTORE_COALESCE, DATASTORE_COALESCE_PER_TENANT = 2.0, 0.01


@dataclass
class RunOptions:
    kubeconfig: Path | None = None
    namespace: str = "haku-system"
    leader_elect: bool = True
    workers: int = 4
    resync: float = 300.0
    install_crds: bool = True
    lease_duration: float = 15.0
    identity: str = f"{socket.gethostname()}-{os.getpid()}"
    # controller-runtime's flags: HOST:PORT, :PORT for every interface, 0 to disable; port 0
    # binds a free port (Telemetry.port tells which).
    metrics_bind_address: str = ":8080"
    health_probe_bind_address: str = ":8081"
    # On stop: how long reconciles in flight may go on (the Lease is renewed meanwhile)
    # before they are cancelled and the Lease is released; 20 s leaves the release and the
    # rest of the shutdown inside deploy/'s terminationGracePeriodSeconds (30).
    drain_timeout: float = 20.0
    # Seconds between the compaction rounds of etcd DataStores (haku.controller.compaction;
    # kube-apiserver's default); 0 leaves compaction to someone else.
    etcd_compaction_interval: float = INTERVAL


def client_for(kubeconfig: Path | None) -> AsyncClient:
    config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
    return AsyncClient(config, field_manager=FIELD_MANAGER, trust_env=False)


async def install_crds(client: AsyncClient, namespace: str) -> None:
    """Apply Haku's CRDs, the operator's namespace, the control-plane pods' PriorityClass and
    the TenantControlPlane admission policy with its settings (what deploy/ ships beside
    them), then wait until the CRDs serve."""
    for crd in crds.all_crds():
        await client.apply(from_dict(crd), force=True)
    await client.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                                  "metadata": {"name": namespace}}), force=True)
    await client.apply(from_dict(controlplane.priority_class()), force=True)
    await policies.install_policies(client, namespace)
    for crd in crds.all_crds():
        await wait_established(client, crd["metadata"]["name"])


async def wait_established(client: AsyncClient, name: str, timeout: float = 10.0) -> None:
    """Wait until the CRD ``name`` serves (its Established condition is True)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await client.get(CustomResourceDefinition, name)
        if any(c.type == "Established" and c.status == "True"
               for c in (got.status.conditions if got.status else None) or []):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"CustomResourceDefinition {name} not Established "
                               f"after {timeout:.0f}s")
        await asyncio.sleep(0.1)


def _datastores_of(tcp: Any, default: str | None) -> set[str]:
    """The DataStores a TenantControlPlane uses: the one it was set up on, else its spec's,
    and both sides of a migration under way."""
    obj = tcp.to_dict()
    storage = (obj.get("status") or {}).get("storage") or {}
    name: str | None = (storage.get("dataStoreName") or (obj.get("spec") or {}).get("dataStore")
                        or default)
    names = {name} if name else set()
    record = storage.get("migration") or {}
    if migration.in_progress(record):
        names |= {n for n in ((record.get("from") or {}).get("dataStoreName"),
                              (record.get("to") or {}).get("dataStoreName")) if n}
    return names


def _owned_by_tenant(event: str, obj: Any) -> list[Key]:
    labels = obj.metadata.labels or {}
    return [(obj.metadata.namespace, labels[TENANT_LABEL])] if TENANT_LABEL in labels else []


async def _crds_present(client: AsyncClient) -> bool:
    try:
        for crd in crds.all_crds():
            await wait_established(client, crd["metadata"]["name"])
    except (ApiError, TimeoutError) as e:
        log.warning("Haku's CRDs are not installed or not served: %s", e)
        return False
    return True


async def _gateway_api_served(client: AsyncClient) -> bool:
    """Whether the admin cluster serves TLSRoute (the Gateway API CRDs are installed), so
    that the tenants' routes can be watched. Asked once at start: installed later, the
    routes are still made, and a route's status is looked at when its tenant requeues."""
    try:
        async for _ in client.list(TLSRoute, namespace=ALL_NS, chunk_size=1):
            break
    except httpx2.HTTPStatusError as e:
        if e.response.status_code != 404:
            log.warning("cannot list TLSRoutes, not watching them: %s", e)
        return False
    return True


async def _first(*aws: Any) -> None:
    """Wait until the first of ``aws`` completes (raising what it raised), cancelling the
    rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in done:
        t.result()


def _lost(task: asyncio.Task[Any] | None) -> bool:
    return (task is not None and task.done() and not task.cancelled()
            and isinstance(task.exception(), LostLeadership))


async def run(options: RunOptions, config: OperatorConfig,
              stop: asyncio.Event | None = None, telemetry: Telemetry | None = None) -> None:
    """Reconcile until ``stop`` is set (or leadership is lost, which raises). ``telemetry``
    holds the metrics and probe state, and the servers once they listen.

    Leadership: every write to the API server goes through ``client``, whose mutating requests
    are fenced (refused unless this process holds the Lease with margin); the Lease itself,
    and the CRDs every replica applies before it leads, go through a client of their own.
    Losing the Lease cancels the reconciles in flight at once and raises LostLeadership. On
    ``stop`` no new reconcile starts, those in flight get up to ``options.drain_timeout`` to
    finish while the Lease is still renewed, and then the Lease is released."""
    telemetry = telemetry or Telemetry()
    health = telemetry.health
    stop = stop or asyncio.Event()
    lease_client = client_for(options.kubeconfig)
    client = client_for(options.kubeconfig)
    elector = LeaseElector(lease_client, options.namespace, LEASE_NAME, options.identity,
                           lease_duration=options.lease_duration,
                           renew_deadline=options.lease_duration * 2 / 3,
                           retry_period=max(options.lease_duration / 7.5, 0.2))
    fence = elector.fence if options.leader_elect else Fence.always()
    fence.install(client)
    tenants = TenantReconciler(client, config, EventRecorder(client), telemetry.metrics)
    # The reconciler checks it before writing to a DataStore (not an API server request).
    tenants.fence = fence
    controllers: list[Controller] = []
    runs: list[asyncio.Task[None]] = []
    holding: asyncio.Task[None] | None = None
    lost = False
    try:
        await telemetry.start(options.metrics_bind_address, options.health_probe_bind_address)
        if options.install_crds:
            await install_crds(lease_client, options.namespace)
            health.crds_installed = True
        else:
            health.crds_installed = await _crds_present(lease_client)
        if options.leader_elect:
            log.info("waiting to lead (Lease %s/%s as %s)", options.namespace, LEASE_NAME,
                     options.identity)
            health.lease_reachable = lambda: elector.reachable
            health.phase = "standby"
            await _first(elector.acquire(), stop.wait())
            if stop.is_set():
                log.info("stopping before leading")
                return
            health.lease_held = lambda: fence.held
            # Renewing from now on, through the drain at a stop, until released.
            holding = asyncio.create_task(elector.hold())
        health.phase = "leading"

        async def datastore_reconcile(key: Key) -> Result:
            used_by = []
            async for t in client.list(TenantControlPlane, namespace=ALL_NS):
                if key[1] in _datastores_of(t, config.default_datastore):
                    ns, name = key_of(t)
                    used_by.append(f"{ns}/{name}")
            # Keeps the DataStore (finalizer) while any tenant uses it; None once it is gone.
            if await reconcile_datastore(client, key[1], used_by, recent_probes) is None:
                return Result()
            return Result(requeue_after=60.0)

        recent_probes = RecentProbes()
        tenant_changes = SpecChanges()

        def datastore_of_tenant(event: str, obj: Any) -> list[Key]:
            # Adds, deletes and spec changes only: status writes would re-check needlessly.
            # Coalesced: a burst of new tenants is one re-check, as each lists every tenant
            # (at most every 2 s, and every 10 s with 1,000 tenants).
            if tenant_changes(event, obj):
                for name in _datastores_of(obj, config.default_datastore):
                    stores.queue.add_after(("", name), max(
                        DATASTORE_COALESCE, len(tcp.known) * DATASTORE_COALESCE_PER_TENANT))
            return []

        # Which tenant owns a datastore space is recorded in the datastore (the datastore
        # step), so no listing of every tenant is needed before the first reconcile.
        spec_changes = SpecChanges()

        def tenant_events(event: str, obj: Any) -> list[Key]:
            keys = spec_changes(event, obj)
            if not keys:
                return []
            if event == "ADDED" and not obj.status:
                # A new tenant: its first status now, and its first look before the
                # requeues and resyncs of the tenants already there.
                tenants.announce(obj)
                for key in keys:
                    tcp.queue.add(key, urgent=True)
            # Our own finalizer write comes back as a change: nothing new to look at.
            return held_back("TenantControlPlane", event, obj, keys)

        def held_back(kind: str, event: str, obj: Any, keys: list[Key]) -> list[Key]:
            """``keys`` unless the event is the echo of our own write, or may be one (its
            tenant is being reconciled, and the write's answer may not be in yet: decided
            when that reconcile ends)."""
            if not keys or tenants.deps.echo(kind, event, obj):
                return []
            if event != "DELETED" and len(keys) == 1 and keys[0] in tcp.in_flight:
                tenants.deps.defer(keys[0], kind, obj)
                return []
            return keys

        def owned_by_tenant(kind: str) -> Callable[[str, Any], list[Key]]:
            def mapper(event: str, obj: Any) -> list[Key]:
                keys = _owned_by_tenant(event, obj)
                if kind == "Ingress":  # which exist: no reconcile needs to look for one
                    where = (obj.metadata.namespace or "", obj.metadata.name)
                    if event == "DELETED":
                        tenants.deps.ingresses.discard(where)
                    else:
                        tenants.deps.ingresses.add(where)
                # What this operator just wrote coming back through the watch: no news.
                return held_back(kind, event, obj, keys)
            return mapper

        tcp = Controller("tenantcontrolplane", tenants.reconcile, options.workers,
                         options.resync, telemetry.metrics, key_field="tenant", fence=fence,
                         drain_timeout=options.drain_timeout)
        tenants.watches = TenantWatches(tcp.queue.add)
        tenants.deps.watches_listed = lambda: tcp.started
        datastore_changes = SpecChanges()

        def tenants_of_datastore(event: str, obj: Any) -> list[Key]:
            # A DataStore that appears or whose spec changes may unblock its tenants; its own
            # status writes (every check) need not requeue them.
            tenants.deps.drivers.observe(event, obj)
            return sorted(tcp.known) if datastore_changes(event, obj) else []
        stores = Controller("datastore", datastore_reconcile, 1, 60.0, telemetry.metrics,
                            key_field="datastore", fence=fence,
                            drain_timeout=options.drain_timeout)
        controllers = [tcp, stores]
        health.informers_started = lambda: tcp.started and stores.started
        owned = {"app.kubernetes.io/managed-by": MANAGED_BY, TENANT_LABEL: operators.exists()}
        # spec.controlPlane.gateway's TLSRoutes: watched when the Gateway API is installed.
        routes: list[Any] = [TLSRoute] if await _gateway_api_served(client) else []
        watched: list[Any] = [Secret, Deployment, Service, Ingress, NetworkPolicy, *routes]
        runs = [
            asyncio.create_task(tcp.run(
                client,
                # Namespaced kinds are watched in every namespace (lightkube's default is the
                # kubeconfig's namespace).
                parents=[Watcher(TenantControlPlane, tenant_events, namespace=ALL_NS)],
                children=[Watcher(kind, owned_by_tenant(kind.__name__), labels=owned,
                                  namespace=ALL_NS)
                          for kind in watched]
                + [Watcher(DataStore, tenants_of_datastore)])),
            asyncio.create_task(stores.run(
                # Not on its own status writes (each would check it again at once).
                client, parents=[Watcher(DataStore, SpecChanges())],
                children=[Watcher(TenantControlPlane, datastore_of_tenant, namespace=ALL_NS)])),
        ]
        compactor = EtcdCompactor(client, tenants.deps.drivers, fence,
                                  options.etcd_compaction_interval)
        runs.append(asyncio.create_task(compactor.run(stop)))
        stopping = asyncio.create_task(stop.wait())
        log.info("reconciling TenantControlPlanes with %d workers", options.workers)
        await asyncio.wait([*runs, stopping, *([holding] if holding else [])],
                           return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        lost = _lost(holding) or any(_lost(r) for r in runs)
        if not lost:
            # Stopping (asked to, or a controller failed): no new reconcile starts, those in
            # flight finish (bounded by drain_timeout) while the Lease is still renewed.
            health.phase = "stopping"
            for r in runs:
                r.cancel()
            drained: asyncio.Future[Any] = asyncio.gather(*runs, return_exceptions=True)
            if holding is not None and not holding.done():
                waiting: list[asyncio.Future[Any]] = [drained, holding]
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            lost = _lost(holding)
            if not lost:
                await drained
                await tenants.events.flush()  # while the Lease is still held
        if lost:
            fence.revoke("lost the Lease")
            health.failed = "lost the Lease"
            for c in controllers:
                c.abort()  # in-flight reconciles are cancelled now, not drained
            raise LostLeadership("lost the Lease; stopping so a standby can lead")
        for r in [*runs, *([holding] if holding else [])]:
            error = r.exception() if r.done() and not r.cancelled() else None
            if error is not None and not isinstance(error, asyncio.CancelledError):
                health.failed = f"{type(error).__name__}: {error}"
                log.error("operator task failed; stopping", exc_info=error)
                raise error
        if not stop.is_set():
            # A controller or the Lease holder ended without being asked to: never a
            # silent exit 0.
            health.failed = "a task ended unexpectedly"
            raise RuntimeError("an operator task ended unexpectedly; stopping")
    finally:
        health.phase = "stopping"
        for c in controllers:
            if lost:
                c.abort()
        for r in runs:
            r.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        if holding is not None:
            holding.cancel()
            await asyncio.gather(holding, return_exceptions=True)
        await tenants.events.flush()
        await tenants.close()
        if options.leader_elect and not lost:
            await elector.release()
        fence.revoke("stopped")
        await client.close()
        await lease_client.close()
        await telemetry.stop()
