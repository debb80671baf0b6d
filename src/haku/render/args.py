"""Command lines of the containers Haku renders (pure): its own flags, its defaults, and the
user's extraArgs."""

from __future__ import annotations

from collections.abc import Mapping


def flag_name(arg: str) -> str:
    """``--flag`` of ``--flag=value``."""
    return arg.split("=", 1)[0]


def merge_args(managed: Mapping[str, str], defaults: Mapping[str, str],
               extras: list[str]) -> list[str]:
    """``managed`` flags (always win), ``defaults`` (yield to the user's), sorted; then the
    user's ``extras`` verbatim, minus any that set a managed flag (repeatable flags stay
    repeated)."""
    user = [a for a in extras if flag_name(a) not in managed]
    user_flags = {flag_name(a) for a in user}
    owned = dict(managed) | {k: v for k, v in defaults.items()
                             if k not in user_flags and k not in managed}
    return [f"{k}={v}" for k, v in sorted(owned.items())] + user


def with_feature_gates(args: list[str], gates: Mapping[str, bool]) -> list[str]:
    """``args`` with Haku's default ``gates`` as one ``--feature-gates`` flag, first (so before any
    of the user's). Kubernetes components merge a repeated ``--feature-gates`` and the later
    value of a gate wins, so a user's own ``--feature-gates`` adds gates to these and can still
    turn one of them off."""
    if not gates:
        return list(args)
    ours = "--feature-gates=" + ",".join(
        f"{k}={str(v).lower()}" for k, v in sorted(gates.items()))
    return [ours, *args]
