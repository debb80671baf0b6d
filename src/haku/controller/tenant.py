"""The TenantControlPlane reconciler: reads the object, runs the pipeline of steps
(haku.controller.steps) or, on delete, their cleanups in reverse, writes the status and says
when to look again (haku.controller.pipeline.RequeuePolicy).

The first status (``Provisioning``, every Condition ``Unknown``) is written before any key
is generated, so ``kubectl get tcp`` shows a new tenant at once. Owned objects carry an owner
reference, so deleting the TenantControlPlane removes them; what lives outside the admin
cluster (the datastore space) is removed by the finalizer, after the control plane stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.models.meta_v1 import ObjectMeta

from haku.api import conditions
from haku.api.conditions import Condition
from haku.api.resources import TenantControlPlane
from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.controller import logs, steps
from haku.controller.config import OperatorConfig
from haku.controller.drivers import DriverCache
from haku.controller.events import EventRecorder
from haku.controller.fencing import LostLeadership
from haku.controller.metrics import Metrics
from haku.controller.pipeline import (
    Context,
    Fail,
    Fence,
    Outcome,
    RequeuePolicy,
    Step,
    Unfenced,
    Wait,
    condition_types,
    run,
)
from haku.controller.resources import FIELD_MANAGER
from haku.controller.runtime import Key, Result
from haku.controller.steps.finalizer import FINALIZER
from haku.controller.tenant_watches import TenantWatches
from haku.render import InvalidSpec, ca_rotation, tenant_status, upgrade

__all__ = ["CONDITION_TYPES", "FINALIZER", "READY_TYPES", "OperatorConfig",
           "TenantReconciler"]

log = logging.getLogger("haku.tenant")

CONDITION_TYPES = condition_types(steps.STEPS)
# The Conditions Ready stands for (every step's but the informational ones), then Ready.
READY_TYPES = condition_types([s for s in steps.STEPS if not s.informational])
INFORMATIONAL = frozenset(CONDITION_TYPES) - frozenset(READY_TYPES)
# Reasons of a False Condition that mean "not there yet", not "something is wrong": every
# other False reason counts in haku_reconcile_errors_total.
PROGRESS_REASONS = frozenset({"Pending", "NoReadyPods", "NoControlPlane", "Sleeping",
                              "WaitingForLoadBalancer", "WaitingForAPIServer",
                              "DataStoreBusy", "Stopping", "NoAgentsScheduled",
                              "WaitingForGateway"})
CONTROLLER = "tenantcontrolplane"
# The longest wait before probing again a tenant whose pods serve but whose API did not answer.
PROBE_RETRY_CAP = 3.0
# The reasons of the first status (before any step ran).
FIRST_REASONS = frozenset({"Pending", "Provisioning"})


def bare(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with only the spec fields a cleanup needs (where its data lives), for a
    TenantControlPlane being deleted whose spec cannot be read."""
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    kept = {k: v for k, v in (spec or {}).items()
            if k in ("dataStore", "dataStoreSchema", "dataStoreUsername") and isinstance(v, str)}
    return {**obj, "spec": {**kept, "kubernetes": {"version": "v0.0.0"}, "controlPlane": {}}}


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


def first_status(generation: int | None) -> dict[str, Any]:
    """A new tenant's status: ``Provisioning``, every other Condition Unknown."""
    found = {t: Condition(t, "Unknown", "Pending", "not looked at yet")
             for t in READY_TYPES[:-1]}
    found["Ready"] = Condition("Ready", "False", "Provisioning",
                               "the tenant is being provisioned")
    merged: list[dict[str, Any]] = []
    for c in found.values():
        merged = conditions.merge(merged, c, generation)
    return {"conditions": merged, "observedGeneration": generation,
            "kubernetesResources": {"version": {"status": "Provisioning"}}}


