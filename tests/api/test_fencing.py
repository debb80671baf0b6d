"""Two leaders never act at once: real ``haku operator run`` processes against the API tier.

- A leads; A is frozen (SIGSTOP) until B holds the Lease and has acted on a change; once A
  resumes (SIGCONT) it sends no write at all (its requests are recorded on the wire), says it
  lost the Lease and exits non-zero, while B keeps leading.
- On SIGTERM an operator takes no new work, lets a reconcile in flight finish while it keeps
  renewing the Lease (renewTime advances during the drain), then releases the Lease.

Each operator runs ``haku.cli.main`` under a small launcher that appends every HTTP request it
sends (wall-clock time, method, path) to a file, at the transport, i.e. after the fence had its
say: what is in that file is what reached the wire. Tenants sit at DataStoreReady=False (the API
tier has no datastores), which is enough to drive writes: finalizer, status, Events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.coordination_v1 import Lease
from lightkube.types import PatchType

from haku.api.resources import TenantControlPlane
from haku.controller.operator import LEASE_NAME, install_crds
from haku.controller.resources import DataStore
from haku.dev.cluster import DevCluster
from tests.observability import http

NS = "fencing"
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}

LAUNCHER = """
import sys, time
import httpx2
record = open(sys.argv[1], "a", buffering=1)
original = httpx2.AsyncHTTPTransport.handle_async_request
async def handle(self, request):
    record.write(f"{time.time():.6f} {request.method} {request.url.path}\\n")
    return await original(self, request)
httpx2.AsyncHTTPTransport.handle_async_request = handle
from haku.cli import main
sys.exit(main(sys.argv[2:]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Operator:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    requests: Path
    health_port: int

    @property
    def identity(self) -> str:
        return f"{socket.gethostname()}-{self.proc.pid}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def sent(self) -> list[tuple[float, str, str]]:
        """(time, method, path) of every request this operator sent."""
        if not self.requests.exists():
            return []
        out = []
        for line in self.requests.read_text().splitlines():
            t, method, path = line.split(" ", 2)
            out.append((float(t), method, path))
        return out

    async def readyz(self) -> tuple[int, str]:
        try:
            status, _, body = await http(self.health_port, "/readyz")
        except OSError:
            return 0, ""
        return status, body.decode().strip()


def start(cluster: DevCluster, tmp_path: Path, name: str, lease_namespace: str) -> Operator:
    log, requests, port = tmp_path / f"{name}.log", tmp_path / f"{name}.requests", free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(requests), "operator", "run",
         f"--kubeconfig={cluster.layout.admin_kubeconfig}", f"--namespace={lease_namespace}",
         "--lease-duration=3", "--key-algorithm=ECDSA-P256", "--no-install-crds",
         "--metrics-bind-address=0", f"--health-probe-bind-address=127.0.0.1:{port}",
         "--log-format=text", "--workers=2"],
        stdout=log.open("ab"), stderr=subprocess.STDOUT)
    return Operator(name, proc, log, requests, port)


def stop(op: Operator) -> None:
    if op.proc.poll() is not None:
        return
    op.proc.send_signal(signal.SIGCONT)
    op.proc.send_signal(signal.SIGTERM)
    try:
        op.proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        op.proc.kill()
        op.proc.wait()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str,
                     *ops: Operator) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            logs = "\n".join(f"--- {o.name} ---\n{o.log_text()[-3000:]}" for o in ops)
            pytest.fail(f"timed out waiting for {what}\n{logs}")
        await asyncio.sleep(0.1)


async def lease_spec(c: AsyncClient, namespace: str) -> Any:
    try:
        return (await c.get(Lease, LEASE_NAME, namespace=namespace)).spec
    except ApiError as e:
        if e.status.code == 404:
            return None
        raise


async def holder(c: AsyncClient, namespace: str) -> str | None:
    spec = await lease_spec(c, namespace)
    return spec.holderIdentity if spec else None


def tcp(name: str) -> Any:
    return from_dict({"apiVersion": "haku.dev/v1alpha1", "kind": "TenantControlPlane",
                      "metadata": {"name": name, "namespace": NS},
                      "spec": {"dataStore": "missing-ds", "kubernetes": {"version": "v1.37.2"},
                               "controlPlane": {"deployment": {"replicas": 1},
                                                "service": {"serviceType": "ClusterIP"}}}})


async def reconciled(c: AsyncClient, name: str) -> bool:
    """The operator put its finalizer on and wrote a status (DataStoreReady=False)."""
    try:
        obj = (await c.get(TenantControlPlane, name, namespace=NS)).to_dict()
    except ApiError as e:
        if e.status.code == 404:
            return False
        raise
    conditions = (obj.get("status") or {}).get("conditions") or []
    return bool(obj["metadata"].get("finalizers")) and any(
        x["type"] == "DataStoreReady" for x in conditions)


