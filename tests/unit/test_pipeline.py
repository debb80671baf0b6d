"""The reconcile pipeline's pure parts: running steps, the retry vocabulary, the requeue
policy, the step list and Kamaji's version status."""

from __future__ import annotations

from typing import Any

import pytest

from haku.api.conditions import Condition
from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.controller import steps
from haku.controller.pipeline import (
    Context,
    Fail,
    RequeuePolicy,
    Wait,
    condition_types,
    run,
)
from haku.controller.tenant import READY_TYPES
from haku.render import InvalidSpec

SPEC = TenantControlPlaneSpec.parse({
    "metadata": {"name": "t", "namespace": "n", "uid": "u", "generation": 2},
    "spec": {"kubernetes": {"version": "v1.37.2"}, "controlPlane": {}}})


class Recorder:
    def __init__(self, name: str, condition: str | None, raises: Exception | None = None,
                 log: list[str] | None = None) -> None:
        self.name, self.condition, self.raises = name, condition, raises
        self.log = log if log is not None else []

    async def apply(self, ctx: Context) -> None:
        self.log.append(self.name)
        if self.raises is not None:
            raise self.raises
        if self.condition:
            ctx.conditions[self.condition] = Condition(self.condition, "True", "Ok", "")

    async def cleanup(self, ctx: Context) -> None:
        return None


def ctx() -> Context:
    return Context({"metadata": {"name": "t", "uid": "u"}}, SPEC)


async def test_steps_run_in_order_until_one_waits() -> None:
    log: list[str] = []
    waiting = Wait(Condition("B", "False", "NotYet", "b is coming"), 7.0)
    pipeline = [Recorder("a", "A", log=log), Recorder("b", "B", waiting, log),
                Recorder("c", "C", log=log)]
    c = ctx()
    outcome = await run(pipeline, c)
    assert log == ["a", "b"]  # c never ran
    assert outcome.retry_after == 7.0 and outcome.stopped_at == "b"
    assert c.conditions["A"].status == "True"
    assert c.conditions["B"] == waiting.condition
    assert "C" not in c.conditions


async def test_every_step_done_means_no_retry_hint() -> None:
    outcome = await run([Recorder("a", "A"), Recorder("b", None)], ctx())
    assert outcome.retry_after is None and outcome.stopped_at is None


async def test_a_failure_a_render_error_and_a_crash_each_become_a_condition() -> None:
    failing = Fail(Condition("A", "False", "InvalidSpec", "spec.x: no"), 30.0)
    c = ctx()
    assert (await run([Recorder("a", "A", failing)], c)).retry_after == 30.0
    assert c.conditions["A"].reason == "InvalidSpec"

    c = ctx()
    outcome = await run([Recorder("a", "A", InvalidSpec("spec.networkProfile.serviceCidr",
                                                        "no room"))], c)
    assert outcome.retry_after is not None
    assert c.conditions["A"].reason == "InvalidSpec"
    assert c.conditions["A"].message == "spec.networkProfile.serviceCidr: no room"

    seen: list[tuple[str, str]] = []
    c = ctx()
    outcome = await run([Recorder("a", "A", TypeError("boom"))], c,
                        unexpected=lambda step, e: seen.append((step.name, str(e))))
    assert seen == [("a", "boom")]
    assert c.conditions["A"].reason == "ReconcileError"
    assert "TypeError: boom" in c.conditions["A"].message
    assert outcome.retry_after is not None


def test_requeue_doubles_per_unready_pass_caps_and_resets() -> None:
    policy = RequeuePolicy(cap=40.0, jitter=0.0)
    key = ("n", "t")
    assert [policy.delay(key, 5.0) for _ in range(5)] == [5.0, 10.0, 20.0, 40.0, 40.0]
    assert policy.delay(("n", "other"), 5.0) == 5.0  # per key
    policy.reset(key)
    assert policy.delay(key, 5.0) == 5.0
    # A lower ceiling for one pass: the count goes on, the wait stays under it.
    assert [policy.delay(key, 5.0, cap=8.0) for _ in range(3)] == [8.0, 8.0, 8.0]
    assert policy.delay(key, 5.0) == 40.0
    assert policy.delay(key, 5.0, cap=100.0) == 40.0  # never above the policy's own


