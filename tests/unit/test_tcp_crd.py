"""The TenantControlPlane CRD: every field is explained, and the extraArgs rules refuse exactly
the flags the renderer manages."""

from __future__ import annotations

import re
import uuid
from typing import Any

from haku.api import crds
from haku.api import tenantcontrolplane as tcp_api
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


def test_datastore_names_have_one_rule_in_python_and_the_crd() -> None:
    props = _schema()["properties"]["spec"]["properties"]
    for field in ("dataStoreSchema", "dataStoreUsername"):
        assert props[field]["pattern"] == tcp_api.DATASTORE_NAME_PATTERN
        assert props[field]["maxLength"] == tcp_api.DATASTORE_NAME_MAX_LENGTH
    ok = tcp_api.DATASTORE_NAME.fullmatch
    assert ok(str(uuid.uuid4()))  # the default, the object's UID
    assert ok("a") and ok("tenant_01-db") and ok("s" * 63)
    for bad in (".", "..", "a.b", "a/b", "Tenant", "müller", "-a", "a_", "s" * 64, "", "a b"):
        assert not ok(bad), bad


def test_a_datastore_name_is_stored_as_is_by_every_driver() -> None:
    """Under the rule, physical == logical for every driver's schema; for users too, except
    MySQL's beyond 32 characters (a stable derived name, as for the 36-character UID)."""
    from haku.datastore import etcd, mysql, postgres
    from haku.datastore.base import physical_name

    schemas = [(etcd.SCHEMA_LIMIT, etcd.SCHEMA_CHARS),
               (postgres.NAME_LIMIT, postgres.DATABASE_CHARS),
               (mysql.DATABASE_LIMIT, mysql.DATABASE_CHARS)]
    users = [(etcd.USER_LIMIT, etcd.USER_CHARS), (postgres.NAME_LIMIT, postgres.ROLE_CHARS),
             (mysql.USER_LIMIT, mysql.USER_CHARS)]
    for name in ("a", "0", "tenant_01-db", "x" * 32, "y" * 63, str(uuid.uuid4())):
        assert tcp_api.DATASTORE_NAME.fullmatch(name)
        for limit, chars in schemas:
            assert physical_name(name, limit, chars) == name
        for limit, chars in users:
            if len(name) <= limit:
                assert physical_name(name, limit, chars) == name
            else:
                assert len(physical_name(name, limit, chars)) <= limit
    assert mysql.USER_LIMIT == 32 and postgres.NAME_LIMIT == tcp_api.DATASTORE_NAME_MAX_LENGTH


def test_the_name_limit_is_the_one_names_needs() -> None:
    rules = _schema()["x-kubernetes-validations"]
    length, shape = (r for r in rules if "metadata.name" in r["rule"])
    assert f"<= {tcp_api.NAME_MAX_LENGTH}" in length["rule"]
    assert f"at most {tcp_api.NAME_MAX_LENGTH} characters" in " ".join(length["message"].split())
    assert f"'{tcp_api.NAME_PATTERN}'" in shape["rule"]
    assert length["optionalOldSelf"] and shape["optionalOldSelf"]  # creation only
    longest = "t" * tcp_api.NAME_MAX_LENGTH
    made = controlplane.names(longest)
    assert len(made["service"]) == 63  # a Service name is a DNS-1035 label: the binding limit
    assert all(len(n) <= 253 for n in made.values())
    assert len(f"{made['datastore']}-password") <= 253
    assert all(len(v) <= 63 for v in controlplane.labels(tcp(), "x").values())


def _preserved(node: dict[str, Any], path: str) -> list[str]:
    found = [path] if node.get("x-kubernetes-preserve-unknown-fields") else []
    for name, child in (node.get("properties") or {}).items():
        found += _preserved(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += _preserved(node["items"], f"{path}[]")
    return found


def test_pod_fields_have_structural_schemas() -> None:
    """Only the fields refused as unsupported keep unknown fields; everything Haku passes
    into the pod has upstream's schema, so a wrong type is refused with its path."""
    spec = _schema()["properties"]["spec"]
    dep = "spec.controlPlane.deployment"
    assert sorted(_preserved(spec, "spec")) == sorted([
        "spec.writePermissions", "spec.dataStoreOverrides[]", "spec.addons.konnectivity",
        "spec.kubernetes.kubelet.configurationJSONPatches[]", "spec.controlPlane.gateway",
        f"{dep}.additionalContainers[]", f"{dep}.additionalInitContainers[]",
        f"{dep}.additionalVolumes[]", f"{dep}.additionalVolumeMounts", f"{dep}.probes"])
    d = spec["properties"]["controlPlane"]["properties"]["deployment"]["properties"]
    term = d["affinity"]["properties"]["podAntiAffinity"]["properties"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["items"]
    assert term["required"] == ["topologyKey"]
    assert term["properties"]["labelSelector"]["properties"]["matchLabels"][
        "additionalProperties"] == {"type": "string"}
    spread = d["topologySpreadConstraints"]["items"]
    assert spread["required"] == ["maxSkew", "topologyKey", "whenUnsatisfiable"]
    assert spread["properties"]["maxSkew"]["type"] == "integer"
    assert d["podSecurityContext"]["properties"]["runAsUser"]["format"] == "int64"
    sc = d["containerSecurityContexts"]["properties"]
    assert sc["apiServer"] == sc["controllerManager"] == sc["scheduler"]
    assert sc["apiServer"]["properties"]["capabilities"]["properties"]["drop"]["type"] == "array"
    assert d["strategy"]["properties"]["rollingUpdate"]["properties"]["maxSurge"][
        "x-kubernetes-int-or-string"] is True
