"""Konnectivity (issue 13): the spec, the proxy-server in the control-plane pod, the Service
port, the NetworkPolicy, the kubeconfig, the agents inside the tenant, and the Condition."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from lightkube.resources.apps_v1 import DaemonSet

from haku.api.conditions import Condition
from haku.api.tenantcontrolplane import (
    KONNECTIVITY_AGENT_IMAGE,
    KONNECTIVITY_SERVER_IMAGE,
    KONNECTIVITY_VERSION,
    TenantControlPlaneSpec,
)
from haku.controller.steps.konnectivity import agents_condition
from haku.controller.tenant_watches import drift_mapper
from haku.datastore import TenantConnection
from haku.render import (
    InvalidSpec,
    controlplane,
    konnectivity,
    netpol,
    tenant_bootstrap,
    tenant_kubeconfigs,
)
from haku.render import pki as pki_render
from haku.render.tenant_kubeconfigs import IDENTITIES, KONNECTIVITY
from haku.tenant.bootstrap import Agents

ETCD = TenantConnection(driver="etcd", etcd_servers=("https://10.245.0.1:12379",),
                        etcd_prefix="/t1", files={"ca.crt": b"", "tls.crt": b"", "tls.key": b""})
CRD = Path(__file__).parents[2] / "src/haku/api/crds/tenantcontrolplanes.haku.dev.yaml"


def tcp(addon: dict[str, Any] | None = None, service: str = "ClusterIP",
        **net: Any) -> TenantControlPlaneSpec:
    spec: dict[str, Any] = {"kubernetes": {"version": "v1.37.2"},
                            "controlPlane": {"service": {"serviceType": service}},
                            "networkProfile": net}
    if addon is not None:
        spec["addons"] = {"konnectivity": addon}
    return TenantControlPlaneSpec.parse(
        {"metadata": {"name": "t1", "namespace": "ns", "uid": "u1"}, "spec": spec})


def containers(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in d["spec"]["template"]["spec"]["containers"]}


def volumes(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}


def flags(args: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) if "=" in a else (a, "") for a in args)


def test_the_spec_defaults_are_kamajis_with_haku_s_pinned_release() -> None:
    addon = tcp({}).addons.konnectivity
    assert addon is not None
    assert addon.server.port == 8132 and addon.server.port_given is None
    assert addon.server.image_ref == f"{KONNECTIVITY_SERVER_IMAGE}:{KONNECTIVITY_VERSION}"
    assert addon.agent.image_ref == f"{KONNECTIVITY_AGENT_IMAGE}:{KONNECTIVITY_VERSION}"
    assert addon.agent.mode == "DaemonSet"
    assert addon.agent.tolerations == ({"key": "CriticalAddonsOnly", "operator": "Exists"},)
    assert tcp().addons.konnectivity is None
    given = tcp({"server": {"port": 31132, "version": "v0.34.0", "extraArgs": ["--v=4"]},
                 "agent": {"mode": "Deployment", "replicas": 3, "tolerations": [],
                           "hostNetwork": True}}).addons.konnectivity
    assert given is not None
    assert given.server.port_given == 31132 and given.server.image_ref.endswith(":v0.34.0")
    assert given.agent.replicas == 3 and given.agent.tolerations == ()
    assert given.agent.host_network


def test_the_proxy_server_runs_beside_kube_apiserver_over_a_shared_socket() -> None:
    d = controlplane.deployment(tcp({}), ETCD, "10.0.0.7", {}, "kine:x", secure_port=6443)
    c = containers(d)
    server = c["konnectivity-server"]
    assert server["image"] == f"{KONNECTIVITY_SERVER_IMAGE}:{KONNECTIVITY_VERSION}"
    assert server["command"] == ["/proxy-server"]
    f = flags(server["args"])
    assert f["--uds-name"] == konnectivity.SOCKET and f["--server-port"] == "0"
    assert f["--mode"] == "grpc" and f["--agent-port"] == "8132"
    assert f["--authentication-audience"] == "system:konnectivity-server"
    assert (f["--agent-namespace"], f["--agent-service-account"]) == (
        "kube-system", "konnectivity-agent")
    assert f["--server-count"] == "2"  # the Deployment's replicas
    assert f["--proxy-strategies"] == "destHost,default"
    assert "--admin-bind-address" not in f  # the admin (pprof) port stays on localhost
    # Agents connect through the Service: no readiness gate (it is ready once an agent is).
    assert "readinessProbe" not in server and server["livenessProbe"]["httpGet"]["port"] == 8134
    assert {"name": "konnectivity", "containerPort": 8132, "protocol": "TCP"} in server["ports"]
    assert server["securityContext"]["allowPrivilegeEscalation"] is False
    assert server["resources"] == {"requests": {"cpu": "5m", "memory": "24Mi"}}
    api = c["kube-apiserver"]
    egress_file = f"{konnectivity.EGRESS_DIR}/{konnectivity.EGRESS_FILE}"
    assert f"--egress-selector-config-file={egress_file}" in api["args"]
    socket_mounts = [(name, m["mountPath"]) for name, cont in c.items()
                     for m in cont["volumeMounts"] if m["name"] == "konnectivity-uds"]
    assert socket_mounts == [("kube-apiserver", konnectivity.SOCKET_DIR),
                             ("konnectivity-server", konnectivity.SOCKET_DIR)]
    v = volumes(d)
    assert v["konnectivity-uds"] == {"name": "konnectivity-uds", "emptyDir": {}}
    # The server sees kube-apiserver's certificate and its own kubeconfig, nothing else of
    # the tenant's PKI (no CA key, no service-account key).
    assert [i["key"] for i in v["konnectivity-pki"]["secret"]["items"]] == [
        "apiserver.crt", "apiserver.key"]
    assert [i["key"] for i in v["konnectivity-kubeconfig"]["secret"]["items"]] == [
        "konnectivity-server.conf"]
    assert [i["key"] for i in v["egress-selector"]["secret"]["items"]] == [
        konnectivity.EGRESS_FILE]
    server_volumes = {m["name"] for m in server["volumeMounts"]}
    assert server_volumes == {"konnectivity-uds", "konnectivity-kubeconfig", "konnectivity-pki"}


def test_without_the_addon_nothing_of_it_is_rendered() -> None:
    d = controlplane.deployment(tcp(), ETCD, "10.0.0.7", {}, "kine:x")
    assert "konnectivity-server" not in containers(d)
    assert not any(v.startswith("konnectivity") or v == "egress-selector" for v in volumes(d))
    assert not any(a.startswith("--egress-selector") for a in
                   containers(d)["kube-apiserver"]["args"])
    ports = controlplane.service(tcp())["spec"]["ports"]
    assert [p["name"] for p in ports] == ["kube-apiserver"]


def test_the_egress_selector_sends_only_cluster_traffic_through_the_socket() -> None:
    doc = yaml.safe_load(konnectivity.egress_selector_configuration())
    assert doc["kind"] == "EgressSelectorConfiguration"
    assert doc["egressSelections"] == [{"name": "cluster", "connection": {
        "proxyProtocol": "GRPC", "transport": {"uds": {"udsName": konnectivity.SOCKET}}}}]


def test_managed_flags_win_and_the_crd_refuses_them() -> None:
    addon = {"server": {"extraArgs": ["--mode=http-connect", "--v=5"]},
             "agent": {"extraArgs": ["--proxy-server-host=evil.example", "--v=5"]}}
    d = controlplane.deployment(tcp(addon), ETCD, "10.0.0.7", {}, "kine:x")
    f = flags(containers(d)["konnectivity-server"]["args"])
    assert f["--mode"] == "grpc" and f["--v"] == "5"
    spec = tcp(addon)
    objects = tenant_bootstrap.konnectivity_objects(spec, "https://192.0.2.10:31443", 30001)
    agent = objects[-1]["spec"]["template"]["spec"]["containers"][0]
    a = flags(agent["args"])
    assert a["--proxy-server-host"] == "192.0.2.10" and a["--v"] == "5"
    # The CRD's rules list exactly the managed flags (plus the admin bind address).
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    k = schema["properties"]["spec"]["properties"]["addons"]["properties"]["konnectivity"][
        "properties"]

    def refused(side: str) -> set[str]:
        (rule,) = k[side]["properties"]["extraArgs"]["x-kubernetes-validations"]
        match = re.search(r"\^--\(([^)]*)\)", rule["rule"])
        assert match is not None
        found = {f"--{x}" for x in match.group(1).split("|")}
        assert all(x in rule["message"] for x in found)
        return found

    assert refused("server") == set(konnectivity.server_managed(tcp({}).addons.konnectivity, 1)
                                    ) | {"--admin-bind-address"}  # type: ignore[arg-type]
    assert refused("agent") == set(konnectivity.agent_managed("h", 1))


def test_the_service_serves_the_agents_port_allocated_or_given() -> None:
    ports = controlplane.service(tcp({}, "NodePort"))["spec"]["ports"]
    assert ports[1] == {"name": "konnectivity-server", "protocol": "TCP", "port": 8132,
                        "targetPort": 8132}
    given = controlplane.service(tcp({"server": {"port": 31132}}, "NodePort"))
    assert given["spec"]["ports"][1]["nodePort"] == 31132
    lb = controlplane.service(tcp({"server": {"port": 31132}}, "LoadBalancer"))
    assert "nodePort" not in lb["spec"]["ports"][1]
    with pytest.raises(InvalidSpec, match=r"spec\.addons\.konnectivity\.server\.port"):
        controlplane.service(tcp({"server": {"port": 6443}}))
    clash = TenantControlPlaneSpec.parse({
        "metadata": {"name": "t1", "namespace": "ns", "uid": "u1"},
        "spec": {"kubernetes": {"version": "v1.37.2"}, "addons": {"konnectivity": {}},
                 "controlPlane": {"service": {"serviceType": "ClusterIP", "additionalPorts": [
                     {"name": "x", "port": 8132}]}}}})
    with pytest.raises(InvalidSpec, match="Konnectivity port"):
        controlplane.service(clash)


def test_with_konnectivity_the_control_plane_reaches_its_datastore_only() -> None:
    peers, dns = netpol.datastore_peers(["10.245.0.1:12379"], {})
    egress = netpol.Egress(datastore=peers, dns=dns)
    on = netpol.network_policy(tcp({}), egress)["spec"]
    assert on["ingress"] == [{"ports": [{"protocol": "TCP", "port": "kube-apiserver"},
                                        {"protocol": "TCP", "port": "konnectivity"}]}]
    assert on["egress"] == [{"to": [{"ipBlock": {"cidr": "10.245.0.1/32"}}],
                             "ports": [{"protocol": "TCP", "port": 12379}]}]
    off = netpol.network_policy(tcp(), egress)["spec"]
    assert len(off["egress"]) == 2  # the datastore and the tenant's networks


def test_the_server_kubeconfig_is_its_own_user_not_a_master() -> None:
    assert KONNECTIVITY not in IDENTITIES
    assert KONNECTIVITY.user == "system:konnectivity-server"
    assert KONNECTIVITY.organizations == () and KONNECTIVITY.local
    ca = pki_render.new_ca("kubernetes")
    plan = tenant_kubeconfigs.plan("t1", ca, {}, "https://192.0.2.1:6443",
                                   "https://127.0.0.1:6443", (KONNECTIVITY,))
    doc = yaml.safe_load(plan.data["konnectivity-server.conf"])
    assert doc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"


def test_the_agents_in_the_tenant() -> None:
    spec = tcp({})
    objects = tenant_bootstrap.konnectivity_objects(spec, "https://192.0.2.10:31443", 30132)
    by_kind = {o["kind"]: o for o in objects}
    assert set(by_kind) == {"ServiceAccount", "ClusterRoleBinding", "DaemonSet"}
    crb = by_kind["ClusterRoleBinding"]
    assert crb["roleRef"]["name"] == "system:auth-delegator"
    assert crb["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                "name": "system:konnectivity-server"}]
    ds = by_kind["DaemonSet"]
    assert ds["metadata"]["namespace"] == "kube-system"
    assert ds["metadata"]["labels"][tenant_bootstrap.ADDON_LABEL] == "konnectivity"
    pod = ds["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "konnectivity-agent"
    assert pod["tolerations"] == [{"key": "CriticalAddonsOnly", "operator": "Exists"}]
    assert "hostNetwork" not in pod
    (token,) = pod["volumes"][0]["projected"]["sources"]
    assert token["serviceAccountToken"]["audience"] == "system:konnectivity-server"
    agent = pod["containers"][0]
    a = flags(agent["args"])
    assert (a["--proxy-server-host"], a["--proxy-server-port"]) == ("192.0.2.10", "30132")
    assert a["--ca-cert"] == "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    assert a["--agent-identifiers"] == "ipv4=$(HOST_IP)"
    assert agent["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Deployment mode, host network, an IPv6 endpoint.
    dep = tenant_bootstrap.konnectivity_objects(
        tcp({"agent": {"mode": "Deployment", "replicas": 2, "hostNetwork": True}}),
        "https://[fd00::5]:6443", None)[-1]
    assert dep["kind"] == "Deployment" and dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["hostNetwork"] is True
    a = flags(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    assert (a["--proxy-server-host"], a["--proxy-server-port"]) == ("fd00::5", "8132")


def ctx(agents: Agents | None, serving: bool = True) -> Any:
    conditions = {"APIServerReady": Condition("APIServerReady", "True" if serving else "False",
                                              "Serving", ""),
                  "TenantBootstrapped": Condition("TenantBootstrapped", "False", "ApplyFailed",
                                                  "DaemonSet kube-system/x: nope")}
    return SimpleNamespace(conditions=conditions, agents=agents)


@pytest.mark.parametrize(("agents", "serving", "status", "reason"), [
    (None, False, "False", "WaitingForAPIServer"),
    (None, True, "False", "NoAgents"),
    (Agents("DaemonSet", 0, 0), True, "False", "NoAgentsScheduled"),
    (Agents("DaemonSet", 2, 0), True, "False", "NotConnected"),
    (Agents("DaemonSet", 2, 1), True, "True", "Connected"),
    (Agents("Deployment", 1, 1), True, "True", "Connected"),
])
def test_the_condition_reports_connected_agents(agents: Agents | None, serving: bool,
                                                 status: str, reason: str) -> None:
    found = agents_condition(ctx(agents, serving))
    assert (found.type, found.status, found.reason) == ("KonnectivityConnected", status, reason)


def _workload(generation: int, ready: int, name: str = "konnectivity-agent",
              group: str = "konnectivity") -> Any:
    return DaemonSet.from_dict({  # type: ignore[no-untyped-call]
        "metadata": {"name": name, "namespace": "kube-system", "generation": generation,
                     "labels": {tenant_bootstrap.ADDON_LABEL: group}},
        "spec": {"selector": {}, "template": {}},
        "status": {"currentNumberScheduled": 1, "desiredNumberScheduled": 1,
                   "numberMisscheduled": 0, "numberReady": ready}})


def test_connected_agents_changing_is_news_other_status_updates_are_not() -> None:
    mapper = drift_mapper(("ns", "t1"))
    key = [("ns", "t1")]
    assert mapper("ADDED", _workload(1, 0)) == []
    assert mapper("MODIFIED", _workload(1, 1)) == key  # an agent connected
    assert mapper("MODIFIED", _workload(1, 1)) == []
    assert mapper("MODIFIED", _workload(1, 0)) == key  # it went
    other = drift_mapper(("ns", "t1"))
    assert other("ADDED", _workload(1, 0, name="kube-proxy",
                                    group="kube-proxy")) == []
    assert other("MODIFIED", _workload(1, 1, name="kube-proxy",
                                       group="kube-proxy")) == []
