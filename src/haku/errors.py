"""The errors a user must act on.

Every failure ``haku`` can explain derives from :class:`HakuError`: its message says what failed
and what to do, and the command line prints it as one ``haku: …`` line (no traceback) and exits
with code 1. External commands that fail or hang become :class:`CommandFailed` and
:class:`CommandTimedOut`, which carry the tail of the command's output.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence


class HakuError(RuntimeError):
    """A failure the user must act on; the message says what failed and what to do."""


def output_tail(output: str | bytes | None, lines: int = 3, chars: int = 400) -> str:
    """The last non-blank ``lines`` of a command's output, on one line (`` | `` between)."""
    if output is None:
        return ""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    joined = " | ".join(kept)
    return joined if len(joined) <= chars else "…" + joined[-chars:]


def describe_duration(seconds: float) -> str:
    """``2400`` -> ``40 min``, ``90`` -> ``90 s``, ``0.5`` -> ``0.5 s``."""
    if seconds >= 120 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def command_line(argv: Sequence[str] | str) -> str:
    return argv if isinstance(argv, str) else shlex.join(str(a) for a in argv)


class CommandFailed(HakuError):
    """An external command that exited non-zero."""

    def __init__(self, what: str, returncode: int, output: str | bytes | None, hint: str) -> None:
        self.what = what
        self.returncode = returncode
        self.tail = output_tail(output)
        detail = f": {self.tail}" if self.tail else ""
        super().__init__(f"{what} failed (exit {returncode}){detail}; {hint}")


class CommandTimedOut(HakuError):
    """An external command stopped because it ran longer than its timeout."""

    def __init__(self, what: str, timeout: float, output: str | bytes | None, hint: str) -> None:
        self.what = what
        self.timeout = timeout
        self.tail = output_tail(output)
        detail = f" (last output: {self.tail})" if self.tail else ""
        super().__init__(
            f"{what} did not finish within {describe_duration(timeout)} and was stopped"
            f"{detail}; {hint}"
        )
