"""The day-2 client loop's retry rule: what client-go sends again, and nothing else."""

from __future__ import annotations

from typing import Any

import pytest
from lightkube import ApiError
from lightkube.core.exceptions import httpx

from haku.dev.client_loop import retry_after


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
