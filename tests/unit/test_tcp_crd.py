"""The TenantControlPlane CRD: every field is explained, and the extraArgs rules refuse exactly
the flags the renderer manages."""

from __future__ import annotations

import re
from typing import Any

from haku.api import crds
from haku.datastore import TenantConnection
from haku.render import controlplane
from tests.unit.test_render_tenant import ETCD, KINE, tcp


def _schema() -> dict[str, Any]:
    doc = next(c for c in crds.all_crds()
               if c["metadata"]["name"] == "tenantcontrolplanes.haku.dev")
    schema: dict[str, Any] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _undescribed(node: dict[str, Any], path: str) -> list[str]:
    missing = []
    for name, child in (node.get("properties") or {}).items():
        if not isinstance(child.get("description"), str) or not child["description"]:
            missing.append(f"{path}.{name}")
        missing += _undescribed(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        missing += _undescribed(node["items"], f"{path}[]")
    return missing


def test_every_spec_and_status_field_has_a_description() -> None:
    schema = _schema()
    props = schema["properties"]
    missing = _undescribed(props["spec"], "spec") + _undescribed(props["status"], "status")
    assert missing == []
    assert props["spec"]["description"] and props["status"]["description"]
    # The walk does look: a property without one is found.
    assert _undescribed({"properties": {"x": {"type": "string"}}}, "spec") == ["spec.x"]


def _refused(component: str) -> set[str]:
    args = _schema()["properties"]["spec"]["properties"]["controlPlane"]["properties"][
        "deployment"]["properties"]["extraArgs"]["properties"][component]
    (rule,) = args["x-kubernetes-validations"]
    match = re.search(r"\^--\(([^)]*)\)", rule["rule"])
    assert match is not None
    flags = {f"--{f}" for f in match.group(1).split("|")}
    for flag in flags:  # the message names every refused flag
        assert flag in rule["message"]
    return flags


def _storage() -> list[TenantConnection]:
    return [ETCD, KINE]


def test_extra_args_refuse_exactly_the_managed_flags() -> None:
    s = tcp()
    managed: set[str] = set()
    for storage in _storage():
        managed |= set(controlplane.apiserver_managed(s, storage, "10.0.0.7"))
    assert _refused("apiServer") == managed
    assert _refused("controllerManager") == set(controlplane.controller_manager_managed(s))
    assert _refused("scheduler") == set(controlplane.scheduler_managed())


def test_spec_backed_apiserver_flags_yield_to_extra_args() -> None:
    s = tcp(controlPlane={"service": {"serviceType": "ClusterIP"}, "deployment": {"extraArgs": {
        "apiServer": ["--enable-admission-plugins=NodeRestriction"]}}})
    args = controlplane.apiserver_args(s, ETCD, "10.0.0.7")
    assert [a for a in args if a.startswith("--enable-admission-plugins")] == [
        "--enable-admission-plugins=NodeRestriction"]
    assert any(a.startswith("--kubelet-preferred-address-types=InternalIP") for a in args)


def test_networkprofile_port_has_no_crd_default() -> None:
    port = _schema()["properties"]["spec"]["properties"]["networkProfile"]["properties"]["port"]
    assert "default" not in port
    assert tcp().port == 6443 and tcp().port_given is None
