"""Structured logs: JSON lines (or text) carrying the reconcile's context.

The runtime binds ``controller`` and the object's key (``tenant="ns/name"`` for
TenantControlPlanes) around every reconcile, the tenant pipeline binds ``step``; both live in a
:class:`contextvars.ContextVar`, so every line logged while a reconcile runs, in any logger and
in tasks or threads it starts, carries them.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

_NONE: Mapping[str, str] = MappingProxyType({})
FIELDS: ContextVar[Mapping[str, str]] = ContextVar("haku_log_fields", default=_NONE)


def bind(**fields: str) -> None:
    """Add ``fields`` to the current context (a reconcile's task) until it is reset."""
    FIELDS.set({**FIELDS.get(), **fields})


@contextmanager
def bound(**fields: str) -> Iterator[None]:
    """``fields`` on every line logged inside the block, then the previous fields again."""
    token = FIELDS.set({**FIELDS.get(), **fields})
    try:
        yield
    finally:
        FIELDS.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (as ``record.fields``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.fields = dict(FIELDS.get())
        return True


def _fields(record: logging.LogRecord) -> dict[str, str]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else dict(FIELDS.get())


class JSONFormatter(logging.Formatter):
    """One JSON object a line: time (RFC 3339, UTC, ms), level, logger, message, the bound
    fields (controller, tenant, step, …) and ``exception`` with the traceback when present."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [key=value …]`` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = _fields(record)
        if fields:
            line += " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]"
        return line


def configure(fmt: str | None = None, level: int = logging.INFO,
              stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr) as ``json`` or ``text``; None
    picks text on a terminal and JSON otherwise. Returns the handler it installed."""
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "text" if stream.isatty() else "json"
    if fmt not in ("json", "text"):
        raise ValueError(f"log format {fmt!r} is neither json nor text")
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per request otherwise
    return handler
