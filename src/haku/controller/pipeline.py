"""The reconcile pipeline: an ordered list of steps over one shared context.

A step is one small class (:class:`Step`): ``apply`` brings its part of the world to what
the spec asks and records its Condition in the context; ``cleanup`` undoes it when the
TenantControlPlane is deleted (steps are cleaned up in reverse order). Adding a step or a
Condition means adding one class to :data:`haku.controller.steps.PIPELINE`.

One retry vocabulary (kopf's), raised by a step:

- :class:`Wait`: not there yet, or a temporary failure (a load balancer without an address,
  an unreachable DataStore). The step's Condition says why; the tenant is looked at again
  after the step's hint, growing with :class:`RequeuePolicy` while the tenant stays unready.
- :class:`Fail`: the spec (or an object it names) is wrong and retrying alone will not help
  (an API server refusing the rendered Deployment, a render error). The same policy spaces
  the retries; a spec change requeues at once through the watch.

Anything else a step raises is unexpected: the pipeline turns it into a False Condition of
that step with reason ``ReconcileError`` (and an Event), never a crash loop; but
``LostLeadership`` (the fence refused a write) goes through, and the operator stops.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from haku.api.conditions import Condition
from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.controller.fencing import LostLeadership
from haku.controller.runtime import Key
from haku.render import InvalidSpec
from haku.render.storage import TenantConnection


class Wait(Exception):
    """A step cannot go on yet; ``condition`` says why, ``retry_after`` is the hint (s).
    ``poll``: the wait is known to end soon by itself (pods within their grace period), so
    look again after ``retry_after`` every time instead of backing off."""

    def __init__(self, condition: Condition, retry_after: float, poll: bool = False) -> None:
        super().__init__(condition.message)
        self.condition = condition
        self.retry_after = retry_after
        self.poll = poll


class Fail(Exception):
    """The spec cannot be carried out as it is; ``condition`` names the field and why."""

    def __init__(self, condition: Condition, retry_after: float = 30.0) -> None:
        super().__init__(condition.message)
        self.condition = condition
        self.retry_after = retry_after


class Fence(Protocol):
    """Raises unless this process may still write (holds the Lease with margin)."""

    def check(self) -> None: ...


class Unfenced:
    """The fence of an operator without leader election: always open."""

    def check(self) -> None:
        return None


@dataclass
class Context:
    """What one reconcile knows: the object as read, its parsed spec, and what earlier steps
    produced for later ones. Steps write their Condition into ``conditions`` and their part
    of the status into ``status`` (merged over the previous status when written)."""

    obj: dict[str, Any]
    spec: TenantControlPlaneSpec
    conditions: dict[str, Condition] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    # Filled in by the steps, in pipeline order.
    datastore: str = ""
    storage: TenantConnection | None = None
    service: Any = None
    address: str = ""
    port: int = 0  # the port clients dial
    secure_port: int = 0  # the port kube-apiserver listens on (render.controlplane.secure_port)
    endpoint: str = ""  # what tenants are told: https://advertiseAddress-or-address:port,
    # or the host name of an Ingress or Gateway in front (haku.render.endpoint)
    operator_endpoint: str = ""  # where the operator dials: the Service's, never a host name
    pki: dict[str, bytes] = field(default_factory=dict)
    kubeconfigs: dict[str, bytes] = field(default_factory=dict)  # controller-manager, scheduler
    admin: dict[str, bytes] = field(default_factory=dict)  # admin.conf (user-facing)
    super_admin: bytes = b""  # super-admin.conf: the operator's own, never user-facing
    deployment: Any = None
    konnectivity_port: int = 0  # the port agents dial (a NodePort's node port)
    agents: Any = None  # haku.tenant.bootstrap.Agents, when the addon is on and reachable
    rollout: Any = None  # haku.render.upgrade.Rollout: the Deployment's pods
    observed_version: str | None = None  # what the tenant's /version answered
    # The version the in-tenant objects are rendered at (the running one during an upgrade's
    # control-plane phase), and the one they were applied at this pass.
    tenant_version: str = ""
    tenant_objects_version: str | None = None
    bundle_applied: bytes | None = None  # the trust bundle the in-tenant objects got
    # Look again this soon at the latest, even when Ready (a CA rotation under way).
    requeue_within: float | None = None
    # Conditions a step says do not apply to this tenant (an informational one whose addon
    # is off): removed from the status.
    removed_conditions: set[str] = field(default_factory=set)

    @property
    def key(self) -> Key:
        return (self.spec.namespace, self.spec.name)

    @property
    def previous_status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.obj.get("status") or {}
        return status

    @property
    def owner(self) -> dict[str, Any]:
        """The owner reference every object of this tenant carries."""
        meta = self.obj["metadata"]
        return {"apiVersion": self.obj.get("apiVersion", "haku.dev/v1alpha1"),
                "kind": "TenantControlPlane", "name": meta["name"], "uid": meta["uid"],
                "controller": True, "blockOwnerDeletion": True}

    def need(self, value: Any, what: str) -> Any:
        """``value`` an earlier step should have produced (a pipeline ordering bug if not)."""
        if value is None or value == "" or value == {}:
            raise RuntimeError(f"pipeline order: {what} is not known yet")
        return value


class Step(Protocol):
    """One part of a tenant. ``condition`` is the Condition type it owns (None: none)."""

    @property
    def name(self) -> str: ...

    @property
    def condition(self) -> str | None: ...

    async def apply(self, ctx: Context) -> None: ...

    async def cleanup(self, ctx: Context) -> None: ...


def condition_types(steps: Sequence[Any]) -> tuple[str, ...]:
    """The Condition types the pipeline writes (each step's, or step class's,
    ``condition``), in step order, then ``Ready``."""
    seen: list[str] = []
    for step in steps:
        if step.condition and step.condition not in seen:
            seen.append(step.condition)
    return (*seen, "Ready")


@dataclass(frozen=True)
class Outcome:
    """How a pass over the pipeline ended: ``retry_after`` None means every step applied."""

    retry_after: float | None = None
    stopped_at: str | None = None


async def run(steps: Sequence[Step], ctx: Context,
              enter: Callable[[str], None] = lambda _: None,
              unexpected: Callable[[Step, Exception], None] = lambda s, e: None) -> Outcome:
    """Apply ``steps`` in order until one waits or fails."""
    for step in steps:
        enter(step.name)
        try:
            await step.apply(ctx)
        except (Wait, Fail) as stop:
            found = stop.condition
            if not found.type:  # raised by a shared helper: the step's own Condition
                found = Condition(step.condition or "Ready", found.status, found.reason,
                                  found.message)
            ctx.conditions[found.type] = found
            return Outcome(stop.retry_after, step.name)
        except LostLeadership:
            raise  # not this step's failure: the operator stops everything at once
        except InvalidSpec as e:  # render found the spec wanting: name the field
            ctype = step.condition or "Ready"
            ctx.conditions[ctype] = Condition(ctype, "False", "InvalidSpec", str(e))
            return Outcome(30.0, step.name)
        except Exception as e:  # a bug or a surprise: a Condition, not a crash loop
            unexpected(step, e)
            ctype = step.condition or "Ready"
            ctx.conditions[ctype] = Condition(ctype, "False", "ReconcileError",
                                              f"{step.name}: {type(e).__name__}: {e}")
            return Outcome(5.0, step.name)
    return Outcome()


class RequeuePolicy:
    """When to look at a tenant again: the step's hint, doubled for each consecutive pass
    that left the tenant unready, capped, with jitter. Reset only once the tenant is Ready
    with its spec unchanged (observedGeneration == generation)."""

    def __init__(self, cap: float = 300.0, jitter: float = 0.1) -> None:
        self.cap, self.jitter = cap, jitter
        self._attempts: dict[Key, int] = {}

    def delay(self, key: Key, hint: float, cap: float | None = None) -> float:
        """``cap``: a lower ceiling for this pass (a state where the next look is cheap and
        likely to succeed soon)."""
        attempts = self._attempts.get(key, 0)
        self._attempts[key] = attempts + 1
        base = min(hint * 2.0 ** attempts, self.cap if cap is None else min(cap, self.cap))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311

    def attempts(self, key: Key) -> int:
        return self._attempts.get(key, 0)

    def reset(self, key: Key) -> None:
        self._attempts.pop(key, None)
