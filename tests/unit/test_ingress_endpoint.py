"""spec.controlPlane.ingress.hostname is the tenant's endpoint (as the gateway hostname is:
haku.render.endpoint), while the operator keeps dialling the Service."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from haku.api.conditions import Condition
from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.controller.config import OperatorConfig
from haku.controller.pipeline import Context
from haku.controller.steps import apiserver
from haku.controller.steps.exposure import ServiceStep
from haku.render import endpoint, pki, tenant_bootstrap, tenant_kubeconfigs, tenant_pki

from .test_gateway import PARENT


def obj(cp: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "t1", "namespace": "tenants", "uid": "u-1"},
            "spec": {"kubernetes": {"version": "v1.37.2"}, "controlPlane": cp, **spec}}


def parse(cp: dict[str, Any], **spec: Any) -> TenantControlPlaneSpec:
    return TenantControlPlaneSpec.parse(obj(cp, **spec))


NODEPORT = {"service": {"serviceType": "NodePort"}}


def ingress(hostname: str, **extra: Any) -> dict[str, Any]:
    return {**NODEPORT, "ingress": {"hostname": hostname, **extra}}


@pytest.mark.parametrize(("hostname", "spec", "expected"), [
    ("t1.example.com:8443", {}, ("t1.example.com", 8443)),  # the hostname's port
    ("t1.example.com", {}, ("t1.example.com", 6443)),  # else networkProfile.port (Kamaji)
    ("t1.example.com", {"networkProfile": {"port": 7443}}, ("t1.example.com", 7443)),
])
def test_the_ingress_hostname_gives_host_and_port(hostname: str, spec: dict[str, Any],
                                                  expected: tuple[str, int]) -> None:
    s = parse(ingress(hostname), **spec)
    assert endpoint.ingress_endpoint(s) == expected
    found = endpoint.front(s)
    assert found is not None
    assert (found.kind, found.host, found.port) == ("ingress", *expected)
    assert found.url == f"https://{expected[0]}:{expected[1]}"
    assert found.host_port == f"{expected[0]}:{expected[1]}"


def test_no_host_name_in_front_without_ingress_or_gateway() -> None:
    assert endpoint.front(parse(NODEPORT)) is None
    assert endpoint.ingress_endpoint(parse(NODEPORT)) is None
    # An Ingress without a hostname (ingressClassName only) puts no host name in front.
    assert endpoint.front(parse({**NODEPORT, "ingress": {"ingressClassName": "x"}})) is None
    gw = endpoint.front(parse({**NODEPORT, "gateway": {"hostname": "g.example.com",
                                                       "parentRefs": [PARENT]}}))
    assert gw is not None and (gw.kind, gw.host, gw.port) == ("gateway", "g.example.com", 6443)
    assert endpoint.split_hostname("a.example:1") == ("a.example", 1)
    assert endpoint.split_hostname("a.example") == ("a.example", None)


def _deps(node_address: str = "192.0.2.10") -> Any:
    svc = SimpleNamespace(spec=SimpleNamespace(ports=[
        SimpleNamespace(name="kube-apiserver", nodePort=31443),
        SimpleNamespace(name="konnectivity-server", nodePort=31132)]),
        metadata=SimpleNamespace(name="t1"))

    async def apply_checked(ctx: Any, manifest: dict[str, Any], kind: str) -> Any:
        return svc

    return SimpleNamespace(config=OperatorConfig(node_address=node_address),
                           apply_checked=apply_checked)


async def test_the_service_step_tells_tenants_the_ingress_hostname() -> None:
    doc = obj(ingress("t1.ingress.example:8443"), addons={"konnectivity": {}})
    ctx = Context(obj=doc, spec=TenantControlPlaneSpec.parse(doc))
    await ServiceStep(_deps()).apply(ctx)
    assert ctx.endpoint == "https://t1.ingress.example:8443"
    assert ctx.status["controlPlaneEndpoint"] == "t1.ingress.example:8443"
    # The operator dials the Service (here the NodePort on the node address).
    assert ctx.operator_endpoint == "https://192.0.2.10:31443"
    assert ctx.address == "192.0.2.10"  # the Service's address stays (certificate SAN)
    service = ctx.status["kubernetesResources"]["service"]
    assert (service["port"], service["nodeAddress"]) == (31443, "192.0.2.10")
    # Konnectivity agents keep the Service's port (an Ingress carries the API only).
    assert ctx.konnectivity_port == 31132
    # Without the ingress: both are the Service's endpoint, as before.
    plain = obj(NODEPORT)
    ctx = Context(obj=plain, spec=TenantControlPlaneSpec.parse(plain))
    await ServiceStep(_deps()).apply(ctx)
    assert ctx.endpoint == ctx.operator_endpoint == "https://192.0.2.10:31443"
    assert ctx.status["controlPlaneEndpoint"] == "192.0.2.10:31443"


async def test_advertise_address_is_what_the_operator_dials_behind_a_host_name() -> None:
    doc = obj(ingress("t1.ingress.example"),
              networkProfile={"advertiseAddress": "198.51.100.4"})
    ctx = Context(obj=doc, spec=TenantControlPlaneSpec.parse(doc))
    await ServiceStep(_deps()).apply(ctx)
    assert ctx.endpoint == "https://t1.ingress.example:6443"
    assert ctx.operator_endpoint == "https://198.51.100.4:31443"


def test_kubeadm_config_and_cluster_info_name_the_ingress_hostname() -> None:
    s = parse(ingress("t1.ingress.example:8443"))
    found = endpoint.front(s)
    assert found is not None
    config = tenant_bootstrap.cluster_configuration(s, found.url)
    assert config["controlPlaneEndpoint"] == "t1.ingress.example:8443"
    info = tenant_bootstrap.cluster_info_kubeconfig(b"CA", found.url)
    assert info["clusters"][0]["cluster"]["server"] == "https://t1.ingress.example:8443"


def test_the_ingress_hostname_is_a_san_and_the_service_address_stays() -> None:
    dns, ips = tenant_pki.apiserver_names(parse(ingress("t1.ingress.example:8443")),
                                          ("192.0.2.10",))
    assert "t1.ingress.example" in dns and "t1.ingress.example:8443" not in dns
    assert "192.0.2.10" in ips


def _servers(data: dict[str, bytes]) -> dict[str, str]:
    return {name: yaml.safe_load(conf)["clusters"][0]["cluster"]["server"]
            for name, conf in data.items()}


def test_super_admin_dials_the_operator_endpoint_and_admin_the_host_name() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    ca = pki.new_ca("t1", algorithm=pki.KeyAlgorithm.ECDSA_P256, now=now)
    plan = tenant_kubeconfigs.plan(
        "t1", ca, {}, "https://t1.ingress.example:8443", "https://127.0.0.1:6443",
        algorithm=pki.KeyAlgorithm.ECDSA_P256, now=now,
        operator_endpoint="https://192.0.2.10:31443")
    assert _servers(plan.data) == {
        "admin.conf": "https://t1.ingress.example:8443",
        "super-admin.conf": "https://192.0.2.10:31443",
        "controller-manager.conf": "https://127.0.0.1:6443",
        "scheduler.conf": "https://127.0.0.1:6443"}
    # Kept as they are on the next pass; only super-admin.conf follows the operator endpoint.
    again = tenant_kubeconfigs.plan(
        "t1", ca, plan.data, "https://t1.ingress.example:8443", "https://127.0.0.1:6443",
        algorithm=pki.KeyAlgorithm.ECDSA_P256, now=now,
        operator_endpoint="https://192.0.2.10:31443")
    assert not again.changed
    moved = tenant_kubeconfigs.plan(
        "t1", ca, plan.data, "https://t1.ingress.example:8443", "https://127.0.0.1:6443",
        algorithm=pki.KeyAlgorithm.ECDSA_P256, now=now,
        operator_endpoint="https://192.0.2.11:31443")
    assert moved.issued == {"super-admin.conf": "server moved to https://192.0.2.11:31443"}
    # Without an operator endpoint: the client endpoint for every non-local identity.
    plain = tenant_kubeconfigs.plan(
        "t1", ca, {}, "https://192.0.2.10:31443", "https://127.0.0.1:6443",
        algorithm=pki.KeyAlgorithm.ECDSA_P256, now=now)
    assert _servers(plain.data)["super-admin.conf"] == "https://192.0.2.10:31443"


async def test_the_api_server_probe_goes_to_the_operator_endpoint(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    async def probe(url: str, super_admin: bytes,
                    ca: bytes | None = None) -> tuple[Condition, str | None]:
        asked.append(url)
        return Condition("APIServerReady", "True", "Serving", "ok"), "v1.37.2"

    monkeypatch.setattr(apiserver, "probe", probe)
    doc = obj(ingress("t1.ingress.example:8443"))
    ctx = Context(obj=doc, spec=TenantControlPlaneSpec.parse(doc),
                  endpoint="https://t1.ingress.example:8443",
                  operator_endpoint="https://192.0.2.10:31443", super_admin=b"x")
    ctx.conditions["ControlPlaneAvailable"] = Condition("ControlPlaneAvailable", "True", "x", "")
    await apiserver.APIServerStep(SimpleNamespace()).apply(ctx)  # type: ignore[arg-type]
    assert asked == ["https://192.0.2.10:31443"]
    assert ctx.conditions["APIServerReady"].status == "True"
