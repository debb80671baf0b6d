"""The day-2 client loop's retry rule: what client-go sends again, and nothing else."""

from __future__ import annotations

import asyncio
from typing import Any

import h2.errors
import h2.events
import httpcore2 as httpcore
import pytest
from lightkube import ApiError
from lightkube.core.exceptions import httpx

from haku.dev.client_loop import (
    MAX_RETRIES,
    ClientLoop,
    Request,
    retry_after,
    taken_before_goaway,
)


def error(code: int, headers: dict[str, str] | None = None) -> ApiError:
    status: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "code": code, "reason": "X", "message": "m"}
    request = httpx.Request("GET", "https://tenant/api/v1/configmaps")
    return ApiError(request=request, response=httpx.Response(code, headers=headers or {},
                                                             json=status, request=request))


@pytest.mark.parametrize(("code", "headers", "wait"), [
    (503, {"Retry-After": "1"}, 1.0),  # a kube-apiserver past its shutdown delay
    (500, {"Retry-After": "0"}, 0.0),
    (429, {}, 1.0),  # too many requests, no header: client-go waits 1 s
    (429, {"Retry-After": "30"}, 1.0),  # capped to keep the loop's pace
    (429, {"Retry-After": "soon"}, 1.0),
    (503, {}, None),  # a 5xx without the header is an answer, not a request to come back
    (500, {}, None),
    (403, {"Retry-After": "1"}, None),  # a refusal stays a refusal
    (404, {}, None),
])
def test_only_what_the_server_asks_to_retry_is_sent_again(
        code: int, headers: dict[str, str], wait: float | None) -> None:
    assert retry_after(error(code, headers)) == wait


def goaway(code: int, last: int = 165) -> httpx.RemoteProtocolError:
    """What httpx raises when httpcore gives up on a stream after a GOAWAY (the message is
    the h2 event's, as httpcore passes the event on)."""
    event = h2.events.ConnectionTerminated()
    event.error_code, event.last_stream_id = h2.errors._error_code_from_int(code), last
    return httpx.RemoteProtocolError(str(httpcore.RemoteProtocolError(event)))


def test_only_a_graceful_goaway_counts_as_taken() -> None:
    assert taken_before_goaway(goaway(0))
    assert not taken_before_goaway(goaway(2))  # INTERNAL_ERROR: the server gave up
    assert not taken_before_goaway(httpx.RemoteProtocolError("Server disconnected"))
    assert not taken_before_goaway(httpx.ConnectError("refused"))


class Scripted(ClientLoop):
    """A loop whose requests get the answers of a script (one list per operation) instead of
    going out."""

    def __init__(self, script: dict[str, list[BaseException | None]]) -> None:
        super().__init__(kubeconfig=self._no_kubeconfig, rate=1000.0)
        self.script = script

    @staticmethod
    async def _no_kubeconfig() -> dict[str, Any]:
        raise AssertionError("not asked")

    async def _client(self) -> tuple[Any, str]:
        class Client:
            async def close(self) -> None:
                pass
        return Client(), ""  # type: ignore[return-value]

    async def _one(self, client: Any, operation: str, name: str) -> None:
        answers = self.script[operation]
        answer = answers.pop(0) if answers else None
        if answer is not None:
            raise answer

    async def three(self) -> list[Request]:
        stop = asyncio.Event()

        async def stop_after_three() -> None:
            while len(self.requests) < 3:
                await asyncio.sleep(0)
            stop.set()
        await asyncio.gather(self.run(stop), stop_after_three())
        return self.requests[:3]


async def test_a_request_taken_before_a_graceful_goaway_is_sent_again() -> None:
    loop = Scripted({"list": [goaway(0)], "create": [goaway(0), error(409)],
                     "delete": [goaway(0), error(404)]})
    listed, created, deleted = await loop.three()
    # Sent again: the list answers, the create's 409 and the delete's 404 say the first did it.
    assert [(r.operation, r.error, r.retries) for r in (listed, created, deleted)] == [
        ("list", "", 1), ("create", "", 1), ("delete", "", 1)]


async def test_a_conflict_without_a_goaway_and_a_hard_goaway_stay_failures() -> None:
    loop = Scripted({"list": [goaway(2)], "create": [error(409)], "delete": [goaway(0)] * 4})
    listed, created, deleted = await loop.three()
    assert listed.error.startswith("RemoteProtocolError") and listed.retries == 0
    assert created.error.startswith("409") and created.retries == 0
    # Sent again at most MAX_RETRIES times.
    assert deleted.error.startswith("RemoteProtocolError") and deleted.retries == MAX_RETRIES