def test_requeue_jitter_stays_within_its_band() -> None:
    policy = RequeuePolicy(cap=300.0, jitter=0.1)
    for i in range(50):
        got = policy.delay(("n", f"t{i}"), 10.0)
        assert 9.0 <= got <= 11.0


def test_condition_types_follow_the_step_order_once_each() -> None:
    assert condition_types(steps.STEPS) == (
        "NetworkIsolated", "DataStoreReady", "DataRestored", "ControlPlaneAvailable",
        "CertificatesReady", "APIServerReady", "TenantBootstrapped", "Migrating",
        "WriteLimited", "KonnectivityConnected", "Ready")
    # Ready stands for all of them but the informational DataRestored, Migrating,
    # WriteLimited and KonnectivityConnected.
    assert tuple(t for t in condition_types(steps.STEPS)
                 if t not in ("DataRestored", "Migrating", "WriteLimited",
                              "KonnectivityConnected")) == READY_TYPES
    names = [s.name for s in steps.STEPS]
    assert len(names) == len(set(names))
    # On delete the pods stop (deployment) before the data goes (datastore), and the
    # finalizer is removed last.
    cleanup = list(reversed(names))
    assert cleanup.index("deployment") < cleanup.index("datastore") < cleanup.index(
        "finalizer") == len(cleanup) - 1
    # The ranges are checked, and the pods fenced in, before anything is provisioned or runs.
    assert names.index("network") < names.index("datastore") < names.index("deployment")
    # A restored tenant's data is loaded before its CA is made or its pods start.
    assert names.index("datastore") < names.index("restore") < names.index("certificates")


async def test_a_lost_lease_is_not_a_condition_but_stops_the_pass() -> None:
    from haku.controller.fencing import LostLeadership

    log: list[str] = []
    pipeline = [Recorder("a", "A", LostLeadership("gone"), log), Recorder("b", "B", log=log)]
    with pytest.raises(LostLeadership):
        await run(pipeline, ctx())
    assert log == ["a"]


def test_a_spec_that_cannot_be_read_still_gives_what_a_cleanup_needs() -> None:
    from haku.controller.tenant import bare

    obj = {"metadata": {"name": "t", "namespace": "n", "uid": "u",
                        "deletionTimestamp": "2026-11-30T00:00:00Z"},
           "spec": {"dataStore": "ds", "dataStoreSchema": "s", "kubernetes": "garbage",
                    "networkProfile": {"serviceCidr": 7}}}
    with pytest.raises((KeyError, TypeError, ValueError, AttributeError)):
        TenantControlPlaneSpec.parse(obj)
    spec = TenantControlPlaneSpec.parse(bare(obj))
    assert (spec.name, spec.namespace, spec.uid) == ("t", "n", "u")
    assert (spec.data_store, spec.data_store_schema, spec.data_store_username) == \
        ("ds", "s", "u")


class Stopping(Recorder):
    """A step whose cleanup waits, as the deployment step does while pods stop."""

    def __init__(self, poll: bool) -> None:
        super().__init__("deployment", "ControlPlaneAvailable")
        self.poll = poll

    async def cleanup(self, ctx: Context) -> None:
        raise Wait(Condition("ControlPlaneAvailable", "False", "Stopping", "pods stop"), 1.0,
                   poll=self.poll)


@pytest.mark.parametrize("poll", [True, False])
async def test_a_cleanup_that_polls_is_looked_at_again_at_its_hint_every_time(
        poll: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pods stopping within their grace period (30 s) must not push the next look past it by
    doubling (1, 2, 4, 8, 16, 32 s: a delete that took a minute); other waits back off."""
    from haku.controller.config import OperatorConfig
    from haku.controller.steps.finalizer import FINALIZER
    from haku.controller.tenant import TenantReconciler

    r = TenantReconciler(None, OperatorConfig(), None)  # type: ignore[arg-type]
    r.steps = [Stopping(poll)]

    async def no_status(*args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(r, "_write_status", no_status)
    c = Context({"metadata": {"name": "t", "uid": "u", "finalizers": [FINALIZER]}}, SPEC)
    delays = [(await r._finalize(("n", "t"), c)).requeue_after for _ in range(6)]
    if poll:
        assert delays == [1.0] * 6
    else:
        assert delays[-1] is not None and delays[-1] > 20  # 32 s ± jitter