class TenantReconciler:
    def __init__(self, client: AsyncClient, config: OperatorConfig,
                 recorder: EventRecorder, metrics: Metrics | None = None,
                 fence: Fence | None = None) -> None:
        self.deps = steps.Deps(client, config, recorder, metrics or Metrics(),
                               DriverCache(client, config.datastore_concurrency),
                               fence or Unfenced())
        self.steps: list[Step] = steps.pipeline(self.deps)
        self.requeue = RequeuePolicy()
        # First statuses written straight from watch events (:meth:`announce`).
        self._announcing: set[Key] = set()
        self._announce_tasks: set[asyncio.Task[None]] = set()
        self._announce_gate = asyncio.Semaphore(4)

    # The operator sets these once its work queue and Lease exist.
    @property
    def watches(self) -> TenantWatches | None:
        return self.deps.watches

    @watches.setter
    def watches(self, watches: TenantWatches | None) -> None:
        self.deps.watches = watches

    @property
    def fence(self) -> Fence:
        return self.deps.fence

    @fence.setter
    def fence(self, fence: Fence) -> None:
        self.deps.fence = fence

    @property
    def client(self) -> AsyncClient:
        return self.deps.client

    @property
    def config(self) -> OperatorConfig:
        return self.deps.config

    @property
    def events(self) -> EventRecorder:
        return self.deps.events

    @property
    def metrics(self) -> Metrics:
        return self.deps.metrics

    # ------------------------------------------------------------------ reconcile

    async def reconcile(self, key: Key) -> Result:
        try:
            result = await self._reconcile(key)
        finally:
            # Events held back while it ran that were not its own writes: look again.
            # (Nothing awaits after this, so no event slips in before the worker lets go.)
            news = self.deps.settle(key)
        return Result(requeue_after=0.0) if news else result

    async def _reconcile(self, key: Key) -> Result:
        namespace, name = key
        try:
            current = await self.client.get(TenantControlPlane, name, namespace=namespace)
        except ApiError as e:
            if e.status.code == 404:
                self._forget(key)
                return Result()
            raise
        obj: dict[str, Any] = current.to_dict()  # type: ignore[no-untyped-call]
        try:
            spec = self._effective_spec(obj)
        except (InvalidSpec, ValueError, KeyError, TypeError, AttributeError) as e:
            if obj["metadata"].get("deletionTimestamp"):
                # Cleaning up needs only the names and where the data is: never stuck.
                return await self._finalize(key, Context(obj, self._effective_spec(bare(obj))))
            return await self._unparseable(key, obj, e)
        if obj["metadata"].get("deletionTimestamp"):
            return await self._finalize(key, Context(obj, spec))
        ctx = Context(obj, spec)
        if not obj.get("status"):
            await self._first_status(ctx)
        timer = StepTimer(self._observe_step)
        try:
            async with asyncio.timeout(self.config.reconcile_deadline):
                outcome = await run(self.steps, ctx, timer.enter,
                                    lambda step, e: self._unexpected(ctx, step, e))
        except TimeoutError:
            outcome = self._timed_out(ctx, timer.current)
        timer.enter("status")
        ready = await self._write_status(ctx)
        timer.finish()
        self._observe_outcome(ctx)
        log.info("%s/%s reconciled in %s: Ready=%s", namespace, name, timer.summary(),
                 ctx.conditions["Ready"].status)
        return Result(requeue_after=self._next(ctx, outcome, ready))

    def _effective_spec(self, obj: dict[str, Any]) -> TenantControlPlaneSpec:
        """The spec with DataStore, schema and user as pinned in status.storage at first
        provisioning (so a changed --default-datastore never moves a tenant)."""
        spec = TenantControlPlaneSpec.parse(obj)
        where = tenant_status.placement(obj, self.config.default_datastore)
        return dataclasses.replace(spec, data_store=where.data_store,
                                   data_store_schema=where.schema,
                                   data_store_username=where.user)

    def _next(self, ctx: Context, outcome: Outcome, ready: bool) -> float:
        """Seconds until the next look (see RequeuePolicy)."""
        if ready:
            self.requeue.reset(ctx.key)
            return min(self.config.ready_resync, ctx.requeue_within or self.config.ready_resync)
        if outcome.retry_after is not None:
            return self.requeue.delay(ctx.key, outcome.retry_after)
        if ctx.conditions["ControlPlaneAvailable"].status == "True":
            # Pods serve; the API probe may pass soon (the Service's rules reach kube-proxy
            # a moment after the pods are ready). The passes while the pods started counted
            # towards the backoff already, so without this ceiling the first retry after a
            # failed probe came 30-70 s later (measured: a LoadBalancer tenant's Ready).
            return self.requeue.delay(ctx.key, 2.0, cap=PROBE_RETRY_CAP)
        # Waiting for pods: the Deployment's status changes wake us; this is a backstop.
        return min(self.requeue.delay(ctx.key, 10.0), self.config.ready_resync)

    def _unexpected(self, ctx: Context, step: Step, error: Exception) -> None:
        log.error("%s/%s: step %s failed unexpectedly", *ctx.key, step.name, exc_info=error)
        self.events.emit(ctx.obj, "Warning", "ReconcileError",
                         f"{step.name}: {type(error).__name__}: {error}")

    def _timed_out(self, ctx: Context, step_name: str | None) -> Outcome:
        step = next((s for s in self.steps if s.name == step_name), None)
        ctype = (step.condition if step else None) or "Ready"
        message = (f"step {step_name} did not finish within the reconcile deadline "
                   f"({self.config.reconcile_deadline:.0f}s); retrying")
        ctx.conditions[ctype] = Condition(ctype, "False", "Timeout", message)
        self.events.emit(ctx.obj, "Warning", "Timeout", message)
        return Outcome(10.0, step_name)

    def _forget(self, key: Key) -> None:
        self.metrics.tenants.forget(key)
        self.deps.forget(key)
        self.requeue.reset(key)
        self.deps.verified.pop(key, None)

    # ------------------------------------------------------------------ delete

    async def _finalize(self, key: Key, ctx: Context) -> Result:
        """Run the steps' cleanups in reverse order; the finalizer step goes last. A cleanup
        that must wait (pods still stopping, a DataStore unreachable) keeps the finalizer and
        says why in the status; an unexpected error is an Event, then retried. The tenant
        leaves the metrics once its cleanup is done."""
        if FINALIZER not in (ctx.obj["metadata"].get("finalizers") or []):
            if self.watches is not None:
                await self.watches.stop(key)
            self._forget(key)
            return Result()  # not Haku's to clean up (never set up, or already done)
        timer = StepTimer(self._observe_step)
        for step in reversed(self.steps):
            timer.enter(f"cleanup-{step.name}")
            try:
                await step.cleanup(ctx)
            except (Wait, Fail) as stop:
                timer.finish()
                ctx.conditions[stop.condition.type] = stop.condition
                await self._write_status(ctx, deleting=True)
                if isinstance(stop, Wait) and stop.poll:
                    return Result(requeue_after=stop.retry_after)
                return Result(requeue_after=self.requeue.delay(key, stop.retry_after))
            except LostLeadership:
                raise
            except Exception as e:  # the finalizer stays; say why on the object, then retry
                timer.finish()
                self.events.emit(ctx.obj, "Warning", "FinalizeError",
                                 f"cleaning up before deletion failed (retrying): "
                                 f"{type(e).__name__}: {e}")
                raise
        timer.finish()
        self._forget(key)
        return Result()

    # ------------------------------------------------------------------ status

    async def _unparseable(self, key: Key, obj: dict[str, Any], error: Exception) -> Result:
        """A spec the operator cannot read (admission should have refused it): say so."""
        message = str(error) if isinstance(error, InvalidSpec) else \
            f"{type(error).__name__}: {error}"
        meta = obj["metadata"]
        found = {t: Condition(t, "Unknown", "Pending", "the spec cannot be read")
                 for t in READY_TYPES[:-1]}
        found["Ready"] = Condition("Ready", "False", "InvalidSpec",
                                   f"the spec cannot be carried out: {message}")
        merged = (obj.get("status") or {}).get("conditions") or []
        for c in found.values():
            merged = conditions.merge(merged, c, meta.get("generation"))
        self.events.emit(obj, "Warning", "InvalidSpec", found["Ready"].message)
        await self._apply_status(meta["name"], meta["namespace"],
                                 {"conditions": merged,
                                  "observedGeneration": meta.get("generation")})
        return Result(requeue_after=self.requeue.delay(key, 30.0))

    async def _first_status(self, ctx: Context) -> None:
        """``Provisioning`` with every Condition Unknown, before any slow step."""
        status = first_status(ctx.spec.generation)
        await self._apply_status(ctx.spec.name, ctx.spec.namespace, status)
        ctx.obj["status"] = status

    def announce(self, obj: Any) -> None:
        """Write the first status of TenantControlPlane ``obj``, just seen by the watch
        without one, now: not once a worker is free, which under a burst of new tenants can
        be minutes. Only over the version seen (its resourceVersion is the precondition): if
        anything wrote the object since, the reconcile got there first and the API server
        refuses this write (409), which is fine."""
        meta = obj.metadata
        key = (meta.namespace or "", meta.name)
        if meta.deletionTimestamp or not meta.resourceVersion or key in self._announcing:
            return
        self._announcing.add(key)
        task = asyncio.get_running_loop().create_task(
            self._announce(key, meta.generation, meta.resourceVersion))
        self._announce_tasks.add(task)
        task.add_done_callback(self._announce_tasks.discard)

    async def _announce(self, key: Key, generation: int | None, version: str) -> None:
        try:
            async with self._announce_gate:
                await self._apply_status(key[1], key[0], first_status(generation), version)
        except ApiError as e:
            if e.status.code not in (404, 409):  # gone, or written meanwhile
                log.warning("%s/%s: first status not written: %s", *key, e)
        except LostLeadership:
            pass  # not leading (any more): the workers stop the operator
        except Exception as e:  # best effort: the reconcile writes it anyway
            log.warning("%s/%s: first status not written: %s", *key, e)
        finally:
            self._announcing.discard(key)

    async def _write_status(self, ctx: Context, deleting: bool = False) -> bool:
        """Apply the status; True if the tenant is Ready. While deleting, only what the
        cleanup found is written (the rest keeps its last value)."""
        spec, found = ctx.spec, ctx.conditions
        old = ctx.previous_status.get("conditions") or []
        if deleting:
            blocker = next(iter(found.values()))
            found["Ready"] = Condition("Ready", "False", "Deleting",
                                       f"being deleted: {blocker.message}")
        else:
            for ctype in READY_TYPES[:-1]:
                found.setdefault(ctype, Condition(ctype, "Unknown", "Pending",
                                                  "an earlier step has not finished"))
            failing = [c for t, c in found.items()
                       if t != "Ready" and t not in INFORMATIONAL and c.status != "True"]
            found["Ready"] = (Condition("Ready", "True", "Ready",
                                        "the tenant API serves through its endpoint")
                              if not failing else
                              Condition("Ready", "False", failing[0].reason,
                                        failing[0].message))
        merged = [c for c in old if c.get("type") not in ctx.removed_conditions]
        for c in found.values():
            merged = conditions.merge(merged, c, spec.generation)
        for c in found.values():
            before = conditions.find(old, c.type)
            if before is not None and before.get("status") == c.status and \
                    before.get("reason") == c.reason:
                continue
            # A Condition not looked at yet (the first status) moving on to a progress
            # reason (NoReadyPods, WaitingForAPIServer, …) is the expected course of a new
            # tenant, not news: no Warning for it (and a write less per Condition).
            if c.status != "True" and c.reason in PROGRESS_REASONS and \
                    (before is None or before.get("reason") in FIRST_REASONS):
                continue
            self.events.emit(ctx.obj, "Normal" if c.status == "True" else "Warning",
                             c.reason, f"{c.type}={c.status}: {c.message}")
        status = ctx.status
        status["conditions"] = merged
        status["observedGeneration"] = spec.generation
        previous = ctx.previous_status
        if not deleting:
            status.setdefault("kubernetesResources", {}).setdefault(
                "version", {"status": tenant_status.carried_version_status(previous,
                                                                          spec.replicas)})
        # Start from the previous status: what this reconcile did not get to keeps its value.
        full = tenant_status.merge_status(previous, status)
        status.clear()
        status.update(full)
        if not deleting:
            version_before = (previous.get("kubernetesResources") or {}).get("version")
            found_events = [
                *upgrade.version_events(version_before, full["kubernetesResources"]["version"],
                                        spec.replicas),
                *ca_rotation.events(ca_rotation.rotation_of(previous),
                                    ca_rotation.rotation_of(full))]
            for event in found_events:
                self.events.emit(ctx.obj, event.kind, event.reason, event.message)
        if full != previous:  # unchanged (a routine pass): no write
            await self._apply_status(spec.name, spec.namespace, status)
        return found["Ready"].status == "True"

    async def _apply_status(self, name: str, namespace: str, status: dict[str, Any],
                            resource_version: str | None = None) -> None:
        patch = TenantControlPlane.Status(
            metadata=ObjectMeta(name=name, namespace=namespace,
                                resourceVersion=resource_version), status=status)
        await self.client.apply(patch, field_manager=FIELD_MANAGER, force=True)

    # ------------------------------------------------------------------ metrics

    def _observe_step(self, step: str, seconds: float) -> None:
        self.metrics.reconcile_duration.labels(CONTROLLER, step).observe(seconds)

    def _observe_outcome(self, ctx: Context) -> None:
        """The tenant's status and DataStore for the gauge; Conditions False for an error."""
        version = ctx.status["kubernetesResources"]["version"]["status"]
        datastore = ((ctx.status.get("storage") or {}).get("dataStoreName")
                     or ctx.spec.data_store or self.config.default_datastore or "")
        self.metrics.tenants.observe(ctx.key, version, datastore)
        for reason in sorted({c.reason for t, c in ctx.conditions.items()
                              if t != "Ready" and c.status == "False"
                              and c.reason not in PROGRESS_REASONS}):
            self.metrics.reconcile_errors.labels(CONTROLLER, reason).inc()

    async def close(self) -> None:
        for task in list(self._announce_tasks):
            task.cancel()
        await asyncio.gather(*self._announce_tasks, return_exceptions=True)
        if self.watches is not None:
            await self.watches.close()
        await self.deps.drivers.close()