async def gone(c: AsyncClient, name: str) -> bool:
    try:
        await c.get(TenantControlPlane, name, namespace=NS)
    except ApiError as e:
        if e.status.code == 404:
            return True
        raise
    return False


@pytest.fixture
async def admin(api_cluster: DevCluster) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(KubeConfig.from_file(api_cluster.layout.admin_kubeconfig),
                    field_manager="haku-test", trust_env=False)
    await install_crds(c, "haku-system")
    await c.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": NS}}))
    yield c
    # No operator runs any more: take off what finalizers are left (the test's own cleanup).
    async for t in c.list(TenantControlPlane, namespace=NS):
        with contextlib.suppress(ApiError):
            await c.patch(TenantControlPlane, t.metadata.name, {"metadata": {"finalizers": []}},
                          namespace=NS, patch_type=PatchType.MERGE)
        with contextlib.suppress(ApiError):
            await c.delete(TenantControlPlane, t.metadata.name, namespace=NS)
    await c.close()


async def test_a_resumed_old_leader_writes_nothing_and_exits(
        api_cluster: DevCluster, admin: AsyncClient, tmp_path: Path) -> None:
    c, lease_ns = admin, "haku-fencing"
    await install_crds(c, lease_ns)  # its Lease namespace
    a = start(api_cluster, tmp_path, "a", lease_ns)
    b: Operator | None = None
    try:
        await eventually(lambda: _is(holder(c, lease_ns), a.identity), 30, "A to lead", a)
        await eventually(lambda: _is(a.readyz(), (200, "leading")), 30, "A ready", a)
        b = start(api_cluster, tmp_path, "b", lease_ns)
        await eventually(lambda: _is(b.readyz(), (200, "standby, waiting for the Lease")),
                         30, "B on standby", a, b)

        await c.create(tcp("first"))
        await eventually(lambda: reconciled(c, "first"), 30, "A to reconcile", a)
        # Give A work to be in the middle of when it is frozen.
        busy = [f"busy-{i}" for i in range(4)]
        seen = len(a.sent())
        for name in busy:
            await c.create(tcp(name))

        async def a_writing() -> bool:
            return any(m in MUTATING and "/busy-" in p for _, m, p in a.sent()[seen:])

        await eventually(a_writing, 30, "A to start on the new tenants", a)
        a.proc.send_signal(signal.SIGSTOP)
        stopped_at = time.time()

        # B takes over once it has seen the Lease unchanged for 3 s of its own time: never
        # sooner than 3 s after A's last renewal was sent.
        await eventually(lambda: _is(holder(c, lease_ns), b.identity), 30, "B to take over",
                         a, b)
        took_over_after = time.time() - stopped_at
        renewed = [t for t, m, p in a.sent() if m == "PUT" and p.endswith(f"/{LEASE_NAME}")]
        assert renewed and time.time() - max(renewed) >= 3.0
        await eventually(lambda: _is(b.readyz(), (200, "leading")), 30, "B ready", a, b)
        # Changes only B can act on while A is frozen: a new tenant, a deleted one.
        await c.create(tcp("during"))
        await c.delete(TenantControlPlane, "first", namespace=NS)
        await eventually(lambda: reconciled(c, "during"), 30, "B to reconcile", a, b)
        await eventually(lambda: gone(c, "first"), 30, "B to finalize a deleted tenant", a, b)

        async def all_busy_reconciled() -> bool:
            return all([await reconciled(c, name) for name in busy])

        await eventually(all_busy_reconciled, 30, "B to take over A's work", a, b)

        resumed_at = time.time()
        a.proc.send_signal(signal.SIGCONT)
        try:
            code = await asyncio.wait_for(asyncio.to_thread(a.proc.wait), 15)
        except TimeoutError:
            pytest.fail("A did not exit after it resumed\n" + a.log_text()[-4000:])
        exited_after = time.time() - resumed_at
        log = a.log_text()
        assert code != 0, log[-4000:]
        assert "lost the Lease" in log, log[-4000:]

        # What A sent after it resumed: reads at most, never a write.
        after = [(m, p) for t, m, p in a.sent() if t >= resumed_at]
        writes = [(m, p) for m, p in after if m in MUTATING]
        assert writes == [], (writes, log[-4000:])
        assert all(t < stopped_at + 1.0 for t, m, _ in a.sent() if m in MUTATING)
        # B leads on, undisturbed.
        assert await holder(c, lease_ns) == b.identity
        assert await b.readyz() == (200, "leading")
        assert b.proc.poll() is None
        print(f"B took over {took_over_after:.1f}s after A froze; A exited "
              f"{exited_after:.1f}s after resuming; requests A sent after resuming: {after}; "
              f"writes A's fence refused: {log.count('fenced: refused')}")
    finally:
        stop(a)
        if b is not None:
            # B finalizes what is left while it still leads.
            async for t in c.list(TenantControlPlane, namespace=NS):
                with contextlib.suppress(ApiError):
                    await c.delete(TenantControlPlane, t.metadata.name, namespace=NS)
            for _ in range(50):
                if b.proc.poll() is not None or not [
                        t async for t in c.list(TenantControlPlane, namespace=NS)]:
                    break
                await asyncio.sleep(0.2)
            stop(b)


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


