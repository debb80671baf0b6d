"""``haku operator run``: the controllers, their watches and leader election, wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from lightkube import ALL_NS, ApiError, AsyncClient, KubeConfig, operators
from lightkube.codecs import from_dict
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Secret, Service
from lightkube.resources.networking_v1 import Ingress

from haku.api import crds
from haku.api.resources import TenantControlPlane
from haku.controller.datastore_status import check_datastore
from haku.controller.events import EventRecorder
from haku.controller.lease import LeaseElector, LostLeadership
from haku.controller.resources import FIELD_MANAGER, DataStore
from haku.controller.runtime import Controller, Key, Result, SpecChanges, Watcher, key_of
from haku.controller.telemetry import Telemetry
from haku.controller.tenant import OperatorConfig, TenantReconciler
from haku.controller.tenant_watches import TenantWatches
from haku.render.controlplane import MANAGED_BY, TENANT_LABEL

log = logging.getLogger("haku.operator")


async def _list_retrying(client: AsyncClient, kind: Any, stop: asyncio.Event) -> list[Any]:
    """Every object of ``kind`` in all namespaces; transient failures (the API server
    answering 429 "storage is (re)initializing" right after a CRD update, 5xx, a dropped
    connection) are retried with backoff until ``stop`` is set."""
    delay = 0.2
    while True:
        try:
            return [o async for o in client.list(kind, namespace=ALL_NS)]
        except ApiError as e:
            if e.status.code is not None and e.status.code < 500 and e.status.code != 429:
                raise
            log.warning("listing %s: %s (retrying)", kind.__name__, e)
        except (httpx2.HTTPError, OSError) as e:
            log.warning("listing %s: %s (retrying)", kind.__name__, e)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return []
        delay = min(delay * 2, 5.0)

LEASE_NAME = "haku-operator"


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


def client_for(kubeconfig: Path | None) -> AsyncClient:
    config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
    return AsyncClient(config, field_manager=FIELD_MANAGER, trust_env=False)


async def install_crds(client: AsyncClient, namespace: str) -> None:
    """Apply Haku's CRDs (and the operator's namespace), then wait until they serve."""
    for crd in crds.all_crds():
        await client.apply(from_dict(crd), force=True)
    await client.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                                  "metadata": {"name": namespace}}), force=True)
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


def _datastore_of(tcp: Any, default: str | None) -> str | None:
    """The DataStore a TenantControlPlane uses: the one it was set up on, else its spec's."""
    obj = tcp.to_dict()
    setup = ((obj.get("status") or {}).get("storage") or {}).get("dataStoreName")
    name: str | None = setup or (obj.get("spec") or {}).get("dataStore") or default
    return name


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


async def run(options: RunOptions, config: OperatorConfig,
              stop: asyncio.Event | None = None, telemetry: Telemetry | None = None) -> None:
    """Reconcile until ``stop`` is set (or leadership is lost, which raises). ``telemetry``
    holds the metrics and probe state, and the servers once they listen."""
    telemetry = telemetry or Telemetry()
    health = telemetry.health
    client = client_for(options.kubeconfig)
    stop = stop or asyncio.Event()
    elector = LeaseElector(client, options.namespace, LEASE_NAME, options.identity,
                           lease_duration=options.lease_duration,
                           renew_deadline=options.lease_duration * 2 / 3,
                           retry_period=max(options.lease_duration / 7.5, 0.2))
    tenants = TenantReconciler(client, config, EventRecorder(client), telemetry.metrics)
    try:
        await telemetry.start(options.metrics_bind_address, options.health_probe_bind_address)
        if options.install_crds:
            await install_crds(client, options.namespace)
            health.crds_installed = True
        else:
            health.crds_installed = await _crds_present(client)
        if options.leader_elect:
            log.info("waiting to lead (Lease %s/%s as %s)", options.namespace, LEASE_NAME,
                     options.identity)
            health.lease_reachable = lambda: elector.reachable
            health.phase = "standby"
            await elector.acquire()
        health.phase = "leading"

        async def datastore_reconcile(key: Key) -> Result:
            used_by = []
            async for t in client.list(TenantControlPlane, namespace=ALL_NS):
                if _datastore_of(t, config.default_datastore) == key[1]:
                    ns, name = key_of(t)
                    used_by.append(f"{ns}/{name}")
            await check_datastore(client, key[1], used_by=used_by)
            return Result(requeue_after=60.0)

        tenant_changes = SpecChanges()

        def datastore_of_tenant(event: str, obj: Any) -> list[Key]:
            # Adds, deletes and spec changes only: status writes would re-check needlessly.
            if not tenant_changes(event, obj):
                return []
            name = _datastore_of(obj, config.default_datastore)
            return [("", name)] if name else []

        # What every tenant claims in its DataStore, complete before the first reconcile;
        # the TenantControlPlane watch keeps it current.
        for t in await _list_retrying(client, TenantControlPlane, stop):
            tenants.observe_claim("ADDED", t.to_dict())
        tenant_keys = SpecChanges()

        def tenant_events(event: str, obj: Any) -> list[Key]:
            tenants.observe_claim(event, obj.to_dict())
            return tenant_keys(event, obj)

        tcp = Controller("tenantcontrolplane", tenants.reconcile, options.workers,
                         options.resync, telemetry.metrics, key_field="tenant")
        tenants.watches = TenantWatches(tcp.queue.add)
        datastore_changes = SpecChanges()

        def tenants_of_datastore(event: str, obj: Any) -> list[Key]:
            # A DataStore that appears or whose spec changes may unblock its tenants; its own
            # status writes (every check) need not requeue them.
            return sorted(tcp.known) if datastore_changes(event, obj) else []
        stores = Controller("datastore", datastore_reconcile, 1, 60.0, telemetry.metrics,
                            key_field="datastore")
        health.informers_started = lambda: tcp.started and stores.started
        owned = {"app.kubernetes.io/managed-by": MANAGED_BY, TENANT_LABEL: operators.exists()}
        runs = [
            asyncio.create_task(tcp.run(
                client,
                # Namespaced kinds are watched in every namespace (lightkube's default is the
                # kubeconfig's namespace).
                parents=[Watcher(TenantControlPlane, tenant_events, namespace=ALL_NS)],
                children=[Watcher(kind, _owned_by_tenant, labels=owned, namespace=ALL_NS)
                          for kind in (Secret, Deployment, Service, Ingress)]
                + [Watcher(DataStore, tenants_of_datastore)])),
            asyncio.create_task(stores.run(
                client, parents=[Watcher(DataStore, lambda e, o: [key_of(o)])],
                children=[Watcher(TenantControlPlane, datastore_of_tenant, namespace=ALL_NS)])),
            asyncio.create_task(stop.wait()),
        ]
        if options.leader_elect:
            runs.append(asyncio.create_task(elector.hold()))
        log.info("reconciling TenantControlPlanes with %d workers", options.workers)
        done, pending = await asyncio.wait(runs, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            error = None if task.cancelled() else task.exception()
            if isinstance(error, LostLeadership):
                health.failed = "lost the Lease"
                raise LostLeadership("lost the Lease; stopping so a standby can lead")
            if error is not None:
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
        await tenants.events.flush()
        await tenants.close()
        if options.leader_elect:
            await elector.release()
        await client.close()
        await telemetry.stop()
