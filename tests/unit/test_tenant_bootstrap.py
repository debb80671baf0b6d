"""The objects Haku applies inside a tenant (pure rendering)."""

import base64
import copy
from typing import Any

import pytest
import yaml

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.render import InvalidSpec, pki
from haku.render.tenant_bootstrap import (
    ADDON_LABEL,
    CORE,
    COREDNS,
    KONNECTIVITY,
    KUBE_PROXY,
    MANAGED_BY,
    NODE_BOOTSTRAPPERS,
    bootstrap_objects,
    kubelet_configuration,
    object_key,
)
from haku.tenant.tokens import NODE_TOKEN_GROUP

ENDPOINT = "https://192.0.2.10:31443"
CA = pki.new_ca("kubernetes")


def spec(addons: dict[str, Any] | None = None, kubelet: dict[str, Any] | None = None,
         **network: Any) -> TenantControlPlaneSpec:
    body: dict[str, Any] = {
        "kubernetes": {"version": "v1.37.2", **({"kubelet": kubelet} if kubelet else {})},
        "networkProfile": {"serviceCidr": "10.96.0.0/16", "podCidr": "10.244.0.0/16",
                           **network},
    }
    if addons is not None:
        body["addons"] = addons
    return TenantControlPlaneSpec.parse(
        {"metadata": {"name": "acme", "namespace": "tenants", "uid": "u1"}, "spec": body})


def by_key(groups: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str, str], dict]:
    return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
            for objects in groups.values() for o in objects}


def binding_subjects(obj: dict[str, Any]) -> set[tuple[str, str]]:
    return {(s["kind"], s["name"]) for s in obj["subjects"]}


def test_absent_addons_render_only_the_core_group() -> None:
    groups = bootstrap_objects(spec(), CA.cert_pem, ENDPOINT)
    assert list(groups) == [CORE, KUBE_PROXY, COREDNS, KONNECTIVITY]
    assert groups[KUBE_PROXY] == [] and groups[COREDNS] == [] and groups[KONNECTIVITY] == []
    kinds = {o["kind"] for o in groups[CORE]}
    assert "DaemonSet" not in kinds and "Deployment" not in kinds


def test_every_object_is_labelled_with_its_group_and_haku_and_keys_are_unique() -> None:
    groups = bootstrap_objects(spec({"coreDNS": {}, "kubeProxy": {}, "konnectivity": {}}),
                               CA.cert_pem, ENDPOINT)
    keys = [object_key(o) for objects in groups.values() for o in objects]
    assert len(keys) == len(set(keys))
    for group, objects in groups.items():
        assert objects, group
        for obj in objects:
            labels = obj["metadata"]["labels"]
            assert labels[ADDON_LABEL] == group, object_key(obj)
            assert MANAGED_BY.items() <= labels.items(), object_key(obj)


def test_join_rbac_is_kubeadms() -> None:
    objects = by_key(bootstrap_objects(spec(), CA.cert_pem, ENDPOINT))
    # The group tokens are issued for is the one the RBAC names.
    assert NODE_BOOTSTRAPPERS == NODE_TOKEN_GROUP
    token, nodes = ("Group", NODE_BOOTSTRAPPERS), ("Group", "system:nodes")
    expected = {
        "kubeadm:get-nodes": ("kubeadm:get-nodes", {token}),
        "kubeadm:kubelet-bootstrap": ("system:node-bootstrapper", {token}),
        "kubeadm:node-autoapprove-bootstrap":
            ("system:certificates.k8s.io:certificatesigningrequests:nodeclient", {token}),
        "kubeadm:node-autoapprove-certificate-rotation":
            ("system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", {nodes}),
        "kubeadm:cluster-admins": ("cluster-admin", {("Group", "kubeadm:cluster-admins")}),
        "kubeadm:apiserver-kubelet-client":
            ("system:kubelet-api-admin", {("User", "kube-apiserver-kubelet-client")}),
    }
    for name, (role, subjects) in expected.items():
        crb = objects[("ClusterRoleBinding", "", name)]
        assert crb["roleRef"]["name"] == role, name
        assert binding_subjects(crb) == subjects, name
    get_nodes = objects[("ClusterRole", "", "kubeadm:get-nodes")]
    assert get_nodes["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    for ns, name, cm, subjects in [
        ("kube-system", "kubeadm:nodes-kubeadm-config", "kubeadm-config", {token, nodes}),
        ("kube-system", "kubeadm:kubelet-config", "kubelet-config", {token, nodes}),
        ("kube-public", "kubeadm:bootstrap-signer-clusterinfo", "cluster-info",
         {("User", "system:anonymous")}),
    ]:
        role = objects[("Role", ns, name)]
        assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                                  "verbs": ["get"], "resourceNames": [cm]}]
        assert binding_subjects(objects[("RoleBinding", ns, name)]) == subjects


