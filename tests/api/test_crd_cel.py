"""A CRD with a CEL rule on a real kube-apiserver: valid objects apply, invalid ones are refused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.generic_resource import create_namespaced_resource

from haku.controller.operator import wait_established
from haku.dev.cluster import DevCluster

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.haku.dev"},
    "spec": {
        "group": "test.haku.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{
            "name": "v1",
            "served": True,
            "storage": True,
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {
                    "type": "object",
                    "required": ["min", "max"],
                    "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                    "x-kubernetes-validations": [{
                        "rule": "self.min <= self.max",
                        "message": "spec.min must not exceed spec.max",
                    }],
                }},
            }},
        }],
    },
}

Widget = create_namespaced_resource("test.haku.dev", "v1", "Widget", "widgets")


@pytest.fixture
async def client(api_cluster: DevCluster) -> AsyncIterator[AsyncClient]:
    config = KubeConfig.from_file(api_cluster.layout.admin_kubeconfig)
    c = AsyncClient(config, field_manager="haku-test")
    await c.apply(from_dict(CRD), force=True)
    await wait_established(c, "widgets.test.haku.dev")
    yield c
    await c.close()


def _widget(name: str, low: int, high: int) -> object:
    return Widget(metadata={"name": name, "namespace": "default"},  # type: ignore[call-arg]
                  spec={"min": low, "max": high})


async def test_a_valid_object_is_server_side_applied(client: AsyncClient) -> None:
    applied = await client.apply(_widget("ok", 1, 5))
    assert applied.spec == {"min": 1, "max": 5}
    managers = {m.manager: m.operation for m in applied.metadata.managedFields}
    assert managers == {"haku-test": "Apply"}
    again = await client.apply(_widget("ok", 1, 7))
    assert again.spec["max"] == 7 and again.metadata.generation == 2


async def test_an_invalid_object_is_rejected_with_the_rules_message(client: AsyncClient) -> None:
    with pytest.raises(ApiError) as info:
        await client.apply(_widget("bad", 9, 1))
    assert info.value.status.code == 422
    assert "spec.min must not exceed spec.max" in info.value.status.message
    with pytest.raises(ApiError) as missing:
        await client.get(Widget, "bad", namespace="default")
    assert missing.value.status.code == 404
