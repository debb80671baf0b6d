"""JSON (and text) log lines carry the reconcile's controller, key and pipeline step."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from haku.controller import logs
from haku.controller.runtime import Controller, Key, Result
from haku.controller.tenant import StepTimer


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    """The root logger, its handlers and level put back afterwards."""
    logger = logging.getLogger()
    handlers, level = list(logger.handlers), logger.level
    yield logger
    for h in list(logger.handlers):
        logger.removeHandler(h)
    for h in handlers:
        logger.addHandler(h)
    logger.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_have_time_level_logger_message_fields_and_exception(
        root: logging.Logger) -> None:
    out = io.StringIO()
    logs.configure("json", stream=out)
    log = logging.getLogger("haku.test")
    with logs.bound(tenant="ns/t1", step="datastore"):
        log.info("hello %s", "world")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("it failed")
    log.warning("outside")
    first, second, third = lines(out)
    assert first["message"] == "hello world"
    assert first["level"] == "info" and first["logger"] == "haku.test"
    assert first["tenant"] == "ns/t1" and first["step"] == "datastore"
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert "exception" not in first
    assert "RuntimeError: boom" in second["exception"] and "Traceback" in second["exception"]
    assert "tenant" not in third and "step" not in third and third["level"] == "warning"


def test_text_format_appends_the_fields(root: logging.Logger) -> None:
    out = io.StringIO()
    logs.configure("text", stream=out)
    with logs.bound(tenant="ns/t1", step="service"):
        logging.getLogger("haku.test").info("applied")
    line = out.getvalue().strip()
    assert line.endswith("INFO haku.test: applied [tenant=ns/t1 step=service]")


def test_default_is_json_when_not_a_terminal(root: logging.Logger) -> None:
    out = io.StringIO()  # isatty() is False
    logs.configure(None, stream=out)
    logging.getLogger("haku.test").info("x")
    assert lines(out)[0]["message"] == "x"
    with pytest.raises(ValueError, match="neither json nor text"):
        logs.configure("xml", stream=out)


async def test_every_line_of_a_reconcile_carries_tenant_and_step(
        root: logging.Logger) -> None:
    out = io.StringIO()
    logs.configure("json", stream=out)
    log = logging.getLogger("haku.test")
    done = asyncio.Event()

    async def reconcile(key: Key) -> Result:
        timer = StepTimer()
        timer.enter("datastore")
        log.info("in the datastore step")
        await asyncio.to_thread(log.info, "from a thread")
        timer.enter("certificates")
        if key[1] == "bad":
            done.set()
            raise ValueError("certificates broke")
        log.info("in the certificates step")
        return Result()

    c = Controller("tenantcontrolplane", reconcile, workers=1, key_field="tenant")
    task = asyncio.create_task(c.run(None, [], []))  # type: ignore[arg-type]
    c.observe("ADDED", [("ns", "good"), ("ns", "bad")])
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0.05)
    log.info("after")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    got = lines(out)
    during = [(e.get("tenant"), e.get("step"), e["message"]) for e in got[:-1]]
    assert during[:3] == [("ns/good", "datastore", "in the datastore step"),
                          ("ns/good", "datastore", "from a thread"),
                          ("ns/good", "certificates", "in the certificates step")]
    failure = got[-2]
    assert failure["tenant"] == "ns/bad" and failure["step"] == "certificates"
    assert failure["controller"] == "tenantcontrolplane"
    assert "ValueError: certificates broke" in failure["exception"]
    assert "tenant" not in got[-1] and "step" not in got[-1]  # unbound after the reconcile