class Tarpit:
    """A "PostgreSQL server" that accepts the first connection and says nothing for ``hold``
    seconds before hanging up (later connections are closed at once)."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.connected = asyncio.Event()
        self.hung_up_at: float | None = None
        self.server: asyncio.Server | None = None

    async def _serve(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.connected.is_set():
            self.connected.set()
            await asyncio.sleep(self.hold)
            self.hung_up_at = time.time()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()


async def test_sigterm_drains_while_renewing_then_releases(
        api_cluster: DevCluster, admin: AsyncClient, tmp_path: Path) -> None:
    c, lease_ns, hold = admin, "haku-drain", 5.0
    await install_crds(c, lease_ns)
    tarpit = Tarpit(hold)
    async with tarpit as port:
        content = base64.b64encode(b"haku").decode()
        await c.apply(from_dict({
            "apiVersion": "haku.dev/v1alpha1", "kind": "DataStore",
            "metadata": {"name": "fencing-slow"},
            "spec": {"driver": "PostgreSQL", "endpoints": [f"127.0.0.1:{port}"],
                     "basicAuth": {"username": {"content": content},
                                   "password": {"content": content}}}}), force=True)
        op = start(api_cluster, tmp_path, "drain", lease_ns)
        try:
            await eventually(lambda: _is(holder(c, lease_ns), op.identity), 30, "it to lead",
                             op)
            # Its DataStore check is in flight (connected, waiting for an answer) ...
            await asyncio.wait_for(tarpit.connected.wait(), 30)
            await asyncio.sleep(0.5)
            op.proc.send_signal(signal.SIGTERM)
            term_at = time.time()
            renewals: set[str] = set()
            # ... so it drains, and keeps renewing meanwhile.
            while op.proc.poll() is None and time.time() - term_at < 40:
                spec = await lease_spec(c, lease_ns)
                if spec and spec.holderIdentity == op.identity and spec.renewTime:
                    renewals.add(str(spec.renewTime))
                await asyncio.sleep(0.1)
            code = await asyncio.wait_for(asyncio.to_thread(op.proc.wait), 10)
            exited_after = time.time() - term_at
            log = op.log_text()
            assert code == 0, log[-4000:]
            spec = await lease_spec(c, lease_ns)
            assert spec.holderIdentity is None  # released at the end
            # It waited for the reconcile in flight (the tarpit hung up first) and renewed
            # the Lease all along: past the 3 s a holder that stopped renewing would keep it.
            assert tarpit.hung_up_at is not None and tarpit.hung_up_at < term_at + exited_after
            assert len(renewals) >= 4, (sorted(renewals), log[-4000:])
            last = max(datetime.fromisoformat(r).timestamp() for r in renewals)
            assert last - term_at > 3.0, (sorted(renewals), term_at)
            # The reconcile in flight finished, and wrote its outcome, after SIGTERM.
            ds = (await c.get(DataStore, "fencing-slow")).to_dict()
            ready = [x for x in (ds.get("status") or {}).get("conditions") or []
                     if x["type"] == "Ready"]
            assert ready and ready[0]["status"] == "False", ds.get("status")
            status_writes = [t for t, m, p in op.sent()
                             if m == "PATCH" and p.endswith("/datastores/fencing-slow/status")]
            assert status_writes and max(status_writes) > term_at, log[-4000:]
            assert "waiting up to 20s for 1 reconcile(s) in flight" in log, log[-4000:]
            print(f"drained in {exited_after:.1f}s with {len(renewals)} renewals meanwhile")
        finally:
            stop(op)
            with contextlib.suppress(ApiError):
                await c.patch(DataStore, "fencing-slow", {"metadata": {"finalizers": []}},
                              patch_type=PatchType.MERGE)
            with contextlib.suppress(ApiError):
                await c.delete(DataStore, "fencing-slow")
