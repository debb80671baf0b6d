"""The operator's HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz``.

A deliberately tiny HTTP/1.1 server on :func:`asyncio.start_server` (GET and HEAD, one request
per connection), so the probes answer from the operator's own event loop: an answer at all
proves the loop runs.

- ``/healthz``: 200 while the event loop serves and no controller has failed.
- ``/readyz``: 200 once the CRDs are installed and the operator either leads (its Lease
  renewed within the renew deadline) with every watch stream connected and its initial list
  delivered, or is a standby whose last attempt at the Lease reached the API server; 503 with
  the reason otherwise (starting, stopping, the API server unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("haku.probes")

Answer = tuple[int, str, bytes]  # status, content type, body
Route = Callable[[], Answer]

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           500: "Internal Server Error", 503: "Service Unavailable"}
TEXT = "text/plain; charset=utf-8"


@dataclass
class Health:
    """What the probes report; the operator updates it as it goes."""

    crds_installed: bool = False
    phase: str = "starting"  # starting | standby | leading | stopping
    lease_reachable: Callable[[], bool] = lambda: True
    # While leading: the Lease was renewed within the renew deadline (the fence is open).
    lease_held: Callable[[], bool] = lambda: True
    informers_started: Callable[[], bool] = lambda: False
    failed: str | None = None

    def live(self) -> tuple[bool, str]:
        if self.failed:
            return False, f"failed: {self.failed}"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self.failed:
            return False, f"failed: {self.failed}"
        if not self.crds_installed:
            return False, "installing CRDs"
        if self.phase == "standby":
            return (True, "standby, waiting for the Lease") if self.lease_reachable() else \
                (False, "standby, cannot reach the Lease")
        if self.phase == "leading":
            if not self.lease_held():
                return False, "leading, but the Lease was not renewed in time"
            return (True, "leading") if self.informers_started() else \
                (False, "leading, starting watches")
        return False, self.phase

    def route(self, probe: Callable[[], tuple[bool, str]]) -> Route:
        def answer() -> Answer:
            ok, why = probe()
            return (200 if ok else 503), TEXT, (why + "\n").encode()
        return answer


def parse_address(address: str) -> tuple[str | None, int] | None:
    """``host:port`` (``:8080`` = every interface, port 0 = any free one); None for ``0``
    (disabled) or an empty value."""
    address = address.strip()
    if address in ("", "0"):
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"bind address {address!r} is not HOST:PORT, :PORT or 0")
    host = host.removeprefix("[").removesuffix("]")
    return (host or None), int(port)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    line = await reader.readline()
    parts = line.decode("latin-1").split()
    for _ in range(100):  # headers: read and ignore, up to a limit
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    return parts[0], parts[1]


async def _handle(routes: dict[str, Route], reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    try:
        request = await asyncio.wait_for(_read_request(reader), 10.0)
        if request is None:
            status, ctype, body, method = 400, TEXT, b"bad request\n", "GET"
        else:
            method, target = request
            route = routes.get(target.split("?", 1)[0])
            if route is None:
                status, ctype, body = 404, TEXT, b"not found\n"
            elif method not in ("GET", "HEAD"):
                status, ctype, body = 405, TEXT, b"GET or HEAD\n"
            else:
                try:
                    status, ctype, body = route()
                except Exception as e:
                    log.exception("answering %s", target)
                    status, ctype, body = 500, TEXT, f"{type(e).__name__}\n".encode()
        head = (f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
        await writer.drain()
    except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass  # a client that went away or sent garbage gets nothing more
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def serve(address: str, routes: dict[str, Route]) -> asyncio.Server | None:
    """Listen on ``address`` (see :func:`parse_address`); None if it disables serving."""
    parsed = parse_address(address)
    if parsed is None:
        return None
    host, port = parsed
    server = await asyncio.start_server(lambda r, w: _handle(routes, r, w), host, port)
    log.info("serving %s on %s", ", ".join(sorted(routes)), ", ".join(
        "{}:{}".format(*s.getsockname()[:2]) for s in server.sockets))
    return server


def bound_port(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port
