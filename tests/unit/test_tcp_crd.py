"""The TenantControlPlane CRD: every field is explained, the extraArgs rules refuse exactly
the flags the renderer manages, and the flags that would weaken a tenant as Python lists them."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from haku.api import crds
from haku.api import tenantcontrolplane as tcp_api
from haku.datastore import TenantConnection
from haku.render import InvalidSpec, controlplane
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


def _extra_args() -> dict[str, Any]:
    props: dict[str, Any] = _schema()["properties"]["spec"]["properties"]["controlPlane"][
        "properties"]["deployment"]["properties"]["extraArgs"]["properties"]
    return props


def _refused(component: str) -> set[str]:
    """The flags the managed-flags rule of ``extraArgs.<component>`` refuses."""
    (rule,) = [r for r in _extra_args()[component]["x-kubernetes-validations"]
               if "a flag Haku manages" in r["message"]]
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
    """Only the fields refused as unsupported, and the values of kubelet JSON patches (any
    JSON, by RFC 6902), keep unknown fields; everything Haku passes into the pod has
    upstream's schema, so a wrong type is refused with its path."""
    spec = _schema()["properties"]["spec"]
    dep = "spec.controlPlane.deployment"
    assert sorted(_preserved(spec, "spec")) == sorted([
        "spec.dataStoreOverrides[]",
        "spec.addons.konnectivity.server.securityContext",
        "spec.kubernetes.kubelet.configurationJSONPatches[].value",
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


def test_the_weakening_flag_rules_are_the_python_list() -> None:
    """One list (REFUSED_EXTRA_ARGS): each extraArgs component has the rule generated from it,
    word for word, beside its managed-flags rule (if any) and nothing else."""
    extra_args = _extra_args()
    assert set(tcp_api.REFUSED_EXTRA_ARGS) == set(extra_args)
    for component, schema in extra_args.items():
        rules = schema["x-kubernetes-validations"]
        assert tcp_api.extra_args_rule(component) in rules, component
        assert len(rules) == (1 if component == "kine" else 2)
        for flag in tcp_api.REFUSED_EXTRA_ARGS[component]:
            assert flag.shown in rules[-1]["message"]
            assert flag.why in rules[-1]["messageExpression"]


@pytest.mark.parametrize(("component", "arg", "shown"), [
    ("apiServer", "--authorization-mode=AlwaysAllow", "--authorization-mode with AlwaysAllow"),
    ("apiServer", "--authorization-mode=Node,RBAC,AlwaysAllow",
     "--authorization-mode with AlwaysAllow"),
    ("apiServer", "--authorization-mode=AlwaysAllow,Node", "--authorization-mode with AlwaysAllow"),
    ("apiServer", "--etcd-servers-overrides=/events#https://x:2379", "--etcd-servers-overrides"),
    ("apiServer", "--etcd-servers-overrides", "--etcd-servers-overrides"),
    ("apiServer", "--insecure-port=8080", "--insecure-*"),
    ("apiServer", "--insecure-bind-address=0.0.0.0", "--insecure-*"),
    ("controllerManager", "--master=https://elsewhere", "--master"),
    ("scheduler", "--master", "--master"),
    ("kine", "--endpoint=mysql://x", "--endpoint"),
    ("kine", "--listen-address=0.0.0.0:2379",
     "--listen-address, --peer-bind-address, --peer-advertise-address"),
    ("kine", "--peer-bind-address=0.0.0.0:3380",
     "--listen-address, --peer-bind-address, --peer-advertise-address"),
    ("kine", "--metrics-bind-address=:8080", "--metrics-bind-address, --metrics-enable-profiling"),
    ("kine", "--skip-verify", "--ca-file, --skip-verify"),
    ("kine", "--ca-file=", "--ca-file, --skip-verify"),
])
def test_flags_that_weaken_the_tenant_are_refused(component: str, arg: str, shown: str) -> None:
    flag = tcp_api.refused_flag(component, arg)
    assert flag is not None and flag.shown == shown
    assert re.match(tcp_api.refused_pattern(component), arg)


@pytest.mark.parametrize(("component", "arg"), [
    ("apiServer", "--authorization-mode=Node,RBAC"),
    ("apiServer", "--authorization-mode=Node,RBAC,Webhook"),
    ("apiServer", "--anonymous-auth=true"),
    ("apiServer", "--etcd-healthcheck-timeout=5s"),
    ("apiServer", "--etcd-servers=x"),  # a managed flag: refused by the other rule
    ("controllerManager", "--master-ish=1"),
    ("controllerManager", "--controllers=*"),
    ("scheduler", "--v=2"),
    ("kine", "--endpoint-x=1"),
    ("kine", "--datastore-max-open-connections=5"),
    ("kine", "--compact-interval=5m"),
])
def test_flags_next_to_them_are_not(component: str, arg: str) -> None:
    assert tcp_api.refused_flag(component, arg) is None
    assert not re.match(tcp_api.refused_pattern(component), arg)


def test_every_flag_haku_gives_kine_is_refused_in_extra_args() -> None:
    """kine's listener, metrics and TLS are Haku's (kine_args), and so is its endpoint (the
    KINE_ENDPOINT environment variable, which --endpoint would override)."""
    from haku.render import kine

    container = kine.kine_container(KINE, "kine:x", "secret")
    assert kine.ENDPOINT_KEY in {e["name"] for e in container["env"]}
    for arg in [*container["args"], "--endpoint=postgres://other"]:
        assert tcp_api.refused_flag("kine", arg) is not None, arg


def test_the_two_kinds_of_refused_flags_do_not_overlap() -> None:
    for component in ("apiServer", "controllerManager", "scheduler"):
        for flag in _refused(component):
            assert tcp_api.refused_flag(component, f"{flag}=x") is None, flag


def test_the_version_rule_is_the_supported_list() -> None:
    """spec.kubernetes.version: the CRD's first rule is generated from SUPPORTED_MINORS, and
    render refuses the same versions (objects admitted before the rule)."""
    version = _schema()["properties"]["spec"]["properties"]["kubernetes"]["properties"][
        "version"]
    rules = version["x-kubernetes-validations"]
    assert rules[0] == tcp_api.version_rule()
    assert [r["message"] for r in rules[1:]] == [
        "spec.kubernetes.version cannot go down",
        "spec.kubernetes.version cannot change its major version",
        "spec.kubernetes.version cannot skip a minor version"]
    assert all("oldSelf" in r["rule"] for r in rules[1:])  # transition rules
    for good in ("v1.36.0", "v1.36.3", "v1.37.2", "v1.37.10"):
        assert tcp_api.version_problem(good) is None, good
    for bad in ("v1.35.4", "v1.38.0", "v1.99.0", "v2.37.2", "v1.37.02", "1.37.2"):
        assert "is not a version this Haku runs" in (tcp_api.version_problem(bad) or ""), bad
    with pytest.raises(InvalidSpec, match=r"spec\.kubernetes\.version"):
        controlplane.deployment(tcp(kubernetes={"version": "v1.99.0"}), ETCD, "10.0.0.7", {},
                                "kine:x")


def test_the_kubelet_patch_schema_is_rfc_6902_as_render_applies_it() -> None:
    """The CRD's operations and what each needs are jsonpatch's, and its pointer rule accepts
    exactly the pointers jsonpatch parses."""
    from haku.render import jsonpatch

    kubelet = _schema()["properties"]["spec"]["properties"]["kubernetes"]["properties"][
        "kubelet"]
    items = kubelet["properties"]["configurationJSONPatches"]["items"]
    assert tuple(items["properties"]["op"]["enum"]) == jsonpatch.OPS
    with_value, without = (b["properties"]["op"]["enum"] for b in items["anyOf"])
    assert with_value == list(jsonpatch.VALUE_OPS) and items["anyOf"][0]["required"] == ["value"]
    assert sorted(with_value + without) == sorted(jsonpatch.OPS)
    from_rule = items["x-kubernetes-validations"][0]["rule"]
    assert from_rule == "!(self.op in ['move', 'copy']) || has(self.from)"
    assert tuple(re.findall(r"'(\w+)'", from_rule)) == jsonpatch.FROM_OPS
    (pointer_rule,) = items["properties"]["path"]["x-kubernetes-validations"]
    assert items["properties"]["from"]["x-kubernetes-validations"] == [pointer_rule]
    pattern = re.fullmatch(r"self\.matches\('(.*)'\)", pointer_rule["rule"])
    assert pattern is not None
    for text in ("", "/", "/a", "/a~0b~1c/0/-", "/~01", "a", "/a~", "/a~2", "~0", "/a/~x"):
        try:
            jsonpatch.parse_pointer(text)
            parses = True
        except jsonpatch.PointerError:
            parses = False
        assert (re.search(pattern.group(1), text) is not None) == parses, text
