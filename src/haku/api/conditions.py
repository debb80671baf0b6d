"""Standard Kubernetes Conditions (metav1.Condition), computed purely."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Condition:
    type: str
    status: Status
    reason: str
    message: str


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(
    existing: list[dict[str, Any]] | None,
    update: Condition,
    generation: int | None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """``existing`` with ``update`` set; lastTransitionTime moves only when the status changes."""
    now = now or datetime.now(UTC)
    result: list[dict[str, Any]] = []
    previous = None
    for c in existing or []:
        if c.get("type") == update.type:
            previous = c
        else:
            result.append(dict(c))
    transition = (
        previous["lastTransitionTime"]
        if previous and previous.get("status") == update.status
        and previous.get("lastTransitionTime")
        else rfc3339(now)
    )
    entry: dict[str, Any] = {
        "type": update.type,
        "status": update.status,
        "reason": update.reason,
        "message": update.message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        entry["observedGeneration"] = generation
    result.append(entry)
    return sorted(result, key=lambda c: str(c["type"]))


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)