def test_cluster_info_names_the_endpoint_and_ca_and_nothing_else() -> None:
    objects = by_key(bootstrap_objects(spec(), CA.cert_pem, ENDPOINT))
    info = objects[("ConfigMap", "kube-public", "cluster-info")]
    doc = yaml.safe_load(info["data"]["kubeconfig"])
    (cluster,) = doc["clusters"]
    assert cluster["name"] == ""
    assert cluster["cluster"]["server"] == ENDPOINT
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == CA.cert_pem
    assert not doc["users"] and not doc["contexts"]
    assert b"PRIVATE KEY" not in yaml.safe_dump(doc).encode()


def test_kubeadm_and_kubelet_config_match_the_tenant() -> None:
    s = spec({"coreDNS": {"imageTag": "v1.12.0"}}, dnsServiceIPs=["10.96.0.53"],
             clusterDomain="acme.local", certSANs=["api.acme.example"])
    objects = by_key(bootstrap_objects(s, CA.cert_pem, ENDPOINT))
    cc = yaml.safe_load(objects[("ConfigMap", "kube-system", "kubeadm-config")]
                        ["data"]["ClusterConfiguration"])
    assert cc["kind"] == "ClusterConfiguration" and cc["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert cc["kubernetesVersion"] == "v1.37.2"
    assert cc["controlPlaneEndpoint"] == "192.0.2.10:31443"
    assert cc["networking"] == {"dnsDomain": "acme.local", "serviceSubnet": "10.96.0.0/16",
                                "podSubnet": "10.244.0.0/16"}
    assert cc["apiServer"]["certSANs"] == ["api.acme.example"]
    assert cc["dns"] == {"imageRepository": "registry.k8s.io/coredns", "imageTag": "v1.12.0"}
    assert cc["proxy"] == {"disabled": True}
    kubelet = yaml.safe_load(objects[("ConfigMap", "kube-system", "kubelet-config")]
                             ["data"]["kubelet"])
    assert kubelet["kind"] == "KubeletConfiguration"
    assert kubelet["clusterDNS"] == ["10.96.0.53"]
    assert kubelet["clusterDomain"] == "acme.local"
    assert kubelet["authentication"]["anonymous"] == {"enabled": False}
    assert kubelet["authorization"]["mode"] == "Webhook"
    assert kubelet["rotateCertificates"] is True


# kubeadm's KubeletConfiguration for spec() (the defaults: systemd, no patches).
KUBEADM_KUBELET = {
    "apiVersion": "kubelet.config.k8s.io/v1beta1",
    "kind": "KubeletConfiguration",
    "authentication": {"anonymous": {"enabled": False},
                       "webhook": {"enabled": True, "cacheTTL": "0s"},
                       "x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"}},
    "authorization": {"mode": "Webhook", "webhook": {"cacheAuthorizedTTL": "0s",
                                                     "cacheUnauthorizedTTL": "0s"}},
    "cgroupDriver": "systemd",
    "clusterDNS": ["10.96.0.10"],
    "clusterDomain": "cluster.local",
    "rotateCertificates": True,
    "staticPodPath": "/etc/kubernetes/manifests",
}


def served_kubelet(s: TenantControlPlaneSpec) -> str:
    objects = by_key(bootstrap_objects(s, CA.cert_pem, ENDPOINT))
    text: str = objects[("ConfigMap", "kube-system", "kubelet-config")]["data"]["kubelet"]
    return text


