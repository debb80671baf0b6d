"""The fence: open only while the Lease was renewed within the renew deadline (local monotonic
clock); installed on a lightkube client it refuses every mutating request before it is sent."""

from __future__ import annotations

import math

import httpx2
import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap

from haku.controller.fencing import Fence
from haku.controller.lease import LostLeadership


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_closed_until_the_first_renewal() -> None:
    fence = Fence(6.0, Clock())
    assert not fence.held and fence.remaining() == 0
    with pytest.raises(LostLeadership, match="never taken"):
        fence.check()


def test_open_for_the_renew_deadline_after_the_renewal_began() -> None:
    clock = Clock()
    fence = Fence(6.0, clock)
    fence.renewed(clock.now - 1.0)  # the renewal request was sent 1 s ago
    assert fence.remaining() == pytest.approx(5.0)
    fence.check()
    clock.now += 4.99
    fence.check()
    clock.now += 0.01
    with pytest.raises(LostLeadership, match=r"last renewed 6\.0s ago"):
        fence.check()
    fence.renewed(clock.now)
    fence.check()
    fence.renewed(clock.now - 10)  # an older renewal finishing late changes nothing
    assert fence.remaining() == pytest.approx(6.0)


def test_revoked_for_good() -> None:
    clock = Clock()
    fence = Fence(6.0, clock)
    fence.renewed(clock.now)
    fence.revoke("someone else holds it")
    with pytest.raises(LostLeadership, match="someone else holds it"):
        fence.check()
    fence.renewed(clock.now + 1)  # a renewal that was in flight does not reopen it
    assert not fence.held


def test_always_passes_without_leader_election() -> None:
    fence = Fence.always()
    fence.check()
    fence.revoke("stopped")
    fence.check()
    assert fence.held and fence.remaining() == math.inf


def client_recording(sent: list[str]) -> AsyncClient:
    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(request.method)
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "x", "namespace": "default"}}
        return httpx2.Response(200, json=body)

    config = KubeConfig.from_dict({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://k8s.invalid"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]})
    return AsyncClient(config, field_manager="haku", trust_env=False,
                       transport=httpx2.MockTransport(handler))


async def test_installed_it_refuses_writes_before_sending_and_lets_reads_through(
        caplog: pytest.LogCaptureFixture) -> None:
    sent: list[str] = []
    client = client_recording(sent)
    clock = Clock()
    fence = Fence(6.0, clock)
    fence.install(client)
    cm = ConfigMap(metadata=ObjectMeta(name="x", namespace="default"))
    try:
        await client.get(ConfigMap, "x", namespace="default")
        assert sent == ["GET"]  # reads pass a closed fence
        for write in (client.create(cm), client.replace(cm), client.apply(cm),
                      client.patch(ConfigMap, "x", {"data": {}}, namespace="default"),
                      client.delete(ConfigMap, "x", namespace="default")):
            with pytest.raises(LostLeadership):
                await write
        assert sent == ["GET"]  # nothing was sent
        assert fence.refused == 5
        assert "fenced: refused POST /api/v1/namespaces/default/configmaps" in caplog.text

        fence.renewed(clock.now)
        await client.create(cm)
        await client.apply(cm)
        await client.delete(ConfigMap, "x", namespace="default")
        assert sent == ["GET", "POST", "PATCH", "DELETE"]

        clock.now += 6.0  # not renewed in time
        with pytest.raises(LostLeadership):
            await client.apply(cm)
        assert sent == ["GET", "POST", "PATCH", "DELETE"]
    finally:
        await client.close()


def test_install_needs_a_lightkube_client() -> None:
    with pytest.raises(TypeError, match="cannot fence"):
        Fence(1.0).install(object())  # type: ignore[arg-type]
