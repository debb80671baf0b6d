"""A tenant client that never stops: what day-2 operations (an upgrade, a CA rotation) are
measured against.

:class:`ClientLoop` sends a steady stream of requests through a tenant's endpoint with its
admin kubeconfig, as an application would: a list of ConfigMaps, the create of one and its
delete, in turn, ``rate`` requests per second, over one keep-alive client speaking HTTP/2 as
client-go and kubectl do with kube-apiserver. (HTTP/2 is what lets a server that shuts down
say which requests it did not take: its GOAWAY names the last stream it processed and the
client sends the rest again on a new connection. Over HTTP/1.1 a request sent on a kept-alive
connection just as the server closes it fails with no answer, whatever the server does.)
Every request is recorded (time, operation, error if it failed; a request still unanswered
after ``timeout`` fails). Like client-go it sends a request again when the answer asks for it
(:func:`retry_after`: 429, or a 5xx with ``Retry-After``), up to three times; such a request
counts as retried, and fails only if the last answer is an error.

One gap of the client library is closed by hand: after a server's graceful GOAWAY, httpcore
gives up on the requests the server said it took (stream IDs up to the GOAWAY's last one)
instead of reading their answers, which the server still sends (encode/httpcore#1054; Go's
client, and so client-go, reads them). Such a request (:func:`taken_before_goaway`) is sent
again on a new connection and counts as retried; a create answered 409 or a delete answered
404 then means the first one was done. ``kubeconfig`` is asked
again every ``reread`` seconds (None: once), so a loop that reads it from the admin Secret
follows a rotated CA as a real client re-reading its file does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap

from haku.render.ca_rotation import certificates, fingerprint

KubeconfigSource = Callable[[], Awaitable[dict[str, Any]]]
OPERATIONS = ("list", "create", "delete")
MAX_RETRIES = 3


def retry_after(error: ApiError) -> float | None:
    """Seconds to wait before sending ``error``'s request again, as client-go does: a 429, or a
    5xx with a ``Retry-After`` header (a kube-apiserver shutting down answers a request that
    reaches it after its shutdown delay with 503 and ``Retry-After: 1``). None: do not."""
    code = error.status.code or 0
    header = error.response.headers.get("Retry-After") if error.response is not None else None
    if not (code == 429 or (code >= 500 and header is not None)):
        return None
    try:
        return min(max(float(header or 1), 0.0), 1.0)  # capped: the loop keeps its pace
    except ValueError:
        return 1.0


GRACEFUL_GOAWAY = re.compile(r"ConnectionTerminated error_code:(0|ErrorCodes\.NO_ERROR)\b")
DONE_BEFORE = {"create": 409, "delete": 404}  # the answer to a resent request that says so


def taken_before_goaway(error: BaseException) -> bool:
    """Whether ``error`` is httpcore giving up on a request that a graceful GOAWAY (error code
    NO_ERROR) said the server took: one whose answer was on its way."""
    return isinstance(error, httpx2.RemoteProtocolError) and bool(
        GRACEFUL_GOAWAY.search(str(error)))


@dataclass(frozen=True)
class Request:
    at: float  # seconds since the loop started
    operation: str
    seconds: float
    error: str = ""  # empty: it succeeded
    ca: str = ""  # fingerprints of the CAs it trusted (haku.render.ca_rotation.fingerprint)
    retries: int = 0  # answers that asked it to come back (retry_after) before the last one


@dataclass
class ClientLoop:
    kubeconfig: KubeconfigSource
    namespace: str = "default"
    rate: float = 5.0
    timeout: float = 10.0
    reread: float | None = None
    prefix: str = "client-loop"
    requests: list[Request] = field(default_factory=list)
    started_at: float | None = None  # time.monotonic() when run() began (Request.at is from it)

    def failures(self) -> list[Request]:
        return [r for r in self.requests if r.error]

    def summary(self) -> dict[str, Any]:
        failed = self.failures()
        durations = sorted(r.seconds for r in self.requests if not r.error)
        return {
            "requests": len(self.requests), "failed": len(failed),
            "retried": sum(1 for r in self.requests if r.retries),
            "p50_seconds": round(durations[len(durations) // 2], 4) if durations else None,
            "max_seconds": round(durations[-1], 4) if durations else None,
            "failures": [{"at": round(r.at, 2), "operation": r.operation, "error": r.error}
                         for r in failed[:20]],
        }

    async def _client(self) -> tuple[AsyncClient, str]:
        doc = await self.kubeconfig()
        data = base64.b64decode(doc["clusters"][0]["cluster"].get("certificate-authority-data")
                                or "")
        ca = ",".join(fingerprint(c) for c in certificates(data))
        return AsyncClient(KubeConfig.from_dict(doc), timeout=httpx2.Timeout(self.timeout),
                           trust_env=False, http2=True), ca

    async def _one(self, client: AsyncClient, operation: str, name: str) -> None:
        if operation == "list":
            async for _ in client.list(ConfigMap, namespace=self.namespace):
                pass
        elif operation == "create":
            await client.create(ConfigMap(metadata=ObjectMeta(name=name,
                                                              namespace=self.namespace),
                                          data={"at": str(time.time())}))
        else:
            await client.delete(ConfigMap, name, namespace=self.namespace)

    async def run(self, stop: asyncio.Event) -> None:
        """Send requests until ``stop`` is set."""
        started = self.started_at = time.monotonic()
        client, ca = await self._client()
        read_at = started
        period = 1.0 / self.rate
        n = 0
        try:
            while not stop.is_set():
                if self.reread is not None and time.monotonic() - read_at >= self.reread:
                    await client.close()
                    client, ca = await self._client()
                    read_at = time.monotonic()
                operation = OPERATIONS[n % len(OPERATIONS)]
                name = f"{self.prefix}-{n // len(OPERATIONS)}"
                t0 = time.monotonic()
                error, retries, resent = "", 0, False
                while True:
                    try:
                        await asyncio.wait_for(self._one(client, operation, name),
                                               self.timeout)
                        error = ""
                        break
                    except ApiError as e:
                        if resent and e.status.code == DONE_BEFORE.get(operation):
                            error = ""  # the server had done it before its GOAWAY
                            break
                        error = f"{e.status.code} {e.status.reason}: {e.status.message}"
                        wait = retry_after(e)
                        if wait is None or retries >= MAX_RETRIES:
                            break
                        retries += 1
                        await asyncio.sleep(wait)
                    except (httpx2.HTTPError, OSError, TimeoutError) as e:
                        error = f"{type(e).__name__}: {e}"
                        if not taken_before_goaway(e) or retries >= MAX_RETRIES:
                            break
                        retries, resent = retries + 1, True
                t1 = time.monotonic()
                self.requests.append(Request(round(t0 - started, 3), operation,
                                             round(t1 - t0, 4), error, ca, retries))
                n += 1
                next_at = started + n * period
                with_stop = max(0.0, next_at - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), with_stop)
        finally:
            await client.close()
