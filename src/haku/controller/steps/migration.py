"""``Migrating``: a tenant's data moved to the DataStore ``spec.dataStore`` now names, phase by
phase (haku.render.migration has the phases and why each is safe to repeat).

Informational: the tenant keeps serving reads throughout and writes are refused only from
Freezing to Unfreezing. Absent for a tenant that never moved; after a move it stays False with
reason Completed (or Cancelled) and what happened.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import yaml
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.admissionregistration_v1 import (
    ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
)
from lightkube.resources.core_v1 import Pod

from haku.api.conditions import Condition
from haku.controller.credentials import ensure_password
from haku.controller.pipeline import Context, Wait
from haku.controller.resources import FIELD_MANAGER
from haku.controller.steps.deps import StepBase
from haku.controller.steps.write_permissions import enforced
from haku.datastore import DataStoreError, Driver, Entry, Tenant
from haku.datastore.base import InUse
from haku.datastore.digest import Digest
from haku.render import controlplane, write_permissions
from haku.render import migration as mg

CONDITION = "Migrating"
log = logging.getLogger(__name__)


class MigrationStep(StepBase):
    name = "migration"
    condition = CONDITION
    informational = True

    async def apply(self, ctx: Context) -> None:
        storage = dict(ctx.previous_status.get("storage") or {})
        record = mg.migration_of(ctx.previous_status)
        wanted = mg.wanted_datastore(ctx.obj, self.deps.config.default_datastore)
        action = mg.decide(wanted, storage.get("dataStoreName"), record)
        if action == "none":
            if record.get("phase") in mg.ENDED:
                ctx.conditions[CONDITION] = self._ended(record)
            else:
                ctx.removed_conditions.add(CONDITION)
            return
        if action == "start":
            assert wanted is not None
            record = mg.started(storage, wanted)
            self.deps.events.emit(ctx.obj, "Normal", "MigrationStarted",
                                  f"moving this tenant's data {mg.describe(record)}")
        try:
            if action == "cancel":
                await self._cancel(ctx, record)
            else:
                await self._advance(ctx, record)
        except Wait:
            self._save(ctx, record)  # what this pass got done stays done
            raise
        except DataStoreError as e:
            self._save(ctx, record)
            raise Wait(Condition(CONDITION, "True", record["phase"],
                                 f"{mg.describe(record)}: {e.reason}: {e}"), 10.0) from e

    # ------------------------------------------------------------------ phases

    async def _advance(self, ctx: Context, record: dict[str, Any]) -> None:
        """Run phases until one has to wait (its Condition says why) or the move is over."""
        while record["phase"] not in mg.ENDED:
            phase = record["phase"]
            log.info("migration phase %s of %s/%s %s", phase, ctx.spec.namespace, ctx.spec.name,
                     mg.describe(record))
            waiting = await getattr(self, "_" + phase.lower())(ctx, record)
            self._save(ctx, record)
            if waiting is not None:
                ctx.requeue_within = 1.0  # writes are refused while most phases wait
                ctx.conditions[CONDITION] = Condition(
                    CONDITION, "True", record["phase"], f"{mg.describe(record)}: {waiting}")
                return
            if record["phase"] != phase:
                self.deps.events.emit(ctx.obj, "Normal", f"Migration{record['phase']}",
                                      f"{mg.describe(record)}: {record['phase'].lower()}")
        ctx.conditions[CONDITION] = self._ended(record)

    async def _provisioning(self, ctx: Context, record: dict[str, Any]) -> str | None:
        target = record["to"]["dataStoreName"]
        datastore = await self.deps.drivers.read(target)
        if datastore.metadata.deletionTimestamp:
            return f"DataStore {target} is being deleted: no tenant moves there"
        async with self._driver(record["from"]["dataStoreName"]) as src, \
                self._driver(target) as driver:
            tenant = await self._tenant(ctx, driver)
            if same_space(src, driver, tenant):
                return (f"DataStores {record['from']['dataStoreName']} and {target} reach the "
                        "same server, where this tenant's space would be the same: nothing to "
                        "move (set spec.dataStore back to cancel)")
            self.deps.fence.check()
            try:
                await driver.ensure_tenant(tenant)
            except InUse as e:
                return f"the target DataStore refuses the space: {e}"
            schema, user = driver.physical_names(tenant)
            record["to"] |= {"driver": driver.driver, "schema": schema, "user": user}
        record["phase"] = "Freezing"
        return None

    async def _freezing(self, ctx: Context, record: dict[str, Any]) -> str | None:
        if not self._serving(ctx):
            return "the tenant's API server does not answer: its writes cannot be frozen"
        objs = write_permissions.migration_freeze(ctx.spec, record["from"]["dataStoreName"],
                                                  record["to"]["dataStoreName"])
        async with self._tenant_api(ctx) as api:
            for obj in objs:
                await api.apply(from_dict(obj), force=True)
        not_yet = await enforced(ctx.operator_endpoint, ctx.super_admin, "CREATE",
                                 write_permissions.MIGRATION_MARK)
        if not_yet:
            return f"the freeze is applied, not yet enforced ({not_yet})"
        not_yet = await self._every_replica_refuses(ctx)
        if not_yet:
            return f"the freeze is applied, not yet enforced by every replica ({not_yet})"
        record["frozenAt"] = mg.now()
        record["phase"] = "Copying"
        return None

    async def _copying(self, ctx: Context, record: dict[str, Any]) -> str | None:
        record["attempts"] = int(record.get("attempts") or 0) + 1
        src_name, dst_name = record["from"]["dataStoreName"], record["to"]["dataStoreName"]
        digest = Digest()
        async with self._driver(src_name) as src, self._driver(dst_name) as dst:
            source, target = await self._tenant(ctx, src), await self._tenant(ctx, dst)
            self.deps.fence.check()
            await dst.clear(target)

            async def entries() -> AsyncIterator[Entry]:
                async for entry in src.snapshot(source):
                    if not mg.copied(entry.key):
                        continue
                    if mg.compared(entry.key):
                        digest.add(entry)
                    yield entry

            keys = await dst.load(target, entries())
        record |= {"keys": keys, "digest": f"{digest.entries}:{digest.total:064x}",
                   "phase": "Verifying"}
        return None

    async def _verifying(self, ctx: Context, record: dict[str, Any]) -> str | None:
        copied = record.get("digest") or ""
        async with self._driver(record["from"]["dataStoreName"]) as src, \
                self._driver(record["to"]["dataStoreName"]) as dst:
            now_source = await _digest(src, await self._tenant(ctx, src))
            in_target = await _digest(dst, await self._tenant(ctx, dst))
        if now_source == copied and in_target == copied:
            record |= {"phase": "Switching", "message": None}
            return None
        why = ("the source changed after the copy (a write got through the freeze)"
               if now_source != copied else "the target does not hold what was copied")
        record |= {"phase": "Copying", "message": why}
        if int(record.get("attempts") or 0) >= mg.COPY_ATTEMPTS:
            return (f"{why}; copied {record['attempts']} times, copying again (cancel by "
                    f"setting spec.dataStore back to {record['from']['dataStoreName']})")
        return None

    async def _switching(self, ctx: Context, record: dict[str, Any]) -> str | None:
        storage = ctx.status.get("storage") or {}
        target = record["to"]
        if storage.get("dataStoreName") != target["dataStoreName"]:
            # From the next pass on the datastore step provisions and connects the target and
            # the Deployment rolls onto it. The checksum is left to that step to confirm.
            ctx.status["storage"] = {
                "driver": target["driver"], "dataStoreName": target["dataStoreName"],
                "setup": {"schema": target["schema"], "user": target["user"], "checksum": ""},
                "requested": {"schema": record["from"]["schema"],
                              "user": record["from"]["user"]},
                "owner": ctx.spec.uid}
            record["switchedAt"] = mg.now()
            return "the Deployment moves to the target DataStore"
        rollout = ctx.rollout
        if rollout is None or not (rollout.rolled_out and rollout.ready == rollout.replicas):
            return "waiting for every control-plane pod to run on the target DataStore"
        if not self._serving(ctx):
            return "waiting for the tenant's API server on the target DataStore"
        # A terminating pod is in no Deployment count but still serves (its shutdown delay,
        # then its in-flight requests) from the source: the freeze stays until it is gone, and
        # the source is dropped only after that (lifting the freeze through such a pod would
        # open the source to writes that the drop then loses).
        old = await self._pods_on_the_source(ctx)
        if old:
            return (f"waiting for {old} control-plane pod(s) still on "
                    f"{record['from']['dataStoreName']} to stop")
        record["phase"] = "Unfreezing"
        return None

    async def _unfreezing(self, ctx: Context, record: dict[str, Any]) -> str | None:
        if not self._serving(ctx):
            return "the tenant's API server does not answer: the freeze cannot be lifted"
        async with self._tenant_api(ctx) as api:
            await _delete_freeze(api)
        still = await enforced(ctx.operator_endpoint, ctx.super_admin, "CREATE",
                               write_permissions.MIGRATION_MARK)
        if still is None:
            return "the freeze is deleted; the tenant's API server still refuses writes"
        record |= {"unfrozenAt": mg.now(), "phase": "Cleaning"}
        return None

    async def _cleaning(self, ctx: Context, record: dict[str, Any]) -> str | None:
        async with self._driver(record["from"]["dataStoreName"]) as src:
            source = await self._tenant(ctx, src)
            if await src.holder(source) == (None, None):
                # Dropped already (an operator stopped after the drop, before the status).
                record |= {"completedAt": mg.now(), "phase": "Completed"}
                return None
            if await _digest(src, source) != record.get("digest"):
                self.deps.events.emit(ctx.obj, "Warning", "MigrationSourceChanged", (
                    f"{mg.describe(record)}: the source space changed after the copy; those "
                    "writes (accepted by a pod that had not yet seen the freeze) were not "
                    "carried over"))
            self.deps.fence.check()
            await src.delete_tenant(Tenant(source.schema, source.user, owner=ctx.spec.uid))
        record |= {"completedAt": mg.now(), "phase": "Completed"}
        return None

    async def _cancel(self, ctx: Context, record: dict[str, Any]) -> None:
        if record["phase"] != "Provisioning":
            if not self._serving(ctx):
                raise Wait(Condition(CONDITION, "True", "Cancelling", (
                    f"{mg.describe(record)} is cancelled; the freeze is lifted once the "
                    "tenant's API server answers")), 5.0)
            async with self._tenant_api(ctx) as api:
                await _delete_freeze(api)
        async with self._driver(record["to"]["dataStoreName"]) as dst:
            target = await self._tenant(ctx, dst)
            self.deps.fence.check()
            await dst.delete_tenant(Tenant(target.schema, target.user, owner=ctx.spec.uid))
        record |= {"phase": "Cancelled", "cancelledAt": mg.now()}
        self._save(ctx, record)
        self.deps.events.emit(ctx.obj, "Normal", "MigrationCancelled",
                              f"{mg.describe(record)}: cancelled; the target space is deleted")
        ctx.conditions[CONDITION] = self._ended(record)
        ctx.requeue_within = 1.0  # a move to a third DataStore starts next

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _save(ctx: Context, record: dict[str, Any]) -> None:
        ctx.status.setdefault("storage", {})["migration"] = record

    @staticmethod
    def _ended(record: dict[str, Any]) -> Condition:
        if record.get("phase") == "Cancelled":
            return Condition(CONDITION, "False", "Cancelled",
                             f"the move {mg.describe(record)} was cancelled at "
                             f"{record.get('cancelledAt')}")
        refused = mg.writes_refused_seconds(record)
        return Condition(CONDITION, "False", "Completed", (
            f"moved {mg.describe(record)} at {record.get('completedAt')}: "
            f"{record.get('keys')} keys; writes refused for "
            + (f"{refused:.0f} s" if refused is not None else "an unknown time")))

    async def _pods(self, ctx: Context) -> list[Pod]:
        return [p async for p in self.deps.client.list(
            Pod, namespace=ctx.spec.namespace, labels=dict(controlplane.selector(ctx.spec)))]

    async def _every_replica_refuses(self, ctx: Context) -> str | None:
        """None once the API server of every control-plane pod refuses a dry-run write with
        the freeze's message, each asked at its pod IP (haku.render.migration.api_servers has
        why); else the first pod that does not yet, and what it answered."""
        for pod, url in mg.api_servers([p.to_dict() for p in await self._pods(ctx)]):
            not_yet = await enforced(url, ctx.super_admin, "CREATE",
                                     write_permissions.MIGRATION_MARK, server_name="localhost")
            if not_yet:
                return f"pod {pod}: {not_yet}"
        return None

    async def _pods_on_the_source(self, ctx: Context) -> int:
        """The tenant's control-plane pods not of the Deployment's current connection: those of
        an older template (by its datastore checksum) and any being deleted."""
        key = f"{controlplane.CHECKSUM_PREFIX}datastore"
        template = ctx.need(ctx.deployment, "the Deployment").spec.template.metadata
        current = (template.annotations or {}).get(key)
        metas = [p.metadata for p in await self._pods(ctx) if p.metadata]
        return sum(1 for m in metas
                   if m.deletionTimestamp or (m.annotations or {}).get(key) != current)

    @staticmethod
    def _serving(ctx: Context) -> bool:
        serving = ctx.conditions.get("APIServerReady")
        return bool(serving and serving.status == "True" and ctx.super_admin
                    and ctx.operator_endpoint)

    @contextlib.asynccontextmanager
    async def _driver(self, name: str) -> AsyncIterator[Driver]:
        datastore = await self.deps.drivers.read(name)
        async with self.deps.drivers.lease(datastore) as driver:
            yield driver

    async def _tenant(self, ctx: Context, driver: Driver) -> Tenant:
        """The tenant's identity on ``driver``: the names it asked for, carried over to the
        target, its password (SQL: the one Secret both sides share), its uid as owner."""
        requested = (ctx.previous_status.get("storage") or {}).get("requested") or {}
        schema = requested.get("schema") or ctx.spec.uid
        password = None
        if driver.driver != "etcd":
            n = controlplane.names(ctx.spec.name)
            password = await ensure_password(self.deps.client, ctx.spec.namespace,
                                             f"{n['datastore']}-password",
                                             labels=controlplane.labels(ctx.spec, "secret"),
                                             owner=ctx.owner)
        return Tenant(schema, requested.get("user") or schema, password, owner=ctx.spec.uid)

    @contextlib.asynccontextmanager
    async def _tenant_api(self, ctx: Context) -> AsyncIterator[AsyncClient]:
        self.deps.fence.check()  # the tenant's API is not behind the admin client's fence
        doc: dict[str, Any] = yaml.safe_load(ctx.super_admin)
        api = AsyncClient(KubeConfig.from_dict(doc), field_manager=FIELD_MANAGER,
                          timeout=httpx2.Timeout(10.0), trust_env=False)
        try:
            yield api
        except (httpx2.HTTPError, ApiError, OSError) as e:
            raise Wait(Condition(CONDITION, "True", "Unreachable",
                                 f"the tenant's API server: {e}"), 5.0) from e
        finally:
            await api.close()


def same_space(a: Driver, b: Driver, tenant: Tenant) -> bool:
    """Whether two DataStores put ``tenant`` in one place (one server, shared endpoints, and
    the same stored names): a copy from one to the other would clear its own source."""
    ends_a = set(getattr(getattr(a, "settings", None), "endpoints", ()))
    ends_b = set(getattr(getattr(b, "settings", None), "endpoints", ()))
    return (a.driver == b.driver and bool(ends_a & ends_b)
            and a.physical_names(tenant) == b.physical_names(tenant))


async def _digest(driver: Driver, tenant: Tenant) -> str:
    digest = Digest()
    async for entry in driver.snapshot(tenant):
        if mg.compared(entry.key):
            digest.add(entry)
    return f"{digest.entries}:{digest.total:064x}"


async def _delete_freeze(api: AsyncClient) -> None:
    for kind in (ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicy):
        try:
            await api.delete(kind, write_permissions.MIGRATION_NAME)
        except ApiError as e:
            if e.status.code != 404:
                raise
