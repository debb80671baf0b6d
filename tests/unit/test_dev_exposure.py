"""``haku dev exposure``: Traefik's image, the objects it applies, the tenant specs that use it
and the /etc/hosts block (pure parts; tests/node/test_exposure.py runs it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from haku import cli
from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.dev import exposure, images
from haku.render import controlplane, endpoint, gateway

NODE_IP = "10.245.0.1"


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


def test_the_image_holds_the_binary_as_a_non_root_user(tmp_path: Path) -> None:
    binary = tmp_path / "traefik"
    binary.write_text("elf")
    spec = exposure.image(binary, "v3.7.10")
    assert spec.name == "docker.io/library/traefik:v3.7.10"
    assert spec.entrypoint == ("/usr/local/bin/traefik",)
    assert spec.user == "65532:65532"
    assert spec.files[0].path == "/usr/local/bin/traefik" and spec.files[0].source == binary
    if Path(images.CA_BUNDLE).is_file():
        assert [f.path for f in spec.files[1:]] == [images.CA_BUNDLE]
    with pytest.raises(exposure.ExposureError, match="haku dev build traefik"):
        exposure.image(tmp_path / "missing", "v3.7.10")


def test_traefik_runs_on_the_node_network_with_both_providers() -> None:
    objects = exposure.manifests(NODE_IP, "v3.7.10")
    assert [o["kind"] for o in objects] == [
        "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "IngressClass",
        "GatewayClass", "Gateway", "Deployment"]
    for o in objects:
        assert o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "haku-dev"
        if o["kind"] in ("ServiceAccount", "Gateway", "Deployment"):
            assert o["metadata"]["namespace"] == "haku-exposure"
    kinds = by_kind(objects)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "Default"
    assert pod["serviceAccountName"] == "traefik"
    assert kinds["Deployment"]["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = pod["containers"]
    assert container["image"] == "docker.io/library/traefik:v3.7.10"
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ping", "port": 9100}
    args = container["args"]
    assert f"--entryPoints.ingress.address={NODE_IP}:8443" in args
    assert f"--entryPoints.gateway.address={NODE_IP}:9443" in args
    assert f"--entryPoints.traefik.address={NODE_IP}:9100" in args
    assert "--providers.kubernetesIngressNGINX=true" in args
    assert "--providers.kubernetesIngressNGINX.httpsEntryPoint=ingress" in args
    assert "--providers.kubernetesGateway=true" in args
    assert not [a for a in args if "experimental" in a.lower()]  # TLSRoute v1 is standard
    assert kinds["IngressClass"]["metadata"]["name"] == "nginx"
    assert kinds["IngressClass"]["spec"] == {"controller": "k8s.io/ingress-nginx"}
    assert kinds["GatewayClass"]["spec"] == {"controllerName": "traefik.io/gateway-controller"}
    gw = kinds["Gateway"]
    assert gw["metadata"]["name"] == "tenants"
    (listener,) = gw["spec"]["listeners"]
    assert listener == {
        "name": "kube-apiserver", "port": 9443, "protocol": "TLS",
        "tls": {"mode": "Passthrough"},
        "allowedRoutes": {"namespaces": {"from": "All"},
                          "kinds": [{"group": "gateway.networking.k8s.io",
                                     "kind": "TLSRoute"}]}}
    binding = kinds["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == kinds["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "traefik",
                                    "namespace": "haku-exposure"}]


def test_the_cluster_role_reads_what_the_providers_watch_and_writes_only_status() -> None:
    rules = exposure.cluster_role_rules()
    granted = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"]
               for r in rule["resources"]}
    for resource in ("services", "secrets", "configmaps", "namespaces"):
        assert granted[("", resource)] == {"get", "list", "watch"}
    assert granted[("discovery.k8s.io", "endpointslices")] == {"get", "list", "watch"}
    for resource in ("gatewayclasses", "gateways", "tlsroutes", "httproutes", "grpcroutes",
                     "referencegrants", "backendtlspolicies"):
        assert granted[("gateway.networking.k8s.io", resource)] == {"get", "list", "watch"}
    writes = {key for key, verbs in granted.items() if verbs - {"get", "list", "watch"}}
    assert writes and all(resource.endswith("/status") for _, resource in writes)
    assert ("gateway.networking.k8s.io", "tlsroutes/status") in writes
    assert ("networking.k8s.io", "ingresses/status") in writes


def _tenant(cp: dict[str, Any]) -> TenantControlPlaneSpec:
    return TenantControlPlaneSpec.parse({
        "metadata": {"name": "t1", "namespace": "tenants", "uid": "u"},
        "spec": {"kubernetes": {"version": "v1.37.2"},
                 "controlPlane": {"service": {"serviceType": "ClusterIP"}, **cp}}})


def test_tenant_specs_for_the_dev_controller() -> None:
    ing = _tenant({"ingress": exposure.ingress_spec("t1.ingress.haku.test")})
    front = endpoint.front(ing)
    assert front is not None and front.url == "https://t1.ingress.haku.test:8443"
    rendered = controlplane.ingress(ing)
    assert rendered is not None
    assert rendered["spec"]["ingressClassName"] == "nginx"
    assert rendered["spec"]["rules"][0]["host"] == "t1.ingress.haku.test"
    assert rendered["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/ssl-passthrough": "true"}
    gw = _tenant({"gateway": exposure.gateway_spec("t1.gateway.haku.test")})
    front = endpoint.front(gw)
    assert front is not None and front.url == "https://t1.gateway.haku.test:9443"
    route = gateway.tls_route(gw)
    assert route is not None
    assert route["spec"]["parentRefs"] == [{"name": "tenants", "namespace": "haku-exposure",
                                            "sectionName": "kube-apiserver", "port": 9443}]


def test_the_hosts_block_is_replaced_as_a_whole_and_removed() -> None:
    base = "127.0.0.1 localhost\n127.0.0.1 vm\n"
    one = exposure.hosts_text(base, ["a.haku.test", "b.haku.test", "a.haku.test"], NODE_IP)
    assert one == base + (f"{exposure.HOSTS_BEGIN}\n{NODE_IP} a.haku.test\n"
                          f"{NODE_IP} b.haku.test\n{exposure.HOSTS_END}\n")
    assert exposure.hosts_names(one) == ["a.haku.test", "b.haku.test"]
    two = exposure.hosts_text(one + "10.0.0.1 after\n", ["c.haku.test"], NODE_IP)
    assert two == base + "10.0.0.1 after\n" + (
        f"{exposure.HOSTS_BEGIN}\n{NODE_IP} c.haku.test\n{exposure.HOSTS_END}\n")
    assert exposure.hosts_text(two, [], NODE_IP) == base + "10.0.0.1 after\n"
    assert exposure.hosts_names(base) == []
    with pytest.raises(exposure.ExposureError, match="not a host name"):
        exposure.hosts_text(base, ["bad name"], NODE_IP)


def test_set_and_add_hosts_write_in_place(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    inode = hosts.stat().st_ino
    assert exposure.set_hosts(["a.haku.test"], NODE_IP, hosts) == ["a.haku.test"]
    assert exposure.add_hosts(["b.haku.test"], NODE_IP, hosts) == ["a.haku.test", "b.haku.test"]
    assert hosts.stat().st_ino == inode  # written in place: /etc/hosts may be a bind mount
    assert f"{NODE_IP} b.haku.test" in hosts.read_text()
    assert exposure.set_hosts([], NODE_IP, hosts) == []
    assert hosts.read_text() == "127.0.0.1 localhost\n"


def test_the_cli_has_the_exposure_commands() -> None:
    p = cli.parser()
    assert p.parse_args(["dev", "exposure", "up"]).fn is cli.cmd_exposure_up
    assert p.parse_args(["dev", "exposure", "down"]).fn is cli.cmd_exposure_down
    args = p.parse_args(["dev", "exposure", "hosts", "a.haku.test", "b.haku.test"])
    assert args.fn is cli.cmd_exposure_hosts and args.names == ["a.haku.test", "b.haku.test"]
    assert p.parse_args(["dev", "exposure", "hosts", "--remove"]).remove is True


def test_a_worker_joins_through_a_node_port_or_a_host_name_in_front() -> None:
    from haku.dev.worker import join_path_problem

    def tcp(cp: dict[str, Any]) -> dict[str, Any]:
        return {"spec": {"controlPlane": cp}}

    assert join_path_problem(tcp({"service": {"serviceType": "NodePort"}})) is None
    assert join_path_problem(tcp({"service": {"serviceType": "ClusterIP"},
                                  "ingress": exposure.ingress_spec("a.haku.test")})) is None
    assert join_path_problem(tcp({"gateway": exposure.gateway_spec("a.haku.test")})) is None
    problem = join_path_problem(tcp({"service": {"serviceType": "LoadBalancer"}}))
    assert problem is not None and problem.startswith("is exposed by a LoadBalancer Service")
    assert "haku dev exposure up" in problem
    # An Ingress without a host name puts none in front.
    assert join_path_problem(tcp({"ingress": {"ingressClassName": "nginx"}})) is not None
