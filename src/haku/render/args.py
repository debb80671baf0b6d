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
