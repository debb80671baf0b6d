"""spec.controlPlane.gateway: the model, the TLSRoutes rendered from it, the endpoint and the
certificate SAN it gives, what a route's status means, and the CRD's schema for it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.render import InvalidSpec, controlplane, gateway, tenant_bootstrap, tenant_pki

ROOT = Path(__file__).resolve().parents[2]
PARENT = {"name": "gw", "namespace": "gateways", "sectionName": "kube-apiserver", "port": 6443}


def tcp(gw: dict[str, Any] | None = None, **spec: Any) -> TenantControlPlaneSpec:
    cp: dict[str, Any] = {"service": {"serviceType": "ClusterIP"}}
    if gw is not None:
        cp["gateway"] = gw
    base: dict[str, Any] = {"kubernetes": {"version": "v1.37.2"}, "controlPlane": cp}
    base.update(spec)
    return TenantControlPlaneSpec.parse({
        "metadata": {"name": "t1", "namespace": "tenants", "uid": "u-1"}, "spec": base})


def with_gateway(hostname: str = "t1.example.com", parent: dict[str, Any] | None = None,
                 **spec: Any) -> TenantControlPlaneSpec:
    return tcp({"hostname": hostname, "parentRefs": [dict(parent or PARENT)],
                "additionalMetadata": {"labels": {"team": "a"},
                                       "annotations": {"note": "x"}}}, **spec)


def test_no_gateway_renders_nothing_and_keeps_the_service_endpoint() -> None:
    s = tcp()
    assert s.gateway is None
    assert gateway.routes(s) == [] and gateway.endpoint(s) is None
    assert gateway.tls_route(s) is None and gateway.konnectivity_route(s) is None


def test_the_model_reads_kamajis_fields() -> None:
    s = with_gateway("t1.example.com:8443")
    assert s.gateway is not None
    assert s.gateway.hostname == "t1.example.com:8443"
    assert (s.gateway.host, s.gateway.port_given) == ("t1.example.com", 8443)
    assert s.gateway.parent_refs == (PARENT,)
    assert s.gateway.metadata.labels == {"team": "a"}
    assert with_gateway().gateway.port_given is None  # type: ignore[union-attr]


def test_the_tls_route_attaches_to_the_parent_and_sends_to_the_service() -> None:
    s = with_gateway()
    route = gateway.tls_route(s)
    assert route is not None
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["kind"] == "TLSRoute"
    meta = route["metadata"]
    assert (meta["name"], meta["namespace"]) == ("t1", "tenants")
    assert meta["labels"]["team"] == "a" and meta["annotations"] == {"note": "x"}
    assert meta["labels"][controlplane.TENANT_LABEL] == "t1"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == controlplane.MANAGED_BY
    assert route["spec"]["parentRefs"] == [PARENT]
    assert route["spec"]["hostnames"] == ["t1.example.com"]
    assert route["spec"]["rules"] == [{"backendRefs": [{
        "group": "", "kind": "Service", "name": controlplane.names("t1")["service"],
        "port": 6443}]}]
    # The Service's API port is networkProfile.port: the backend follows it.
    moved = gateway.tls_route(with_gateway(networkProfile={"port": 7443}))
    assert moved is not None
    assert moved["spec"]["rules"][0]["backendRefs"][0]["port"] == 7443
    # Our labels win over additionalMetadata's.
    s = with_gateway()
    sneaky = tcp({"hostname": "t1.example.com", "parentRefs": [PARENT],
                  "additionalMetadata": {"labels": {controlplane.TENANT_LABEL: "other"}}})
    assert gateway.tls_route(sneaky)["metadata"]["labels"][  # type: ignore[index]
        controlplane.TENANT_LABEL] == "t1"
    assert gateway.tls_route(s) == gateway.tls_route(with_gateway())  # pure


def test_the_port_is_dropped_from_the_route_hostname() -> None:
    route = gateway.tls_route(with_gateway("api.t1.example.com:443"))
    assert route is not None and route["spec"]["hostnames"] == ["api.t1.example.com"]


def test_konnectivity_gets_a_second_route_like_kamaji() -> None:
    s = with_gateway(addons={"konnectivity": {"server": {"port": 8132}}})
    routes = gateway.routes(s)
    assert [r["metadata"]["name"] for r in routes] == ["t1", "t1-konnectivity"]
    konn = routes[1]
    assert konn["spec"]["hostnames"] == ["t1.example.com"]
    assert konn["spec"]["parentRefs"] == [
        {**PARENT, "sectionName": "konnectivity-server", "port": 8132}]
    assert konn["spec"]["rules"][0]["backendRefs"][0] == {
        "group": "", "kind": "Service", "name": "t1", "port": 8132}
    # The Service's konnectivity port is the one the route sends to.
    svc = controlplane.service(s)
    assert 8132 in [p["port"] for p in svc["spec"]["ports"] if p["name"] == "konnectivity-server"]
    # The API route's parentRefs are left as given.
    assert routes[0]["spec"]["parentRefs"] == [PARENT]
    assert gateway.konnectivity_route(with_gateway()) is None


@pytest.mark.parametrize(("hostname", "parent", "expected"), [
    ("t1.example.com:9443", PARENT, ("t1.example.com", 9443)),  # the hostname's port wins
    ("t1.example.com", PARENT, ("t1.example.com", 6443)),  # else the listener's port
    ("t1.example.com", {"name": "gw"}, ("t1.example.com", 6443)),  # else networkProfile.port
])
def test_the_endpoint_is_the_hostname(hostname: str, parent: dict[str, Any],
                                      expected: tuple[str, int]) -> None:
    assert gateway.endpoint(with_gateway(hostname, parent)) == expected
    assert gateway.endpoint(with_gateway("t1.example.com", {"name": "gw", "port": 443})) == \
        ("t1.example.com", 443)
    assert gateway.endpoint(with_gateway("t1.example.com", {"name": "gw"},
                                         networkProfile={"port": 7443})) == \
        ("t1.example.com", 7443)


def test_kubeadm_config_names_the_hostname_as_control_plane_endpoint() -> None:
    s = with_gateway("t1.example.com:9443")
    host, port = gateway.endpoint(s)  # type: ignore[misc]
    config = tenant_bootstrap.cluster_configuration(s, f"https://{host}:{port}")
    assert config["controlPlaneEndpoint"] == "t1.example.com:9443"


def test_the_hostname_is_a_san_of_the_api_server_certificate() -> None:
    dns, ips = tenant_pki.apiserver_names(with_gateway("t1.example.com:9443"), ("10.96.0.9",))
    assert "t1.example.com" in dns and "t1.example.com:9443" not in dns
    assert "10.96.0.9" in ips  # the Service's address stays
    dns, _ = tenant_pki.apiserver_names(tcp(), ("10.96.0.9",))
    assert "t1.example.com" not in dns
    with pytest.raises(InvalidSpec, match=r"spec\.controlPlane\.gateway\.hostname"):
        tenant_pki.apiserver_names(with_gateway("bücher.example"), ())


def _route_with(parents: list[dict[str, Any]]) -> dict[str, Any]:
    route = gateway.tls_route(with_gateway())
    assert route is not None
    route = copy.deepcopy(route)
    route["status"] = {"parents": parents}
    return route


def _parent(accepted: str, resolved: str = "True", ref: dict[str, Any] | None = None,
            reason: str = "Accepted") -> dict[str, Any]:
    return {"parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                          **(ref or PARENT)},
            "controllerName": "example.com/gateway-controller",
            "conditions": [
                {"type": "Accepted", "status": accepted, "reason": reason,
                 "message": "the listener says so"},
                {"type": "ResolvedRefs", "status": resolved, "reason": "RefNotPermitted"
                 if resolved != "True" else "ResolvedRefs", "message": ""}]}


def test_acceptance_is_read_from_the_parents_conditions() -> None:
    s = with_gateway()
    accepted, reason, message = gateway.acceptance(_route_with([]), s)
    assert (accepted, reason) == (False, "WaitingForGateway")
    assert "Gateway gateways/gw listener kube-apiserver port 6443" in message

    accepted, reason, message = gateway.acceptance(_route_with([_parent("True")]), s)
    assert (accepted, reason) == (True, "RouteAccepted")
    assert "example.com/gateway-controller" in message

    accepted, reason, message = gateway.acceptance(
        _route_with([_parent("False", reason="NotAllowedByListeners")]), s)
    assert (accepted, reason) == (False, "RouteNotAccepted")
    assert "Accepted=False (NotAllowedByListeners: the listener says so)" in message

    accepted, reason, _ = gateway.acceptance(_route_with([_parent("True", "False")]), s)
    assert (accepted, reason) == (False, "RouteRefsNotResolved")

    # Another parent's status does not count for ours.
    other = _parent("True", ref={"name": "elsewhere", "namespace": "gateways"})
    accepted, reason, _ = gateway.acceptance(_route_with([other]), s)
    assert (accepted, reason) == (False, "WaitingForGateway")
    # A parentRef without namespace means the route's (the tenant's) namespace.
    local = with_gateway(parent={"name": "gw"})
    mine = _parent("True", ref={"name": "gw", "namespace": "tenants"})
    assert gateway.acceptance(_route_with([mine]), local)[0] is True


def test_status_has_kamajis_shape() -> None:
    s = with_gateway("t1.example.com:9443")
    route = _route_with([_parent("True")])
    got = gateway.status(route, s)
    assert got["routeRef"] == {"name": "t1", "namespace": "tenants"}
    assert got["parents"] == route["status"]["parents"]
    assert got["accessPoints"] == [{"type": "Hostname", "value": "t1.example.com",
                                    "port": 9443, "urls": ["https://t1.example.com:9443"]}]


def _crd_gateway() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "src/haku/api/crds/tenantcontrolplanes.haku.dev.yaml")
                         .read_text())
    cp = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["controlPlane"]
    return dict(cp)


def test_the_crd_has_kamajis_gateway_shape_and_its_rules() -> None:
    cp = _crd_gateway()
    rules = [r["rule"] for r in cp["x-kubernetes-validations"]]
    assert "!(has(self.ingress) && has(self.gateway))" in rules
    assert "!has(self.gateway)" not in rules
    gw = cp["properties"]["gateway"]
    assert set(gw["properties"]) == {"additionalMetadata", "parentRefs", "hostname"}
    parent = gw["properties"]["parentRefs"]["items"]
    assert set(parent["properties"]) == {"group", "kind", "namespace", "name", "sectionName",
                                         "port"}
    assert parent["required"] == ["name"]
    assert parent["properties"]["group"]["default"] == "gateway.networking.k8s.io"
    assert parent["properties"]["kind"]["default"] == "Gateway"
    own = [r["rule"] for r in gw["x-kubernetes-validations"]]
    assert "has(self.parentRefs) && size(self.parentRefs) == 1" in own
    assert "has(self.hostname)" in own


def test_the_three_crd_copies_are_identical() -> None:
    name = "tenantcontrolplanes.haku.dev.yaml"
    source = (ROOT / "src/haku/api/crds" / name).read_text()
    assert (ROOT / "deploy/crds" / name).read_text() == source
    assert (ROOT / "charts/haku/crds" / name).read_text() == source


def test_the_operator_may_manage_tlsroutes_and_both_rbac_copies_say_so() -> None:
    for path in ("deploy/rbac.yaml", "charts/haku/templates/rbac.yaml"):
        text = (ROOT / path).read_text()
        assert ("  - apiGroups: [gateway.networking.k8s.io]\n    resources: [tlsroutes]\n"
                "    verbs: [get, list, watch, create, patch, delete]\n") in text, path


async def test_the_service_step_tells_tenants_the_hostname_and_agents_the_listener() -> None:
    """NodePort + gateway + Konnectivity: the endpoint (admin.conf, cluster-info, status) is
    the hostname on the listener's port, and the agents dial the Gateway's
    konnectivity-server listener (server.port), not the Service's node port."""
    from types import SimpleNamespace

    from haku.controller.config import OperatorConfig
    from haku.controller.pipeline import Context
    from haku.controller.steps.exposure import ServiceStep
    from haku.render import tenant_bootstrap

    def ports(*pairs: tuple[str, int]) -> Any:
        return SimpleNamespace(spec=SimpleNamespace(ports=[
            SimpleNamespace(name=n, nodePort=p) for n, p in pairs]),
            metadata=SimpleNamespace(name="t1"))

    svc = ports(("kube-apiserver", 31443), ("konnectivity-server", 31132))

    async def apply_checked(ctx: Any, manifest: dict[str, Any], kind: str) -> Any:
        return svc

    deps = SimpleNamespace(config=OperatorConfig(node_address="192.0.2.10"),
                           apply_checked=apply_checked)
    obj = {"metadata": {"name": "t1", "namespace": "tenants", "uid": "u-1"},
           "spec": {"kubernetes": {"version": "v1.37.2"},
                    "addons": {"konnectivity": {}},
                    "controlPlane": {"service": {"serviceType": "NodePort"},
                                     "gateway": {"hostname": "t1.example.com",
                                                 "parentRefs": [PARENT]}}}}
    ctx = Context(obj=obj, spec=TenantControlPlaneSpec.parse(obj))
    await ServiceStep(deps).apply(ctx)  # type: ignore[arg-type]
    assert ctx.endpoint == "https://t1.example.com:6443"
    assert ctx.status["controlPlaneEndpoint"] == "t1.example.com:6443"
    assert ctx.address == "192.0.2.10"  # the Service's own address stays (certificate SAN)
    # The operator dials the Service, not the hostname (haku.render.endpoint).
    assert ctx.operator_endpoint == "https://192.0.2.10:31443"
    assert ctx.konnectivity_port == 8132
    assert ctx.status["kubernetesResources"]["service"]["konnectivityPort"] == 8132
    objects = tenant_bootstrap.konnectivity_objects(ctx.spec, ctx.endpoint,
                                                    ctx.konnectivity_port)
    args = " ".join(objects[-1]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--proxy-server-host=t1.example.com" in args
    assert "--proxy-server-port=8132" in args
    # Without the gateway: the node address and node ports, as before.
    plain = dict(obj, spec=dict(obj["spec"], controlPlane={"service": {
        "serviceType": "NodePort"}}))
    ctx = Context(obj=plain, spec=TenantControlPlaneSpec.parse(plain))
    await ServiceStep(deps).apply(ctx)  # type: ignore[arg-type]
    assert ctx.endpoint == "https://192.0.2.10:31443"
    assert ctx.konnectivity_port == 31132
