"""Where a tenant's endpoint comes from, for each Service type."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.controller.config import OperatorConfig
from haku.controller.pipeline import Wait
from haku.controller.steps.exposure import ServiceStep


def spec(service_type: str, address: str = "") -> TenantControlPlaneSpec:
    return TenantControlPlaneSpec.parse({
        "metadata": {"name": "t", "namespace": "n", "uid": "u"},
        "spec": {"kubernetes": {"version": "v1.37.2"},
                 "controlPlane": {"service": {"serviceType": service_type}},
                 "networkProfile": {"address": address}}})


def service(cluster_ip: str = "10.96.0.9", ingress: list[dict[str, Any]] | None = None) -> Any:
    entries = [SimpleNamespace(ip=e.get("ip"), hostname=e.get("hostname"))
               for e in ingress or []]
    return SimpleNamespace(
        metadata=SimpleNamespace(name="t"), spec=SimpleNamespace(clusterIP=cluster_ip),
        status=SimpleNamespace(loadBalancer=SimpleNamespace(ingress=entries)))


def reconciler(node_address: str | None = None) -> ServiceStep:
    deps = SimpleNamespace(config=OperatorConfig(node_address=node_address))
    return ServiceStep(deps)  # type: ignore[arg-type]  (only the config is read)


async def test_explicit_address_wins() -> None:
    assert await reconciler().endpoint_address(spec("LoadBalancer", "192.0.2.7"),
                                                service()) == "192.0.2.7"


async def test_cluster_ip() -> None:
    assert await reconciler().endpoint_address(spec("ClusterIP"), service()) == "10.96.0.9"


async def test_load_balancer_ip_or_host_name_and_waiting_before() -> None:
    r = reconciler()
    with pytest.raises(Wait) as info:
        await r.endpoint_address(spec("LoadBalancer"), service())
    assert info.value.condition.reason == "WaitingForLoadBalancer"
    assert await r.endpoint_address(spec("LoadBalancer"),
                                     service(ingress=[{"ip": "203.0.113.5"}])) == "203.0.113.5"
    assert await r.endpoint_address(
        spec("LoadBalancer"), service(ingress=[{"hostname": "lb.example.com"}])) == \
        "lb.example.com"


async def test_node_port_uses_the_configured_node_address() -> None:
    assert await reconciler("10.245.0.1").endpoint_address(spec("NodePort"),
                                                            service()) == "10.245.0.1"
