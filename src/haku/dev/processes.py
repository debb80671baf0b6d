"""Daemons as plain background processes, each recorded by PID and start time.

There is no systemd on these machines, so every daemon is started here, logs to
``<state>/logs/<name>.log`` and is recorded in ``<state>/pids/<name>.json``. The record holds
the kernel's start time of the process, so a PID reused by an unrelated program is never taken
for ours and never killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from haku.errors import HakuError


class ComponentFailed(HakuError):
    """A component that died or did not become ready, with the tail of its log."""

    def __init__(self, name: str, reason: str, log: Path | None) -> None:
        self.name = name
        self.log = log
        tail = log_tail(log) if log else ""
        message = f"{name} {reason}"
        if log:
            message += f" (log: {log})"
        if tail:
            message += "\n--- last lines of its log ---\n" + tail
        super().__init__(message)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot); None if no such live process.

    A zombie counts as gone; if it is a child of this process it is reaped on the way.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return None
    return int(fields[19])


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    user: str | None = None


@dataclass(frozen=True)
class Record:
    name: str
    pid: int
    start_time: int
    argv: list[str]

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time


class Supervisor:
    def __init__(self, pids: Path, logs: Path) -> None:
        self.pids = pids
        self.logs = logs

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def _record_path(self, name: str) -> Path:
        return self.pids / f"{name}.json"

    def record(self, name: str) -> Record | None:
        try:
            data = json.loads(self._record_path(name).read_text())
        except (OSError, ValueError):
            return None
        return Record(data["name"], data["pid"], data["start_time"], data["argv"])

    def records(self) -> list[Record]:
        if not self.pids.is_dir():
            return []
        found = (self.record(p.stem) for p in sorted(self.pids.glob("*.json")))
        return [r for r in found if r is not None]

    def running(self, name: str) -> Record | None:
        record = self.record(name)
        return record if record and record.alive() else None

    def start(self, spec: ProcessSpec) -> tuple[Record, bool]:
        """Start ``spec`` unless it already runs; returns the record and whether it started."""
        existing = self.running(spec.name)
        if existing:
            return existing, False
        self.pids.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.log_path(spec.name)
        with log.open("ab") as out:
            out.write(f"\n=== {time.strftime('%F %T')} starting {' '.join(spec.argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                list(spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(spec.env) if spec.env is not None else None,
                cwd=spec.cwd,
                user=spec.user,
                start_new_session=True,
            )
        start_time = process_start_time(proc.pid)
        if start_time is None:  # exited at once
            code = proc.wait()
            raise ComponentFailed(spec.name, f"exited at once with code {code}", log)
        record = Record(spec.name, proc.pid, start_time, list(spec.argv))
        self._record_path(spec.name).write_text(json.dumps(record.__dict__) + "\n")
        return record, True

    def wait_ready(
        self,
        name: str,
        ready: Callable[[], bool],
        timeout: float,
        what: str = "ready",
        interval: float = 0.2,
    ) -> float:
        """Poll ``ready`` until true; fail with the log tail if the process dies or times out."""
        started = time.monotonic()
        while True:
            if ready():
                return time.monotonic() - started
            if not self.running(name):
                raise ComponentFailed(
                    name, f"exited before it was {what}", self.log_path(name)
                )
            if time.monotonic() - started > timeout:
                raise ComponentFailed(
                    name, f"was not {what} within {timeout:.0f}s", self.log_path(name)
                )
            time.sleep(interval)

    def stop(
        self, name: str, timeout: float = 20.0, sig: signal.Signals = signal.SIGTERM
    ) -> bool:
        """``sig`` to the recorded process group, SIGKILL after ``timeout``; forget the record."""
        record = self.record(name)
        stopped = False
        if record and record.alive():
            stopped = True
            _signal_group(record.pid, sig)
            deadline = time.monotonic() + timeout
            while record.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            if record.alive():
                _signal_group(record.pid, signal.SIGKILL)
                while record.alive() and time.monotonic() < deadline + 5:
                    time.sleep(0.1)
        self._record_path(name).unlink(missing_ok=True)
        return stopped


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)
