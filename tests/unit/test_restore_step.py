"""The restore step: a tenant made by ``haku restore`` is held until its data is in, and looks
for that often (the annotation that releases it does not wake the operator by itself)."""

from __future__ import annotations

from typing import Any

import pytest

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.controller.pipeline import Context, Wait
from haku.controller.steps.restore import CONDITION, RESTORE_FROM, RESTORED, RestoreStep
from haku.controller.tenant import READY_TYPES

SPEC = TenantControlPlaneSpec.parse({
    "metadata": {"name": "t", "namespace": "n", "uid": "u", "generation": 1},
    "spec": {"kubernetes": {"version": "v1.37.2"}, "controlPlane": {}}})
SUM = "ab" * 32


def ctx(annotations: dict[str, str], status: dict[str, Any] | None = None) -> Context:
    return Context({"metadata": {"name": "t", "uid": "u", "annotations": annotations},
                    "status": status or {}}, SPEC)


async def test_a_restored_tenant_waits_polling_until_its_data_is_in() -> None:
    c = ctx({RESTORE_FROM: SUM})
    with pytest.raises(Wait) as e:
        await RestoreStep(None).apply(c)  # type: ignore[arg-type]
    assert e.value.condition.reason == "WaitingForData" and SUM[:12] in e.value.condition.message
    # Polled, not backed off: `haku restore` is loading and its user waits for the start.
    assert e.value.poll and e.value.retry_after <= 5.0
    # Another backup's mark does not release it.
    with pytest.raises(Wait):
        await RestoreStep(None).apply(ctx({RESTORE_FROM: SUM, RESTORED: "cd" * 32}))  # type: ignore[arg-type]


async def test_released_once_restored_never_held_once_it_ran_absent_otherwise() -> None:
    c = ctx({RESTORE_FROM: SUM, RESTORED: SUM})
    await RestoreStep(None).apply(c)  # type: ignore[arg-type]
    assert (c.conditions[CONDITION].status, c.conditions[CONDITION].reason) == ("True",
                                                                                 "Restored")
    ran = ctx({RESTORE_FROM: SUM}, {"kubernetesResources": {"deployment": {"name": "t"}}})
    await RestoreStep(None).apply(ran)  # type: ignore[arg-type]
    assert ran.conditions[CONDITION].reason == "AlreadyRunning"
    plain = ctx({})
    await RestoreStep(None).apply(plain)  # type: ignore[arg-type]
    assert CONDITION not in plain.conditions and CONDITION in plain.removed_conditions
    assert CONDITION not in READY_TYPES  # informational
