"""The TenantControlPlane admission policy as shipped (src/haku/api/policies): it is bound to
its settings, its lists and defaults are the ones Python and the CRD use, and every field it
names exists in the CRD. Its behaviour on a real API server: tests/api/test_tcp_policy.py."""

from __future__ import annotations

import re
from typing import Any

from haku.api import crds, policies, resources
from haku.api import tenantcontrolplane as tcp_api
from haku.controller.config import OperatorConfig


def _policy() -> dict[str, Any]:
    return policies.of_kind("ValidatingAdmissionPolicy")


def _variable(name: str) -> str:
    (expression,) = (v["expression"] for v in _policy()["spec"]["variables"]
                     if v["name"] == name)
    assert isinstance(expression, str)
    return expression


def _spec_schema() -> dict[str, Any]:
    crd = crds.load("tenantcontrolplanes.haku.dev.yaml")
    spec: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["spec"]
    return spec


def _deployment_schema() -> dict[str, Any]:
    dep: dict[str, Any] = _spec_schema()["properties"]["controlPlane"]["properties"][
        "deployment"]["properties"]
    return dep


def _allowed(image: str, registries: tuple[str, ...]) -> bool:
    return any(image.startswith(r + "/") for r in registries)


def test_the_binding_ties_the_policy_to_its_configmap() -> None:
    policy, binding = _policy(), policies.of_kind("ValidatingAdmissionPolicyBinding")
    params = policies.of_kind("ConfigMap")
    assert policy["metadata"]["name"] == policies.POLICY
    assert binding["metadata"]["name"] == policies.BINDING
    assert binding["spec"]["policyName"] == policies.POLICY
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert policy["spec"]["paramKind"] == {"apiVersion": "v1", "kind": "ConfigMap"}
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert binding["spec"]["paramRef"] == {
        "name": policies.PARAMS, "namespace": policies.NAMESPACE,
        "parameterNotFoundAction": "Deny"}
    assert params["metadata"] == {"name": policies.PARAMS, "namespace": policies.NAMESPACE,
                                  "labels": {"app.kubernetes.io/name": "haku"}}
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule == {"apiGroups": [resources.GROUP], "apiVersions": [resources.VERSION],
                    "operations": ["CREATE", "UPDATE"], "resources": ["tenantcontrolplanes"]}


def test_installing_elsewhere_moves_the_configmap_and_the_reference() -> None:
    docs = policies.documents("ops")
    binding = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding")
    params = next(d for d in docs if d["kind"] == "ConfigMap")
    assert binding["spec"]["paramRef"]["namespace"] == params["metadata"]["namespace"] == "ops"
    assert policies.of_kind("ConfigMap")["metadata"]["namespace"] == policies.NAMESPACE


def test_the_shipped_settings() -> None:
    data = policies.of_kind("ConfigMap")["data"]
    assert set(data) == {policies.REGISTRIES_KEY, policies.EXTERNAL_IPS_KEY, policies.PODS_KEY}
    assert tuple(data[policies.REGISTRIES_KEY].split()) == policies.DEFAULT_ALLOWED_REGISTRIES
    assert data[policies.EXTERNAL_IPS_KEY] == ""
    assert data[policies.PODS_KEY] == "on"
    for key in (policies.REGISTRIES_KEY, policies.EXTERNAL_IPS_KEY, policies.PODS_KEY):
        assert f"variables.settings.?{key}" in policies.text()
    assert f"!= '{policies.PODS_OFF}'" in _variable("podRules")


def test_the_default_images_come_from_the_shipped_registries() -> None:
    """What a spec without registry settings runs (and the operator's kine) is allowed."""
    allowed = policies.DEFAULT_ALLOWED_REGISTRIES
    spec = tcp_api.TenantControlPlaneSpec.parse({
        "metadata": {"name": "t", "uid": "u"},
        "spec": {"kubernetes": {"version": "v1.37.2"},
                 "addons": {"coreDNS": {}, "kubeProxy": {}}}})
    for component in spec.images:
        assert _allowed(spec.image(component), allowed), spec.image(component)
    assert spec.addons.core_dns is not None and spec.addons.kube_proxy is not None
    assert _allowed(spec.addons.core_dns.image("coredns"), allowed)
    assert _allowed(spec.addons.kube_proxy.image("kube-proxy"), allowed)
    assert _allowed(OperatorConfig().kine_image, allowed)


