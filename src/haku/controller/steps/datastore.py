"""The tenant's space and user in its DataStore, owned by the TenantControlPlane's uid.

Who owns a space is recorded in the datastore itself (haku.datastore: etcd owner keys,
PostgreSQL comments, MariaDB bookkeeping rows), so it survives operator restarts, holds across
two DataStores that point at one server, and settles races: the first tenant to record itself
wins, the other gets ``SchemaInUse``/``UserInUse`` naming the holder. The place is pinned in
``status.storage`` once provisioned; only a pinned tenant's finalizer deletes anything, and
the driver deletes only what is recorded as that tenant's.

Routine reconciles run no DDL: ``status.storage.setup.checksum`` covers the DataStore's
settings, the names, the owner and the password; while it matches, a cheap read-only check
(at most every ``--verify-every``) stands in for the full provisioning.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, datetime
from typing import Any

from lightkube import ALL_NS
from lightkube.resources.core_v1 import Secret

from haku.api.conditions import Condition
from haku.api.resources import TenantControlPlane
from haku.controller.credentials import ensure_password
from haku.controller.pipeline import Context, Fail, Wait
from haku.controller.steps.deps import StepBase
from haku.datastore import DataStoreError, Driver, Tenant
from haku.datastore.base import InUse, InvalidName
from haku.datastore.etcd import EtcdDriver
from haku.render import controlplane, migration, pki, tenant_pki, tenant_status
from haku.render.kine import ENDPOINT_KEY
from haku.render.storage import TenantConnection

CONDITION = "DataStoreReady"
# On a TenantControlPlane: "true" lets its finalizer go without deleting its data from a
# DataStore that is gone for good or unreachable (the data, if any, stays where it was).
ABANDON = "haku.dev/abandon-datastore-data"


def checksum(fingerprint: str, names: tuple[str, str], owner: str,
             password: str | None) -> str:
    h = hashlib.sha256()
    for part in (fingerprint, *names, owner, password or ""):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:32]


class DataStoreStep(StepBase):
    name = "datastore"
    condition = CONDITION

    # ------------------------------------------------------------------ apply

    async def apply(self, ctx: Context) -> None:
        where = tenant_status.placement(ctx.obj, self.deps.config.default_datastore)
        if not where.data_store:
            raise Wait(Condition(
                CONDITION, "False", "NoDataStore",
                "spec.dataStore is not set and the operator has no --default-datastore"), 30.0)
        datastore = await self.deps.drivers.read(where.data_store)
        if datastore.metadata.deletionTimestamp and not where.pinned:
            raise Wait(Condition(
                CONDITION, "False", "DataStoreDeleting",
                f"DataStore {where.data_store} is being deleted: no new tenant goes there"),
                30.0)
        ctx.datastore = where.data_store
        try:
            async with self.deps.drivers.lease(datastore) as driver:
                await self._provision(ctx, driver, where)
        except InUse as e:
            raise Wait(Condition(CONDITION, "False", e.reason,
                                 f"{e} ({await self._holder(e.holder)})"), 60.0) from e
        except InvalidName as e:
            raise Fail(Condition(CONDITION, "False", e.reason, str(e))) from e
        except DataStoreError as e:
            raise Wait(Condition(CONDITION, "False", e.reason, str(e)), 10.0) from e

    async def _provision(self, ctx: Context, driver: Driver,
                         where: tenant_status.Placement) -> None:
        spec = ctx.spec
        n = controlplane.names(spec.name)
        password = None
        if driver.driver != "etcd":
            await self.deps.claim(ctx, Secret, f"{n['datastore']}-password")
            password = await ensure_password(self.deps.client, spec.namespace,
                                             f"{n['datastore']}-password",
                                             labels=controlplane.labels(spec, "secret"),
                                             owner=ctx.owner)
        tenant = Tenant(where.schema, where.user, password, owner=spec.uid)
        schema, user = driver.physical_names(tenant)
        sums = checksum(self.deps.drivers.fingerprint(driver), (schema, user), spec.uid,
                        password)
        if not await self._current(ctx, driver, tenant, sums):
            self.deps.fence.check()  # never provision for a Lease this process lost
            async with self.deps.drivers.gate(where.data_store or ""):
                started = time.perf_counter()
                await driver.ensure_tenant(tenant)
                self.deps.metrics.datastore_provision.labels(driver.driver).observe(
                    time.perf_counter() - started)
            self.deps.verified[ctx.key] = time.monotonic()
        ctx.storage = await self._connection(ctx, driver, tenant)
        # Pinned: later reconciles and the finalizer use these, whatever the spec or
        # --default-datastore say then.
        ctx.status["storage"] = {
            "driver": driver.driver, "dataStoreName": where.data_store,
            "setup": {"schema": schema, "user": user, "checksum": sums},
            "requested": {"schema": where.schema, "user": where.user},
            "owner": spec.uid}
        ctx.conditions[CONDITION] = Condition(
            CONDITION, "True", "TenantProvisioned",
            f"{driver.driver} DataStore {where.data_store} holds this tenant in {schema!r} "
            f"as {user!r}")

    async def _current(self, ctx: Context, driver: Driver, tenant: Tenant, sums: str) -> bool:
        """True if the tenant is provisioned as ``sums`` says and nothing suggests otherwise
        (confirmed within ``verify_every`` or by the driver's read-only check)."""
        setup = ((ctx.previous_status.get("storage") or {}).get("setup") or {})
        if setup.get("checksum") != sums:
            return False
        confirmed = self.deps.verified.get(ctx.key)
        if confirmed is not None and \
                time.monotonic() - confirmed < self.deps.config.verify_every:
            return True
        verify = getattr(driver, "verify_tenant", None)
        if verify is None or not await verify(tenant):
            return False
        self.deps.verified[ctx.key] = time.monotonic()
        return True

    async def _connection(self, ctx: Context, driver: Driver,
                          tenant: Tenant) -> TenantConnection:
        """The tenant's connection (its etcd client certificate, or kine's endpoint) in the
        ``<name>-datastore`` Secret, written only when it changes."""
        spec = ctx.spec
        secret = controlplane.names(spec.name)["datastore"]
        existing = await self.deps.secret_data(ctx, secret)
        if isinstance(driver, EtcdDriver):
            pair = None
            if existing.get("tls.crt") and existing.get("tls.key"):
                why = tenant_pki.why_reissue(existing, "tls", driver.ca, datetime.now(UTC))
                candidate = pki.KeyPair(existing["tls.crt"], existing["tls.key"])
                if why is None and \
                        pki.common_name(candidate) == driver.physical_names(tenant)[1]:
                    pair = candidate
            # Issuing the client certificate generates a private key: off the event loop.
            storage = await asyncio.to_thread(driver.tenant_connection, tenant, pair)
            data = dict(storage.files)
        else:
            storage = driver.tenant_connection(tenant)
            data = dict(storage.files) | {ENDPOINT_KEY: storage.kine_endpoint.encode()}
        if data != existing:
            await self.deps.apply_secret(ctx, secret, data)
        return storage

    async def _holder(self, uid: str) -> str:
        """Who a datastore owner record names, for the Condition's message."""
        async for t in self.deps.client.list(TenantControlPlane, namespace=ALL_NS):
            meta = t.metadata
            if meta is not None and meta.uid == uid:
                return f"held by TenantControlPlane {meta.namespace}/{meta.name}"
        return (f"held by a TenantControlPlane that no longer exists (uid {uid}), whose data "
                "was kept: remove it from the datastore, or choose another name")

    # ------------------------------------------------------------------ cleanup

    async def cleanup(self, ctx: Context) -> None:
        """Drop the tenant's data, once the control plane is stopped (the deployment step's
        cleanup runs before). Only a tenant that was provisioned (pinned) deletes anything,
        and the driver deletes only what is recorded as this tenant's."""
        where = tenant_status.placement(ctx.obj, self.deps.config.default_datastore)
        if not where.pinned or not where.data_store:
            return  # never provisioned: nothing of this tenant is in any DataStore
        annotations = ctx.obj["metadata"].get("annotations") or {}
        if annotations.get(ABANDON) == "true":
            self.deps.events.emit(ctx.obj, "Warning", "DataStoreDataAbandoned", (
                f"{ABANDON}=true: leaving this tenant's data in DataStore {where.data_store} "
                f"({where.schema!r}) as it is"))
            return
        await self._delete_space(ctx, where.data_store, where.schema, where.user)
        # A migration under way holds a second space: the target before its switch, the
        # source after it (the pods are gone by now either way).
        record = migration.migration_of(ctx.obj.get("status"))
        if migration.in_progress(record):
            side = "to" if record.get("phase") in migration.CANCELLABLE else "from"
            other = (record.get(side) or {}).get("dataStoreName")
            if other and other != where.data_store:
                await self._delete_space(ctx, other, where.schema, where.user)

    async def _delete_space(self, ctx: Context, name: str, schema: str, user: str) -> None:
        """Delete what DataStore ``name`` records as this tenant's under these names."""
        try:
            datastore = await self.deps.drivers.read(name)
        except Wait as w:
            raise self._blocked(ctx, w.condition.reason, w.condition.message) from None
        try:
            async with self.deps.drivers.lease(datastore) as driver:
                tenant = Tenant(schema, user, owner=ctx.spec.uid)
                self.deps.fence.check()
                async with self.deps.drivers.gate(name):
                    await driver.delete_tenant(tenant)
                physical = driver.physical_names(tenant)[0]
        except InvalidName as e:
            self.deps.events.emit(ctx.obj, "Warning", e.reason,
                                  f"{e}; nothing was provisioned under it")
            return
        except DataStoreError as e:
            raise self._blocked(ctx, e.reason, str(e)) from e
        self.deps.verified.pop(ctx.key, None)
        self.deps.events.emit(ctx.obj, "Normal", "DataStoreTenantDeleted",
                              f"removed {physical!r} from {name}")

    def _blocked(self, ctx: Context, reason: str, message: str) -> Wait:
        text = (f"cleaning up before deletion failed (retrying): {message}; the finalizer "
                f"stays. If the DataStore is gone for good, annotate this TenantControlPlane "
                f"{ABANDON}=true to delete it without cleanup")
        self.deps.events.emit(ctx.obj, "Warning", reason, text)
        return Wait(Condition(CONDITION, "False", reason, text), 10.0)


def storage_of(obj: dict[str, Any]) -> dict[str, Any]:
    storage: dict[str, Any] = (obj.get("status") or {}).get("storage") or {}
    return storage
