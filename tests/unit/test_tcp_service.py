"""The Service, Deployment fields Kamaji has and Haku maps straight through, and the port the
endpoint uses."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from haku.controller.steps.exposure import endpoint_port
from haku.render import controlplane
from tests.unit.test_render_tenant import ETCD, tcp


def _svc(service: dict[str, Any], **network: Any) -> dict[str, Any]:
    return controlplane.service(tcp(controlPlane={"service": service},
                                    networkProfile=network))


def test_node_port_is_the_port_only_when_given() -> None:
    default = _svc({"serviceType": "NodePort"})
    assert default["spec"]["ports"][0] == {"name": "kube-apiserver", "protocol": "TCP",
                                           "port": 6443, "targetPort": 6443}
    given = _svc({"serviceType": "NodePort"}, port=31443)
    assert given["spec"]["ports"][0]["nodePort"] == 31443


def test_endpoint_uses_the_allocated_node_port() -> None:
    svc = SimpleNamespace(spec=SimpleNamespace(ports=[
        SimpleNamespace(name="kube-apiserver", nodePort=30123)]))
    assert endpoint_port(tcp(controlPlane={"service": {"serviceType": "NodePort"}}), svc) == 30123
    assert endpoint_port(tcp(), svc) == 6443  # ClusterIP: the Service port
    unallocated = SimpleNamespace(spec=SimpleNamespace(ports=None))
    assert endpoint_port(tcp(controlPlane={"service": {"serviceType": "NodePort"}}),
                         unallocated) == 6443


def test_load_balancer_fields_and_additional_ports() -> None:
    svc = _svc({"serviceType": "LoadBalancer", "allocateLoadBalancerNodePorts": False,
                "additionalPorts": [{"name": "metrics", "port": 9090},
                                    {"name": "dns", "port": 53, "protocol": "UDP",
                                     "targetPort": "dns", "appProtocol": "dns"}]},
               loadBalancerSourceRanges=["192.0.2.0/24"], loadBalancerClass="example.com/lb",
               address="192.0.2.9", allowAddressAsExternalIP=True)
    spec = svc["spec"]
    assert spec["loadBalancerSourceRanges"] == ["192.0.2.0/24"]
    assert spec["loadBalancerClass"] == "example.com/lb"
    assert spec["allocateLoadBalancerNodePorts"] is False
    assert "externalIPs" not in spec  # ClusterIP and NodePort only
    assert spec["ports"][1:] == [
        {"name": "metrics", "protocol": "TCP", "port": 9090, "targetPort": 9090},
        {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": "dns",
         "appProtocol": "dns"}]
    cluster_ip = _svc({"serviceType": "ClusterIP"}, address="192.0.2.9",
                      allowAddressAsExternalIP=True)
    assert cluster_ip["spec"]["externalIPs"] == ["192.0.2.9"]
    assert "loadBalancerClass" not in cluster_ip["spec"]


def test_security_contexts_automount_and_advertise_address_reach_the_pod() -> None:
    s = tcp(controlPlane={"service": {"serviceType": "ClusterIP"}, "deployment": {
        "podSecurityContext": {"runAsNonRoot": True},
        "containerSecurityContexts": {"apiServer": {"readOnlyRootFilesystem": True},
                                      "scheduler": {"runAsUser": 1000}},
        "automountServiceAccountToken": True}},
        networkProfile={"advertiseAddress": "192.0.2.50"})
    assert s.advertise_address == "192.0.2.50"
    d = controlplane.deployment(s, ETCD, s.advertise_address, {}, "kine:x")
    pod = d["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True}
    assert pod["automountServiceAccountToken"] is True
    c = {x["name"]: x for x in pod["containers"]}
    assert c["kube-apiserver"]["securityContext"] == {"readOnlyRootFilesystem": True}
    assert c["kube-scheduler"]["securityContext"] == {"runAsUser": 1000}
    assert "securityContext" not in c["kube-controller-manager"]
    assert "--advertise-address=192.0.2.50" in c["kube-apiserver"]["args"]
    plain = controlplane.deployment(tcp(), ETCD, "10.0.0.7", {}, "kine:x")
    assert "securityContext" not in plain["spec"]["template"]["spec"]
    assert plain["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