def test_the_policy_completes_images_as_python_and_the_crd_do() -> None:
    images = _variable("images")
    registry = _deployment_schema()["registrySettings"]["properties"]["registry"]["default"]
    assert f"? '{registry}' : variables.deployment.registrySettings.registry" in images
    assert f"orValue('{tcp_api.COREDNS_REPOSITORY}')" in images
    assert f"orValue('{tcp_api.KUBE_PROXY_REPOSITORY}')" in images
    assert tcp_api.TenantControlPlaneSpec.parse({
        "metadata": {"name": "t"}, "spec": {"kubernetes": {"version": "v1"}, "controlPlane": {
            "deployment": {"registrySettings": {"registry": ""}}}}}).registry == registry
    # Every image field of the spec is looked at.
    spec = _spec_schema()
    for addon in ("coreDNS", "kubeProxy"):
        assert "imageRepository" in spec["properties"]["addons"]["properties"][addon][
            "properties"]
        assert f"spec.addons.{addon}.imageRepository" in images
    assert set(spec["properties"]["addons"]["properties"]) == {
        "coreDNS", "kubeProxy", "konnectivity"}
    konnectivity = spec["properties"]["addons"]["properties"]["konnectivity"]["properties"]
    for side, default in (("server", tcp_api.KONNECTIVITY_SERVER_IMAGE),
                          ("agent", tcp_api.KONNECTIVITY_AGENT_IMAGE)):
        assert "image" in konnectivity[side]["properties"]
        assert f"spec.addons.konnectivity.{side}.image" in images
        assert f"'{default}'" in images


def test_the_sysctls_are_the_baseline_safe_list() -> None:
    listed = re.findall(r"'([a-z0-9_.]+)'", _variable("sysctlProblems").split("in [", 1)[1]
                        .split("]", 1)[0])
    assert tuple(listed) == policies.SAFE_SYSCTLS
    assert len(set(listed)) == 14


def test_the_pod_rules_look_at_every_security_context_and_field_they_name() -> None:
    dep = _deployment_schema()
    containers = re.search(r"\[('[a-zA-Z]+'(?:, '[a-zA-Z]+')*)\]\.map\(c,",
                           _variable("contexts"))
    assert containers is not None
    assert {c.strip("' ") for c in containers.group(1).split(",")} == set(
        dep["containerSecurityContexts"]["properties"])
    pod = dep["podSecurityContext"]["properties"]
    container = dep["containerSecurityContexts"]["properties"]["apiServer"]["properties"]
    text = policies.text()
    used = set(re.findall(r"x\[1\]\.\?([A-Za-z]+)", text))
    assert used and used <= set(pod) | set(container), used - set(pod) - set(container)
    # The settings that let a container out, wherever the schema has them.
    assert {"privileged", "allowPrivilegeEscalation", "capabilities", "runAsUser",
            "runAsNonRoot", "runAsGroup", "procMount", "seccompProfile", "appArmorProfile",
            "seLinuxOptions", "windowsOptions"} <= used
    assert {"fsGroup", "supplementalGroups"} <= used
    assert "sysctls" in pod and "podSecurityContext.?sysctls" in text


def test_every_field_the_policy_names_is_in_the_crd() -> None:
    spec = _spec_schema()
    paths = set(re.findall(r"'(spec\.[A-Za-z.]+?)\.?'", policies.text()))
    paths |= set(re.findall(r"(spec\.networkProfile\.[A-Za-z]+)", policies.text()))
    assert "spec.controlPlane.deployment.registrySettings.registry" in paths
    for path in paths:
        node = spec
        for key in path.split(".")[1:]:
            assert key in node.get("properties", {}), path
            node = node["properties"][key]


def test_the_spec_cannot_ask_for_host_namespaces_ports_or_paths() -> None:
    """hostNetwork, hostPID, hostIPC, hostPort, hostPath volumes, hostUsers: the schema has
    none of them (extra containers and volumes are refused as unsupported), so the policy need
    not look for them. A new field like them must come with a rule."""
    found: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for name, child in (node.get("properties") or {}).items():
            if name.lower().startswith("host"):
                found.append(f"{path}.{name}")
            walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(_spec_schema(), "spec")
    assert sorted(set(found)) == [
        # The Konnectivity agents run inside the tenant, on the tenant's own nodes: not a
        # way into the admin cluster.
        "spec.addons.konnectivity.agent.hostNetwork",
        "spec.controlPlane.deployment.containerSecurityContexts.apiServer.windowsOptions"
        ".hostProcess",
        "spec.controlPlane.deployment.containerSecurityContexts.controllerManager"
        ".windowsOptions.hostProcess",
        "spec.controlPlane.deployment.containerSecurityContexts.scheduler.windowsOptions"
        ".hostProcess",
        "spec.controlPlane.deployment.podSecurityContext.windowsOptions.hostProcess",
        # DNS names a TLSRoute or an Ingress routes by: no host resource.
        "spec.controlPlane.gateway.hostname",
        "spec.controlPlane.ingress.hostname",
    ]
    unsupported = [r["rule"] for r in _spec_schema()["properties"]["controlPlane"][
        "properties"]["deployment"]["x-kubernetes-validations"]]
    assert any("!has(self.additionalVolumes)" in r and "!has(self.additionalContainers)" in r
               for r in unsupported)
