"""etcd error handling, with RPC errors as grpc raises them (no server needed)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from haku.datastore.base import (
    AuthenticationFailed,
    DataStoreError,
    PermissionDenied,
    TLSFailure,
    Unreachable,
)
from haku.datastore.etcd import EtcdDriver, range_end
from haku.datastore.settings import Settings
from haku.render import pki


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.fixture
async def driver() -> Any:
    ca = pki.new_ca("ca", pki.KeyAlgorithm.ECDSA_P256)
    root = pki.issue(ca, "root", pki.Usage.CLIENT, algorithm=pki.KeyAlgorithm.ECDSA_P256)
    d = EtcdDriver(Settings("t", "etcd", ("127.0.0.1:1",), ca_cert=ca.cert_pem,
                            ca_key=ca.key_pem, client_cert=root.cert_pem,
                            client_key=root.key_pem))
    yield d
    await d.close()


def failing(errors: list[grpc.aio.AioRpcError]) -> Any:
    calls = []

    async def method(request: Any, timeout: float) -> str:
        calls.append(request)
        if errors:
            raise errors.pop(0)
        return "done"

    method.calls = calls  # type: ignore[attr-defined]
    return method


async def test_an_auth_store_race_is_retried(driver: EtcdDriver) -> None:
    race = "etcdserver: revision of auth store is old"
    method = failing([rpc_error(grpc.StatusCode.FAILED_PRECONDITION, race)] * 3)
    assert await driver._call("x", method, "req") == "done"
    assert len(method.calls) == 4


async def test_the_race_retry_gives_up_eventually(driver: EtcdDriver) -> None:
    race = "etcdserver: revision of auth store is old"
    method = failing([rpc_error(grpc.StatusCode.FAILED_PRECONDITION, race)] * 50)
    with pytest.raises(DataStoreError, match="revision of auth store is old"):
        await driver._call("x", method, "req")


@pytest.mark.parametrize(("code", "details", "kind"), [
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", Unreachable),
    (grpc.StatusCode.UNAVAILABLE, "Ssl handshake failed: CERTIFICATE_VERIFY_FAILED", TLSFailure),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", Unreachable),
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name not found", AuthenticationFailed),
    (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied", PermissionDenied),
])
async def test_errors_map_to_the_reasons_conditions_carry(
    driver: EtcdDriver, code: grpc.StatusCode, details: str, kind: type[Exception]
) -> None:
    with pytest.raises(kind) as info:
        await driver._call("doing it", failing([rpc_error(code, details)]), "req")
    assert str(info.value).startswith("doing it: ")
    assert info.value.reason != "Error"  # type: ignore[attr-defined]


async def test_tolerated_answers_count_as_done(driver: EtcdDriver) -> None:
    exists = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: role name already exists")
    assert await driver._call("x", failing([exists]), "r", tolerate=("already exists",)) is None


def test_prefix_range_end_is_etcds() -> None:
    assert range_end(b"/a/") == b"/a0"
    assert range_end(b"/a\xff") == b"/b"
    assert range_end(b"\xff\xff") == b"\0"
