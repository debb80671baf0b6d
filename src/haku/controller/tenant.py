"""The TenantControlPlane reconcile pipeline.

Ordered, idempotent steps, each a server-side apply with field manager ``haku``:

1. finalizer (so the datastore tenant is removed on delete);
2. datastore: the tenant's user and space, its password Secret (SQL) and connection Secret;
3. Service, and from it the control-plane endpoint (waits, saying so, for a load balancer);
4. certificates (kubeadm's set) and kubeconfigs, kept unless missing or due;
5. Deployment (pod template checksums roll the pods when a Secret changes), Ingress;
6. inside the tenant, once its /readyz answers through the exposed endpoint: kubeadm's
   bootstrap objects (kubeadm-config, kubelet-config, bootstrap-token RBAC, cluster-info,
   ``kubeadm:cluster-admins``) and the addons in ``spec.addons`` (``haku.tenant.bootstrap``);
7. status: Kamaji's ``kubernetesResources.version.status`` and standard Conditions,
   ``APIServerReady`` meaning the tenant's /readyz answered through the exposed endpoint and
   ``TenantBootstrapped`` that a node can ``kubeadm join`` now; ``Ready`` needs all of them.

Owned objects carry an owner reference, so deleting the TenantControlPlane removes them.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import dataclasses
import hashlib
import ipaddress
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx2
import yaml
from lightkube import ALL_NS, ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node, Secret
from lightkube.resources.networking_v1 import Ingress

from haku.api import conditions
from haku.api.conditions import Condition
from haku.api.datastore import DataStoreSpec
from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.controller import logs
from haku.controller.credentials import ensure_password
from haku.controller.events import EventRecorder
from haku.controller.metrics import Metrics, certificate_expiries
from haku.controller.resources import (
    FIELD_MANAGER,
    GROUP,
    VERSION,
    DataStore,
    TenantControlPlane,
    secret_reader,
)
from haku.controller.runtime import Key, Result
from haku.controller.tenant_watches import TenantWatches
from haku.datastore import DataStoreError, Driver, Tenant, TenantConnection, open_driver
from haku.datastore.base import InvalidName, PrivateFiles
from haku.datastore.etcd import EtcdDriver
from haku.datastore.settings import resolve
from haku.render import (
    controlplane,
    pki,
    tenant_bootstrap,
    tenant_kubeconfigs,
    tenant_pki,
    tenant_status,
)
from haku.render.kine import ENDPOINT_KEY
from haku.render.tenant_status import Claim
from haku.tenant import bootstrap

log = logging.getLogger("haku.tenant")

FINALIZER = "haku.dev/finalizer"
CONDITION_TYPES = ("DataStoreReady", "CertificatesReady", "ControlPlaneAvailable",
                   "APIServerReady", "TenantBootstrapped", "Ready")
# Reasons of a False Condition that mean "not there yet", not "something is wrong": every
# other False reason counts in haku_reconcile_errors_total.
PROGRESS_REASONS = frozenset({"Pending", "NoReadyPods", "NoControlPlane", "Sleeping",
                              "WaitingForLoadBalancer", "WaitingForAPIServer"})
CONTROLLER = "tenantcontrolplane"
# Drivers a reconcile got from the DriverCache, released when it ends (one list per task).
_HELD: contextvars.ContextVar[list[Driver] | None] = contextvars.ContextVar(
    "haku_held_drivers", default=None)


class Waiting(Exception):
    """A step cannot go on yet; the condition says why, and the key is looked at again."""

    def __init__(self, condition: Condition, retry_after: float) -> None:
        super().__init__(condition.message)
        self.condition = condition
        self.retry_after = retry_after


@dataclass
class OperatorConfig:
    default_datastore: str | None = None
    kine_image: str = "docker.io/rancher/kine:v0.17.5"
    key_algorithm: pki.KeyAlgorithm = pki.KeyAlgorithm.RSA_2048
    node_address: str | None = None  # NodePort endpoint; default: a node's InternalIP
    ready_resync: float = 300.0
    watch_tenants: bool = True  # repair Haku's objects in a tenant as soon as they drift


def sha(data: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for k in sorted(data):
        h.update(k.encode() + b"\0" + data[k] + b"\0")
    return h.hexdigest()[:16]


def _b64(data: dict[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode() for k, v in data.items()}


# How long resolved DataStore settings (credentials read from its Secrets) are trusted before
# a reconcile reads the Secrets again: a rotated DataStore credential is picked up within this.
SETTINGS_TTL = 30.0


@dataclass
class _Entry:
    fingerprint: str
    driver: Driver
    generation: Any = None
    checked: float = 0.0  # time.monotonic() of the last resolve that matched
    users: int = 0


def settings_fingerprint(datastore: dict[str, Any], settings: Any) -> str:
    """What identifies a DataStore's connection: its spec generation and the resolved
    settings (endpoints, credentials and certificates read from its Secrets). Status writes,
    which bump the resourceVersion, do not change it."""
    h = hashlib.sha256(str((datastore.get("metadata") or {}).get("generation")).encode())
    # Every field's value (Settings' repr hides the credentials, which must count here).
    for value in dataclasses.astuple(settings):
        h.update(b"\0" + repr(value).encode())
    return h.hexdigest()


@dataclass
class DriverCache:
    """One open driver per DataStore, replaced when its connection settings change.

    Drivers are counted out by :meth:`get` and back by :meth:`release`; a replaced driver is
    closed once the last reconcile using it has released it, never under a running one."""

    client: AsyncClient
    drivers: dict[str, _Entry] = field(default_factory=dict)
    retired: list[_Entry] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, datastore: Any) -> Driver:
        name = datastore.metadata.name
        generation = datastore.metadata.generation
        async with self.lock:
            cached = self.drivers.get(name)
            if cached is not None and cached.generation == generation \
                    and time.monotonic() - cached.checked < SETTINGS_TTL:
                cached.users += 1  # same spec, Secrets read recently: no API reads
                return cached.driver
        obj = datastore.to_dict()
        spec = DataStoreSpec.parse(obj)
        settings = await resolve(spec, secret_reader(self.client))
        fingerprint = settings_fingerprint(obj, settings)
        async with self.lock:
            cached = self.drivers.get(name)
            if cached is None or cached.fingerprint != fingerprint:
                if cached is not None:
                    self.retired.append(cached)
                cached = _Entry(fingerprint, open_driver(settings), generation)
                self.drivers[name] = cached
            cached.generation, cached.checked = generation, time.monotonic()
            cached.users += 1
            driver = cached.driver
        await self._close_unused()
        return driver

    async def release(self, driver: Driver) -> None:
        async with self.lock:
            for entry in (*self.drivers.values(), *self.retired):
                if entry.driver is driver and entry.users > 0:
                    entry.users -= 1
                    break
        await self._close_unused()

    async def _close_unused(self) -> None:
        async with self.lock:
            done = [e for e in self.retired if e.users == 0]
            self.retired = [e for e in self.retired if e.users > 0]
        for entry in done:
            await entry.driver.close()

    async def close(self) -> None:
        for entry in (*self.drivers.values(), *self.retired):
            await entry.driver.close()
        self.drivers.clear()
        self.retired.clear()


class StepTimer:
    """Wall time per pipeline step, for the log line and ``haku_reconcile_duration_seconds``;
    entering a step also binds ``step`` for the log lines logged during it."""

    def __init__(self, observe: Callable[[str, float], None] | None = None) -> None:
        self.started = time.perf_counter()
        self.last = self.started
        self.current: str | None = None
        self.steps: dict[str, float] = {}
        self.observe = observe

    def enter(self, step: str) -> None:
        """End the current step (if any) and start ``step``."""
        self.finish()
        self.current = step
        logs.bind(step=step)

    def finish(self) -> None:
        now = time.perf_counter()
        if self.current is not None:
            took = now - self.last
            self.steps[self.current] = self.steps.get(self.current, 0.0) + took
            if self.observe is not None:
                self.observe(self.current, took)
        self.current, self.last = None, now

    def summary(self) -> str:
        total = time.perf_counter() - self.started
        return f"{total:.2f}s (" + ", ".join(f"{k} {v:.2f}" for k, v in self.steps.items()) + ")"


class TenantReconciler:
    def __init__(self, client: AsyncClient, config: OperatorConfig,
                 recorder: EventRecorder, metrics: Metrics | None = None) -> None:
        self.client, self.config, self.events = client, config, recorder
        self.metrics = metrics or Metrics()
        self.drivers = DriverCache(client)
        # What every TenantControlPlane claims in its DataStore, kept current by the
        # operator's watch (observe_claim); the reconcile refuses a space or user an older
        # tenant claims.
        self.claims: dict[Key, Claim] = {}
        # Consecutive reconciles with a rejected apply, per tenant, for the InvalidSpec
        # backoff; cleared once every rendered object is accepted, and on delete.
        self._rejected: dict[Key, int] = {}
        # Set by the operator once its work queue exists: drift inside a tenant requeues it.
        self.watches: TenantWatches | None = None

    # ------------------------------------------------------------------ helpers

    async def _apply(self, manifest: dict[str, Any], owner: dict[str, Any] | None) -> Any:
        if owner:
            manifest["metadata"]["ownerReferences"] = [owner]
        return await self.client.apply(from_dict(manifest), field_manager=FIELD_MANAGER,
                                       force=True)

    async def _secret_data(self, namespace: str, name: str) -> dict[str, bytes]:
        try:
            secret = await self.client.get(Secret, name, namespace=namespace)
        except ApiError as e:
            if e.status.code == 404:
                return {}
            raise
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    async def _apply_secret(self, spec: TenantControlPlaneSpec, name: str,
                            data: dict[str, bytes], owner: dict[str, Any]) -> None:
        await self._apply({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": spec.namespace,
                         "labels": controlplane.labels(spec, "secret")},
            "data": _b64(data)}, owner)

    @staticmethod
    def _owner(obj: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TenantControlPlane",
                "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
                "controller": True, "blockOwnerDeletion": True}

    # ------------------------------------------------------------------ reconcile

    async def reconcile(self, key: Key) -> Result:
        namespace, name = key
        try:
            current = await self.client.get(TenantControlPlane, name, namespace=namespace)
        except ApiError as e:
            if e.status.code == 404:
                self.metrics.tenants.forget(key)
                return Result()
            raise
        obj: dict[str, Any] = current.to_dict()  # type: ignore[no-untyped-call]
        self.observe_claim("MODIFIED", obj)
        spec = self._effective_spec(obj)
        held = _HELD.set([])
        try:
            return await self._reconcile(key, obj, spec)
        finally:
            for driver in _HELD.get() or []:
                await self.drivers.release(driver)
            _HELD.reset(held)

    def observe_claim(self, event: str, obj: dict[str, Any]) -> None:
        """Keep :attr:`claims` current (called for each TenantControlPlane watch event)."""
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        if event == "DELETED":
            self.claims.pop(key, None)
        else:
            self.claims[key] = Claim.of(obj, self.config.default_datastore)

    def _effective_spec(self, obj: dict[str, Any]) -> TenantControlPlaneSpec:
        """The spec with DataStore, schema and user as pinned in status.storage at first
        provisioning (so a changed --default-datastore never moves a tenant)."""
        spec = TenantControlPlaneSpec.parse(obj)
        where = tenant_status.placement(obj, self.config.default_datastore)
        return dataclasses.replace(spec, data_store=where.data_store,
                                   data_store_schema=where.schema,
                                   data_store_username=where.user)

    async def _reconcile(self, key: Key, obj: dict[str, Any],
                         spec: TenantControlPlaneSpec) -> Result:
        namespace, name = key
        timer = StepTimer(self._observe_step)
        if obj["metadata"].get("deletionTimestamp"):
            self.metrics.tenants.forget(key)
            timer.enter("finalize")
            try:
                return await self._finalize(obj, spec)
            except Exception as e:  # the finalizer stays; say why on the object, then retry
                reason = e.reason if isinstance(e, DataStoreError) else "FinalizeError"
                self.events.emit(obj, "Warning", reason,
                                 f"cleaning up before deletion failed (retrying): "
                                 f"{type(e).__name__}: {e}")
                raise
            finally:
                timer.finish()
        timer.enter("finalizer")
        if FINALIZER not in (obj["metadata"].get("finalizers") or []):
            await self._set_finalizer(spec, present=True)
        found: dict[str, Condition] = {}
        status: dict[str, Any] = {}
        retry_after = None
        try:
            await self._steps(obj, spec, found, status, timer)
        except Waiting as w:
            found[w.condition.type] = w.condition
            retry_after = w.retry_after
        except DataStoreError as e:
            found["DataStoreReady"] = Condition("DataStoreReady", "False", e.reason, str(e))
            retry_after = 10.0
        except Exception as e:  # unexpected: say so on the object, then back off and retry
            self.events.emit(obj, "Warning", "ReconcileError", f"{type(e).__name__}: {e}")
            timer.finish()
            raise
        timer.enter("status")
        ready = await self._write_status(obj, spec, found, status)
        timer.finish()
        self._observe_outcome(key, spec, found, status)
        log.info("%s/%s reconciled in %s: Ready=%s", namespace, name, timer.summary(),
                 found["Ready"].status)
        if retry_after is not None:
            return Result(requeue_after=retry_after)
        if ready:
            return Result(requeue_after=self.config.ready_resync)
        if found["ControlPlaneAvailable"].status == "True":
            return Result(requeue_after=2.0)  # pods serve; the API probe is worth retrying
        # Waiting for pods: the Deployment's status changes wake us; the resync is a backstop.
        return Result(requeue_after=self.config.ready_resync)

    async def _steps(self, obj: dict[str, Any], spec: TenantControlPlaneSpec,
                     found: dict[str, Condition], status: dict[str, Any],
                     timer: StepTimer) -> None:
        owner = self._owner(obj)
        n = controlplane.names(spec.name)

        # 1. datastore
        timer.enter("datastore")
        driver, ds_name = await self._driver(spec)
        conflict = self._claim_conflict(obj, spec, driver)
        if conflict is not None:
            raise Waiting(Condition("DataStoreReady", "False", conflict.reason,
                                    conflict.message), 60.0)
        started = time.perf_counter()
        tenant, storage = await self._datastore(spec, driver, owner)
        self.metrics.datastore_provision.labels(driver.driver).observe(
            time.perf_counter() - started)
        schema, user = driver.physical_names(tenant)
        # Pinned: later reconciles and the finalizer use these, whatever the spec or
        # --default-datastore say then.
        status["storage"] = {"driver": driver.driver, "dataStoreName": ds_name,
                             "setup": {"schema": schema, "user": user}}
        found["DataStoreReady"] = Condition(
            "DataStoreReady", "True", "TenantProvisioned",
            f"{driver.driver} DataStore {ds_name} holds this tenant in {schema!r} as {user!r}")

        # 2. service and endpoint
        timer.enter("service")
        svc = await self._apply_checked(obj, controlplane.service(spec), owner, "Service")
        address = await self._endpoint_address(spec, svc)
        port = endpoint_port(spec, svc)
        status["controlPlaneEndpoint"] = f"{address}:{port}"
        status["kubernetesResources"] = {"service": {"name": n["service"],
                                                     "namespace": spec.namespace,
                                                     "port": port}}

        # 3. certificates and kubeconfigs (key generation runs off the event loop)
        timer.enter("certificates")
        existing = await self._secret_data(spec.namespace, n["pki"])
        sans = (address, spec.advertise_address) if spec.advertise_address else (address,)
        plan = await asyncio.to_thread(tenant_pki.plan, spec, existing, sans,
                                       self.config.key_algorithm)
        if plan.changed:
            await self._apply_secret(spec, n["pki"], plan.data, owner)
            self.events.emit(obj, "Normal", "CertificatesIssued",
                             "; ".join(f"{k}: {v}" for k, v in sorted(plan.issued.items())))
        self.metrics.tenants.observe_certificates((spec.namespace, spec.name),
                                                  certificate_expiries(plan.data))
        timer.enter("kubeconfigs")
        ca = pki.KeyPair(plan.data["ca.crt"], plan.data["ca.key"])
        # What tenants are told (admin.conf, cluster-info): advertiseAddress when given.
        endpoint = f"https://{_host(spec.advertise_address or address)}:{port}"
        local = f"https://127.0.0.1:{spec.port}"
        old_configs = (await self._secret_data(spec.namespace, n["kubeconfigs"])
                       | await self._secret_data(spec.namespace, n["admin-kubeconfig"]))
        configs = await asyncio.to_thread(tenant_kubeconfigs.plan, spec.name, ca, old_configs,
                                          endpoint, local, tenant_kubeconfigs.IDENTITIES,
                                          self.config.key_algorithm)
        internal = {k: configs.data[k] for k in ("controller-manager.conf", "scheduler.conf")}
        admin = {k: configs.data[k] for k in ("admin.conf", "super-admin.conf")}
        if configs.changed:
            await self._apply_secret(spec, n["kubeconfigs"], internal, owner)
            await self._apply_secret(spec, n["admin-kubeconfig"], admin, owner)
        status["kubeconfig"] = {"admin": {"secretName": n["admin-kubeconfig"]}}
        found["CertificatesReady"] = Condition(
            "CertificatesReady", "True", "Issued",
            "certificates and kubeconfigs valid for " + ", ".join([address, spec.name]))

        # 4. deployment and ingress
        timer.enter("deployment")
        storage_data = dict(storage.files)
        checksums = {"pki": sha(plan.data), "kubeconfigs": sha(internal),
                     "datastore": sha(storage_data | {"endpoint": storage.kine_endpoint.encode()})}
        advertise = spec.advertise_address or (address if _is_ip(address) else "$(POD_IP)")
        manifest = controlplane.deployment(spec, storage, advertise, checksums,
                                           self.config.kine_image)
        dep = await self._apply_checked(obj, manifest, owner, "Deployment")
        ingress = controlplane.ingress(spec)
        if ingress:
            await self._apply_checked(obj, ingress, owner, "Ingress")
        else:
            await self._delete_owned(Ingress, spec, n["ingress"])
        self._rejected.pop((spec.namespace, spec.name), None)  # every object accepted

        # 5. status from what runs
        timer.enter("probe")
        self._deployment_status(spec, dep, found, status)
        if found["ControlPlaneAvailable"].status == "True":
            found["APIServerReady"] = await self._probe_api(spec, endpoint, admin)
        else:
            found["APIServerReady"] = Condition("APIServerReady", "False", "NoControlPlane",
                                                "no control-plane pod is ready yet")

        # 6. inside the tenant
        timer.enter("bootstrap")
        installed = bootstrap.installed_from_status(obj.get("status") or {})
        status["addons"] = bootstrap.status_from_installed(installed)
        if found["APIServerReady"].status != "True":
            if self.watches is not None:
                await self.watches.stop((spec.namespace, spec.name))
            found["TenantBootstrapped"] = Condition(
                "TenantBootstrapped", "False", "WaitingForAPIServer",
                "the tenant API does not answer yet")
            return
        found["TenantBootstrapped"] = await self._bootstrap(
            obj, spec, plan.data["ca.crt"], endpoint, admin, installed, status)

    # ------------------------------------------------------------------ metrics

    def _observe_step(self, step: str, seconds: float) -> None:
        self.metrics.reconcile_duration.labels(CONTROLLER, step).observe(seconds)

    def _observe_outcome(self, key: Key, spec: TenantControlPlaneSpec,
                         found: dict[str, Condition], status: dict[str, Any]) -> None:
        """The tenant's status and DataStore for the gauge; Conditions False for an error."""
        version = status["kubernetesResources"]["version"]["status"]
        datastore = ((status.get("storage") or {}).get("dataStoreName") or spec.data_store
                     or self.config.default_datastore or "")
        self.metrics.tenants.observe(key, version, datastore)
        for reason in sorted({c.reason for t, c in found.items()
                              if t != "Ready" and c.status == "False"
                              and c.reason not in PROGRESS_REASONS}):
            self.metrics.reconcile_errors.labels(CONTROLLER, reason).inc()

    # ------------------------------------------------------------------ datastore

    async def _driver(self, spec: TenantControlPlaneSpec) -> tuple[Driver, str]:
        ds_name = spec.data_store or self.config.default_datastore
        if not ds_name:
            raise Waiting(Condition(
                "DataStoreReady", "False", "NoDataStore",
                "spec.dataStore is not set and the operator has no --default-datastore"), 30.0)
        try:
            datastore = await self.client.get(DataStore, ds_name)
        except ApiError as e:
            if e.status.code == 404:
                raise Waiting(Condition("DataStoreReady", "False", "DataStoreNotFound",
                                        f"DataStore {ds_name} does not exist"), 10.0) from e
            raise
        driver = await self.drivers.get(datastore)
        held = _HELD.get()
        if held is not None:
            held.append(driver)  # released when this reconcile ends
        else:
            await self.drivers.release(driver)
        return driver, ds_name

    def _physical(self, driver: Driver) -> Callable[[str, str], tuple[str, str]]:
        def physical(schema: str, user: str) -> tuple[str, str]:
            try:
                return driver.physical_names(Tenant(schema, user))
            except DataStoreError:  # an invalid name cannot collide with a valid one
                return schema, user
        return physical

    def _claim_conflict(self, obj: dict[str, Any], spec: TenantControlPlaneSpec,
                        driver: Driver) -> tenant_status.Conflict | None:
        """An older tenant on the same DataStore claims this one's schema or user."""
        mine = Claim.of(obj, self.config.default_datastore)
        return tenant_status.claim_conflict(mine, self.claims.values(), self._physical(driver))

    async def _apply_checked(self, obj: dict[str, Any], manifest: dict[str, Any],
                             owner: dict[str, Any], kind: str) -> Any:
        """Apply a rendered object; the API server refusing it (400/422: an invalid nodePort,
        toleration, resource quantity, …) becomes ControlPlaneAvailable=False InvalidSpec with
        the server's message, retried with a growing delay rather than in a hot loop."""
        meta = obj["metadata"]
        key = (meta.get("namespace") or "", meta["name"])
        try:
            applied = await self._apply(manifest, owner)
        except ApiError as e:
            if e.status.code not in (400, 422):
                raise
            failures = self._rejected.get(key, 0) + 1
            self._rejected[key] = failures
            message = (e.status.message or str(e))[:4000]
            raise Waiting(Condition(
                "ControlPlaneAvailable", "False", "InvalidSpec",
                f"the API server refused the {kind} rendered from this spec: {message}"),
                min(10.0 * 2.0 ** (failures - 1), 300.0)) from e
        return applied

    async def _datastore(self, spec: TenantControlPlaneSpec, driver: Driver,
                         owner: dict[str, Any]) -> tuple[Tenant, TenantConnection]:
        n = controlplane.names(spec.name)
        password = None
        if driver.driver != "etcd":
            password = await ensure_password(self.client, spec.namespace,
                                             f"{n['datastore']}-password",
                                             labels=controlplane.labels(spec, "secret"),
                                             owner=owner)
        tenant = Tenant(spec.data_store_schema, spec.data_store_username, password)
        await driver.ensure_tenant(tenant)
        if isinstance(driver, EtcdDriver):
            existing = await self._secret_data(spec.namespace, n["datastore"])
            pair = None
            if existing.get("tls.crt") and existing.get("tls.key"):
                why = tenant_pki.why_reissue(existing, "tls", driver.ca, datetime.now(UTC))
                candidate = pki.KeyPair(existing["tls.crt"], existing["tls.key"])
                if why is None and pki.common_name(candidate) == driver.physical_names(tenant)[1]:
                    pair = candidate
            # Issuing the client certificate generates a private key: off the event loop.
            storage = await asyncio.to_thread(driver.tenant_connection, tenant, pair)
            data = dict(storage.files)
        else:
            storage = driver.tenant_connection(tenant)
            data = dict(storage.files) | {ENDPOINT_KEY: storage.kine_endpoint.encode()}
        await self._apply_secret(spec, n["datastore"], data, owner)
        return tenant, storage

    # ------------------------------------------------------------------ endpoint

    async def _endpoint_address(self, spec: TenantControlPlaneSpec, svc: Any) -> str:
        if spec.address:
            return spec.address
        if spec.service_type == "LoadBalancer":
            ingress = (svc.status.loadBalancer.ingress if svc.status and svc.status.loadBalancer
                       else None) or []
            for entry in ingress:
                if entry.ip or entry.hostname:
                    return str(entry.ip or entry.hostname)
            raise Waiting(Condition(
                "ControlPlaneAvailable", "False", "WaitingForLoadBalancer",
                f"Service {svc.metadata.name} has no load-balancer address yet"), 5.0)
        if spec.service_type == "NodePort":
            if self.config.node_address:
                return self.config.node_address
            async for node in self.client.list(Node):
                for a in (node.status.addresses if node.status else None) or []:
                    if a.type == "InternalIP":
                        return str(a.address)
            raise Waiting(Condition("ControlPlaneAvailable", "False", "NoNodeAddress",
                                    "no node has an InternalIP for the NodePort"), 10.0)
        return str(svc.spec.clusterIP)

    # ------------------------------------------------------------------ status

    def _deployment_status(self, spec: TenantControlPlaneSpec, dep: Any,
                           found: dict[str, Condition], status: dict[str, Any]) -> None:
        s = dep.status
        ready = (s.readyReplicas or 0) if s else 0
        updated = (s.updatedReplicas or 0) if s else 0
        available = (s.availableReplicas or 0) if s else 0
        rolled_out = bool(s and s.observedGeneration == dep.metadata.generation
                          and updated == ready == spec.replicas and not s.unavailableReplicas)
        status["kubernetesResources"]["deployment"] = {
            "name": dep.metadata.name, "namespace": dep.metadata.namespace,
            "selector": ",".join(f"{k}={v}" for k, v in controlplane.selector(spec).items()),
            "replicas": (s.replicas or 0) if s else 0, "readyReplicas": ready,
            "updatedReplicas": updated, "availableReplicas": available}
        if spec.replicas == 0:
            version_status = "Sleeping"
            found["ControlPlaneAvailable"] = Condition(
                "ControlPlaneAvailable", "False", "Sleeping", "replicas is 0")
        elif ready == 0:
            version_status = "Provisioning" if updated == 0 or not s else "NotReady"
            found["ControlPlaneAvailable"] = Condition(
                "ControlPlaneAvailable", "False", "NoReadyPods",
                f"0 of {spec.replicas} control-plane pods ready")
        else:
            version_status = "Ready" if rolled_out else "Upgrading"
            found["ControlPlaneAvailable"] = Condition(
                "ControlPlaneAvailable", "True", "RolledOut" if rolled_out else "RollingOut",
                f"{ready} of {spec.replicas} control-plane pods ready")
        status["kubernetesResources"]["version"] = {"status": version_status}
        if version_status in ("Ready", "Sleeping"):
            status["kubernetesResources"]["version"]["version"] = spec.version

    async def _probe_api(self, spec: TenantControlPlaneSpec, endpoint: str,
                         admin: dict[str, bytes]) -> Condition:
        """/readyz through the exposed endpoint with the super-admin identity."""
        doc = yaml.safe_load(admin["super-admin.conf"])
        user = doc["users"][0]["user"]
        files = PrivateFiles("haku-probe-")
        try:
            ctx = ssl.create_default_context(cadata=base64.b64decode(
                doc["clusters"][0]["cluster"]["certificate-authority-data"]).decode())
            ctx.load_cert_chain(
                files.write("tls.crt", base64.b64decode(user["client-certificate-data"])),
                files.write("tls.key", base64.b64decode(user["client-key-data"])))
            async with httpx2.AsyncClient(verify=ctx, timeout=5.0, trust_env=False) as http:
                response = await http.get(f"{endpoint}/readyz")
            if response.status_code != 200:
                return Condition("APIServerReady", "False", "NotReady",
                                 f"{endpoint}/readyz answered {response.status_code}")
        except (httpx2.HTTPError, ApiError, ssl.SSLError, OSError) as e:
            return Condition("APIServerReady", "False", "Unreachable",
                             f"{endpoint}/readyz: {e}")
        finally:
            files.cleanup()
        return Condition("APIServerReady", "True", "Serving", f"{endpoint}/readyz answered ok")

    async def _bootstrap(self, obj: dict[str, Any], spec: TenantControlPlaneSpec,
                         ca_crt: bytes, endpoint: str, admin: dict[str, bytes],
                         installed: dict[str, bool], status: dict[str, Any]) -> Condition:
        """kubeadm's bootstrap objects and the addons, applied inside the tenant."""
        groups = tenant_bootstrap.bootstrap_objects(spec, ca_crt, endpoint)
        doc = yaml.safe_load(admin["super-admin.conf"])
        tenant = AsyncClient(KubeConfig.from_dict(doc), field_manager=FIELD_MANAGER,
                             timeout=httpx2.Timeout(10.0), trust_env=False)
        try:
            now, pruned = await bootstrap.reconcile(tenant, groups, installed)
        except bootstrap.BootstrapFailed as e:
            return Condition("TenantBootstrapped", "False", e.reason, e.message)
        except (httpx2.HTTPError, ApiError, OSError) as e:
            return Condition("TenantBootstrapped", "False", "Unreachable",
                             f"applying inside the tenant: {e}")
        finally:
            await tenant.close()
        status["addons"] = bootstrap.status_from_installed(now)
        if pruned:
            self.events.emit(obj, "Normal", "AddonRemoved",
                             "removed from the tenant: " + ", ".join(pruned))
        if self.watches is not None and self.config.watch_tenants:
            self.watches.ensure((spec.namespace, spec.name), doc)
        addons = [a for a in bootstrap.ADDONS if now.get(a)]
        return Condition("TenantBootstrapped", "True", "Bootstrapped",
                         "kubeadm's bootstrap objects" +
                         (" and " + ", ".join(addons) if addons else "") +
                         " applied; nodes can join")

    async def _write_status(self, obj: dict[str, Any], spec: TenantControlPlaneSpec,
                            found: dict[str, Condition], status: dict[str, Any]) -> bool:
        """Apply the status; True if the tenant is Ready."""
        old = (obj.get("status") or {}).get("conditions") or []
        for ctype in CONDITION_TYPES[:-1]:
            found.setdefault(ctype, Condition(ctype, "Unknown", "Pending",
                                              "an earlier step has not finished"))
        failing = [c for t, c in found.items() if t != "Ready" and c.status != "True"]
        found["Ready"] = (Condition("Ready", "True", "Ready",
                                    "the tenant API serves through its endpoint")
                          if not failing else
                          Condition("Ready", "False", failing[0].reason, failing[0].message))
        merged = old
        for c in found.values():
            merged = conditions.merge(merged, c, spec.generation)
        for c in found.values():
            before = conditions.find(old, c.type)
            if before is None or before.get("status") != c.status or \
                    before.get("reason") != c.reason:
                self.events.emit(obj, "Normal" if c.status == "True" else "Warning",
                                 c.reason, f"{c.type}={c.status}: {c.message}")
        status["conditions"] = merged
        status["observedGeneration"] = spec.generation
        previous = obj.get("status") or {}
        status.setdefault("kubernetesResources", {}).setdefault(
            "version", {"status": tenant_status.carried_version_status(previous, spec.replicas)})
        # Start from the previous status: what this reconcile did not get to keeps its value.
        full = tenant_status.merge_status(previous, status)
        status.clear()
        status.update(full)
        patch = TenantControlPlane.Status(
            metadata=ObjectMeta(name=spec.name, namespace=spec.namespace), status=status)
        await self.client.apply(patch, field_manager=FIELD_MANAGER, force=True)
        return found["Ready"].status == "True"

    # ------------------------------------------------------------------ delete

    async def _set_finalizer(self, spec: TenantControlPlaneSpec, present: bool) -> None:
        patch = TenantControlPlane(
            metadata=ObjectMeta(name=spec.name, namespace=spec.namespace,
                                finalizers=[FINALIZER] if present else []))
        await self.client.apply(patch, field_manager=FIELD_MANAGER, force=True)

    async def _finalize(self, obj: dict[str, Any], spec: TenantControlPlaneSpec) -> Result:
        self._rejected.pop((spec.namespace, spec.name), None)
        if self.watches is not None:
            await self.watches.stop((spec.namespace, spec.name))
        if FINALIZER not in (obj["metadata"].get("finalizers") or []):
            return Result()
        try:
            driver, ds_name = await self._driver(spec)
        except Waiting as w:
            # No DataStore left to clean: nothing of this tenant can remain in it.
            self.events.emit(obj, "Warning", w.condition.reason,
                             f"{w.condition.message}; removing the finalizer without cleanup")
        else:
            try:
                await self._drop_datastore_tenant(obj, spec, driver, ds_name)
            except InvalidName as e:
                # A name the driver refuses (reserved, malformed) was never provisioned.
                self.events.emit(obj, "Warning", e.reason,
                                 f"{e}; nothing was provisioned, removing the finalizer")
        await self._set_finalizer(spec, present=False)
        return Result()

    async def _drop_datastore_tenant(self, obj: dict[str, Any], spec: TenantControlPlaneSpec,
                                     driver: Driver, ds_name: str) -> None:
        tenant = Tenant(spec.data_store_schema, spec.data_store_username)
        # Read fresh (not the watch's view): deleting drops data for good.
        others = [Claim.of(t.to_dict(), self.config.default_datastore)  # type: ignore[no-untyped-call]
                  async for t in self.client.list(TenantControlPlane, namespace=ALL_NS)]
        holders = tenant_status.live_holders(Claim.of(obj, self.config.default_datastore),
                                             others, self._physical(driver))
        if holders:
            self.events.emit(obj, "Warning", "DataStoreTenantKept", (
                f"kept {driver.physical_names(tenant)[0]!r} in {ds_name}: also used by " +
                ", ".join(f"{o.namespace}/{o.name}" for o in holders)))
            return
        await driver.delete_tenant(tenant)
        self.events.emit(obj, "Normal", "DataStoreTenantDeleted",
                         f"removed {driver.physical_names(tenant)[0]!r} from {ds_name}")

    async def _delete_owned(self, resource: Any, spec: TenantControlPlaneSpec,
                            name: str) -> None:
        try:
            current = await self.client.get(resource, name, namespace=spec.namespace)
        except ApiError as e:
            if e.status.code == 404:
                return
            raise
        labels = current.metadata.labels or {}
        if labels.get(controlplane.TENANT_LABEL) == spec.name:
            await self.client.delete(resource, name, namespace=spec.namespace)

    async def close(self) -> None:
        if self.watches is not None:
            await self.watches.close()
        await self.drivers.close()


def endpoint_port(spec: TenantControlPlaneSpec, svc: Any) -> int:
    """The port clients dial: for NodePort the Service's node port (networkProfile.port when
    given, else the one the API server allocated), else networkProfile.port."""
    if spec.service_type == "NodePort":
        ports = getattr(getattr(svc, "spec", None), "ports", None) or []
        for p in ports:
            if p.name == "kube-apiserver" and p.nodePort:
                return int(p.nodePort)
    return spec.port


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address and _is_ip(address) else address

