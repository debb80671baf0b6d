"""The operator's HTTP endpoints on real sockets (127.0.0.1, ephemeral ports)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from haku.controller.probes import parse_address
from haku.controller.telemetry import Telemetry
from tests.observability import http, samples, value


def test_parse_address() -> None:
    assert parse_address(":8080") == (None, 8080)
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:9090") == ("::1", 9090)
    assert parse_address("0") is None
    assert parse_address("") is None
    for bad in ("8080", "host:", "host:http", ":70000"):
        with pytest.raises(ValueError, match="not HOST:PORT"):
            parse_address(bad)


@pytest.fixture
async def telemetry() -> AsyncIterator[Telemetry]:
    t = Telemetry()
    await t.start("127.0.0.1:0", "127.0.0.1:0")
    yield t
    await t.stop()


async def test_metrics_endpoint_serves_the_operators_registry(telemetry: Telemetry) -> None:
    telemetry.metrics.add_queue("tenantcontrolplane", lambda: 3)
    telemetry.metrics.reconcile_errors.labels("tenantcontrolplane", "Unreachable").inc()
    status, headers, body = await http(telemetry.port("metrics"), "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    assert int(headers["content-length"]) == len(body)
    s = samples(body.decode())
    assert value(s, "haku_workqueue_depth", controller="tenantcontrolplane") == 3.0
    assert value(s, "haku_reconcile_errors_total", controller="tenantcontrolplane",
                 reason="Unreachable") == 1.0
    assert telemetry.port("metrics") != telemetry.port("health")
    status, _, _ = await http(telemetry.port("health"), "/metrics")
    assert status == 404  # each server has its own paths


async def test_readyz_follows_the_operators_phase(telemetry: Telemetry) -> None:
    port, h = telemetry.port("health"), telemetry.health
    assert await http(port, "/healthz") == (200, {"content-type": "text/plain; charset=utf-8",
                                                  "content-length": "3",
                                                  "connection": "close"}, b"ok\n")
    status, _, body = await http(port, "/readyz")
    assert (status, body) == (503, b"installing CRDs\n")
    h.crds_installed = True
    h.phase = "standby"
    reachable = [True]
    h.lease_reachable = lambda: reachable[0]
    assert (await http(port, "/readyz"))[0] == 200
    reachable[0] = False
    assert (await http(port, "/readyz"))[2] == b"standby, cannot reach the Lease\n"
    h.phase = "leading"
    started = [False]
    h.informers_started = lambda: started[0]
    assert (await http(port, "/readyz"))[0] == 503
    started[0] = True
    assert (await http(port, "/readyz?verbose"))[:3:2] == (200, b"leading\n")
    held = [False]  # the Lease not renewed within the renew deadline: not ready
    h.lease_held = lambda: held[0]
    assert (await http(port, "/readyz"))[:3:2] == (
        503, b"leading, but the Lease was not renewed in time\n")
    held[0] = True
    assert (await http(port, "/readyz"))[0] == 200
    h.phase = "stopping"
    assert (await http(port, "/readyz"))[0] == 503
    h.failed = "lost the Lease"
    assert (await http(port, "/healthz"))[0] == 503


async def test_bad_requests_get_4xx(telemetry: Telemetry) -> None:
    port = telemetry.port("health")
    assert (await http(port, "/nope"))[0] == 404
    assert (await http(port, "/healthz", method="POST"))[0] == 405
    status, headers, body = await http(port, "/healthz", method="HEAD")
    assert (status, headers["content-length"], body) == (200, "3", b"")
    assert (await http(port, "", raw=b"garbage\r\n\r\n"))[0] == 400


async def test_zero_disables_and_a_shared_fixed_address_serves_everything() -> None:
    off = Telemetry()
    await off.start("0", "0")
    assert off.servers == {} and off.serving.is_set()
    probe = Telemetry()
    await probe.start("127.0.0.1:0", "127.0.0.1:0")
    port = probe.port("metrics")
    await probe.stop()
    shared = Telemetry()
    await shared.start(f"127.0.0.1:{port}", f"127.0.0.1:{port}")
    try:
        assert shared.port("health") == shared.port("metrics") == port
        assert (await http(port, "/metrics"))[0] == 200
        assert (await http(port, "/healthz"))[0] == 200
    finally:
        await shared.stop()
    with pytest.raises(OSError):  # a taken port is an error at start, not a silent gap
        blocker = Telemetry()
        await blocker.start("127.0.0.1:0", "0")
        try:
            await Telemetry().start(f"127.0.0.1:{blocker.port('metrics')}", "0")
        finally:
            await blocker.stop()