def test_the_kubelet_configuration_is_kubeadms_by_default() -> None:
    assert yaml.safe_load(served_kubelet(spec())) == KUBEADM_KUBELET
    assert kubelet_configuration(spec(kubelet={"cgroupfs": "systemd"})) == KUBEADM_KUBELET


def test_cgroupfs_and_json_patches_make_exactly_the_served_configuration() -> None:
    patches = [
        {"op": "add", "path": "/failSwapOn", "value": False},
        {"op": "add", "path": "/maxPods", "value": 77},
        {"op": "add", "path": "/evictionHard", "value": {"nodefs.available": "1%"}},
        {"op": "add", "path": "/clusterDNS/-", "value": "10.96.0.11"},
        {"op": "replace", "path": "/authorization/webhook/cacheAuthorizedTTL", "value": "5s"},
        {"op": "remove", "path": "/authentication/webhook/cacheTTL"},
        {"op": "test", "path": "/cgroupDriver", "value": "cgroupfs"},  # cgroupfs came first
        {"op": "copy", "from": "/clusterDomain", "path": "/x"},
        {"op": "move", "from": "/x", "path": "/y"},
        {"op": "remove", "path": "/y"},
    ]
    s = spec(kubelet={"cgroupfs": "cgroupfs", "configurationJSONPatches": patches})
    expected = copy.deepcopy(KUBEADM_KUBELET)
    expected["cgroupDriver"] = "cgroupfs"
    expected["authorization"]["webhook"]["cacheAuthorizedTTL"] = "5s"
    del expected["authentication"]["webhook"]["cacheTTL"]
    expected.update({"clusterDNS": ["10.96.0.10", "10.96.0.11"], "failSwapOn": False,
                     "maxPods": 77, "evictionHard": {"nodefs.available": "1%"}})
    assert yaml.safe_load(served_kubelet(s)) == expected
    # a patch wins over cgroupfs: it applies after
    over = spec(kubelet={"cgroupfs": "cgroupfs", "configurationJSONPatches": [
        {"op": "replace", "path": "/cgroupDriver", "value": "systemd"}]})
    assert kubelet_configuration(over)["cgroupDriver"] == "systemd"


def test_the_spec_is_never_changed_by_rendering() -> None:
    value = {"nodefs.available": "1%"}
    patches = [{"op": "add", "path": "/evictionHard", "value": value}]
    s = spec(kubelet={"configurationJSONPatches": patches})
    conf = kubelet_configuration(s)
    conf["evictionHard"]["nodefs.available"] = "9%"
    assert s.kubelet_patches == ({"op": "add", "path": "/evictionHard",
                                  "value": {"nodefs.available": "1%"}},)
    assert kubelet_configuration(s)["evictionHard"] == value


@pytest.mark.parametrize(("patches", "field", "message"), [
    ([{"op": "add", "path": "/maxPods", "value": 1},
      {"op": "remove", "path": "/evictionHard"}],
     "spec.kubernetes.kubelet.configurationJSONPatches[1]",
     "remove '/evictionHard': /evictionHard does not exist (the patches apply all or none: "
     "what was served before stays until they do)"),
    ([{"op": "test", "path": "/cgroupDriver", "value": "cgroupfs"}],
     "spec.kubernetes.kubelet.configurationJSONPatches[0]",
     "test '/cgroupDriver': test failed: /cgroupDriver is \"systemd\", not \"cgroupfs\""),
    ([{"op": "add", "path": "/clusterDNS/5", "value": "10.96.0.11"}],
     "spec.kubernetes.kubelet.configurationJSONPatches[0]",
     "/clusterDNS/5: index 5 is out of range (the array has 1 element)"),
    ([{"op": "add", "path": "/maxPods"}],  # admitted before the CRD's rules: render says so
     "spec.kubernetes.kubelet.configurationJSONPatches[0]", "add needs a value"),
    ([{"op": "replace", "path": "/kind", "value": "Pod"}],
     "spec.kubernetes.kubelet.configurationJSONPatches",
     "the patched document is no longer a kubelet.config.k8s.io/v1beta1 KubeletConfiguration"),
    ([{"op": "replace", "path": "", "value": []}],
     "spec.kubernetes.kubelet.configurationJSONPatches", "is no longer a"),
])
def test_a_patch_that_cannot_apply_is_invalid_spec_naming_it(
        patches: list[dict[str, Any]], field: str, message: str) -> None:
    s = spec(kubelet={"cgroupfs": "systemd", "configurationJSONPatches": patches})
    with pytest.raises(InvalidSpec) as info:
        bootstrap_objects(s, CA.cert_pem, ENDPOINT)
    assert info.value.field == field
    assert message in info.value.message


