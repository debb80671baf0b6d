"""Where a tenant's endpoint comes from, for each Service type."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.controller.config import OperatorConfig
from haku.controller.pipeline import Wait
from haku.controller.steps.exposure import (
    ServiceStep,
    choose_node_address,
    previous_node_address,
)
from haku.render import controlplane


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


def ctx(tenant: TenantControlPlaneSpec, status: dict[str, Any] | None = None) -> Any:
    return SimpleNamespace(spec=tenant, previous_status=status or {})


def reconciler(node_address: str | None = None) -> ServiceStep:
    deps = SimpleNamespace(config=OperatorConfig(node_address=node_address))
    return ServiceStep(deps)  # type: ignore[arg-type]  (only the config is read)


async def test_explicit_address_wins() -> None:
    assert await reconciler().endpoint_address(ctx(spec("LoadBalancer", "192.0.2.7")),
                                                service()) == "192.0.2.7"


async def test_cluster_ip() -> None:
    assert await reconciler().endpoint_address(ctx(spec("ClusterIP")), service()) == "10.96.0.9"


async def test_load_balancer_ip_or_host_name_and_waiting_before() -> None:
    r = reconciler()
    with pytest.raises(Wait) as info:
        await r.endpoint_address(ctx(spec("LoadBalancer")), service())
    assert info.value.condition.reason == "WaitingForLoadBalancer"
    assert await r.endpoint_address(ctx(spec("LoadBalancer")),
                                     service(ingress=[{"ip": "203.0.113.5"}])) == "203.0.113.5"
    assert await r.endpoint_address(
        ctx(spec("LoadBalancer")), service(ingress=[{"hostname": "lb.example.com"}])) == \
        "lb.example.com"


async def test_node_port_uses_the_configured_node_address() -> None:
    assert await reconciler("10.245.0.1").endpoint_address(ctx(spec("NodePort")),
                                                            service()) == "10.245.0.1"


def node(name: str, address: str | None, ready: bool = True) -> Any:
    addresses = [SimpleNamespace(type="InternalIP", address=address)] if address else []
    return SimpleNamespace(metadata=SimpleNamespace(name=name), status=SimpleNamespace(
        addresses=[SimpleNamespace(type="Hostname", address=name), *addresses],
        conditions=[SimpleNamespace(type="Ready", status="True" if ready else "False")]))


def test_a_node_port_endpoint_stays_on_its_node_while_the_node_is_there() -> None:
    nodes = [node("b", "10.0.0.2"), node("a", "10.0.0.1", ready=False), node("c", "10.0.0.3")]
    # New: the first Ready node by name, whatever order they are listed in.
    assert choose_node_address(nodes, None) == "10.0.0.2"
    assert choose_node_address(list(reversed(nodes)), None) == "10.0.0.2"
    # Kept while a node has it, even one that is not Ready right now, and even when a node
    # that sorts first joins.
    assert choose_node_address([*nodes, node("0", "10.0.0.9")], "10.0.0.3") == "10.0.0.3"
    assert choose_node_address(nodes, "10.0.0.1") == "10.0.0.1"
    # Its node gone: another Ready node.
    assert choose_node_address(nodes, "10.0.0.7") == "10.0.0.2"
    # No Ready node with an address: none (the step waits).
    assert choose_node_address([node("a", "10.0.0.1", ready=False), node("b", None)],
                               None) is None


def test_the_previous_node_address_comes_from_status() -> None:
    assert previous_node_address({}) is None
    assert previous_node_address({"kubernetesResources": {"service": {
        "nodeAddress": "10.0.0.5"}}, "controlPlaneEndpoint": "10.0.0.6:31000"}) == "10.0.0.5"
    # Tenants from before it was recorded: the endpoint's host, if it is an address.
    assert previous_node_address({"controlPlaneEndpoint": "10.0.0.6:31000"}) == "10.0.0.6"
    assert previous_node_address({"controlPlaneEndpoint": "[fd00::6]:31000"}) == "fd00::6"
    assert previous_node_address({"controlPlaneEndpoint": "api.example.com:6443"}) is None


async def test_node_port_waits_for_a_ready_node() -> None:
    class Client:
        async def list(self, kind: Any) -> Any:
            for n in (node("a", "10.0.0.1", ready=False),):
                yield n

    deps = SimpleNamespace(config=OperatorConfig(), client=Client())
    step = ServiceStep(deps)  # type: ignore[arg-type]
    with pytest.raises(Wait) as info:
        await step.endpoint_address(ctx(spec("NodePort")), service())
    assert info.value.condition.reason == "NoNodeAddress"
    # The node it had before is kept though it is not Ready.
    assert await step.endpoint_address(ctx(spec("NodePort"), {"kubernetesResources": {
        "service": {"nodeAddress": "10.0.0.1"}}}), service()) == "10.0.0.1"


def test_kube_apiserver_listens_on_the_port_clients_dial() -> None:
    """The tenant's `kubernetes` Service endpoints are --advertise-address:--secure-port, so
    kube-apiserver must listen on the port clients reach it on: a NodePort's allocated port."""
    allocated = spec("NodePort")
    assert allocated.port_given is None
    assert controlplane.secure_port(allocated, 31234) == 31234
    assert controlplane.secure_port(allocated, None) == 6443  # not allocated yet
    given = TenantControlPlaneSpec.parse({
        "metadata": {"name": "t", "namespace": "n", "uid": "u"},
        "spec": {"kubernetes": {"version": "v1.37.2"},
                 "controlPlane": {"service": {"serviceType": "NodePort"}},
                 "networkProfile": {"port": 31500}}})
    assert controlplane.secure_port(given, 31500) == 31500
    assert controlplane.secure_port(spec("ClusterIP"), None) == 6443
    assert controlplane.secure_port(spec("LoadBalancer"), 30001) == 6443
    svc = controlplane.service(allocated, 31234)
    assert svc["spec"]["ports"][0] == {"name": "kube-apiserver", "protocol": "TCP",
                                       "port": 6443, "targetPort": 31234}