def test_an_unknown_cgroup_driver_is_invalid_spec() -> None:
    with pytest.raises(InvalidSpec) as info:
        kubelet_configuration(spec(kubelet={"cgroupfs": "cgroupv2"}))
    assert info.value.field == "spec.kubernetes.kubelet.cgroupfs"


def test_kube_proxy_uses_its_service_account_and_the_tenant_endpoint() -> None:
    s = spec({"kubeProxy": {"imageRepository": "mirror.example/k8s", "imageTag": "v1.37.1"}},
             podCidr="10.32.0.0/12")
    objects = by_key(bootstrap_objects(s, CA.cert_pem, ENDPOINT))
    ds = objects[("DaemonSet", "kube-system", "kube-proxy")]
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "mirror.example/k8s/kube-proxy:v1.37.1"
    assert pod["hostNetwork"] is True and pod["serviceAccountName"] == "kube-proxy"
    assert ds["spec"]["selector"]["matchLabels"] == ds["spec"]["template"]["metadata"]["labels"]
    cm = objects[("ConfigMap", "kube-system", "kube-proxy")]["data"]
    conf = yaml.safe_load(cm["config.conf"])
    assert conf["clusterCIDR"] == "10.32.0.0/12"
    assert conf["clientConnection"]["kubeconfig"] == "/var/lib/kube-proxy/kubeconfig.conf"
    kubeconfig = yaml.safe_load(cm["kubeconfig.conf"])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == ENDPOINT
    assert kubeconfig["users"][0]["user"]["tokenFile"].endswith("serviceaccount/token")
    crb = objects[("ClusterRoleBinding", "", "kubeadm:node-proxier")]
    assert crb["roleRef"]["name"] == "system:node-proxier"
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "kube-proxy",
                                "namespace": "kube-system"}]


def test_coredns_serves_the_cluster_domain_at_the_first_dns_ip() -> None:
    s = spec({"coreDNS": {}}, dnsServiceIPs=["10.96.0.10"], clusterDomain="acme.local")
    objects = by_key(bootstrap_objects(s, CA.cert_pem, ENDPOINT))
    svc = objects[("Service", "kube-system", "kube-dns")]
    assert svc["spec"]["clusterIP"] == "10.96.0.10"
    assert {(p["port"], p["protocol"]) for p in svc["spec"]["ports"]} == {
        (53, "UDP"), (53, "TCP"), (9153, "TCP")}
    dep = objects[("Deployment", "kube-system", "coredns")]
    assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.k8s.io/coredns/coredns:v1.14.6"
    corefile = objects[("ConfigMap", "kube-system", "coredns")]["data"]["Corefile"]
    assert "kubernetes acme.local in-addr.arpa ip6.arpa {" in corefile
    assert "cluster.local" not in corefile
    role = objects[("ClusterRole", "", "system:coredns")]
    assert {"endpointslices"} <= {r for rule in role["rules"] for r in rule["resources"]}


def test_dual_stack_dns_service_lists_both_ips() -> None:
    s = spec({"coreDNS": {}}, serviceCidrs=["10.96.0.0/16", "fd00:10:96::/112"],
             podCidrs=["10.244.0.0/16", "fd00:10:244::/56"],
             dnsServiceIPs=["10.96.0.10", "fd00:10:96::a"])
    svc = by_key(bootstrap_objects(s, CA.cert_pem, ENDPOINT))[("Service", "kube-system",
                                                               "kube-dns")]
    assert svc["spec"]["clusterIPs"] == ["10.96.0.10", "fd00:10:96::a"]
    assert svc["spec"]["ipFamilyPolicy"] == "PreferDualStack"
