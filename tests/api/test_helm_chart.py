"""Haku's Helm chart (charts/haku) with the real helm (v4, built by `haku dev build helm`).

One source of truth: with its default values the chart renders exactly the objects of
`kubectl apply -k deploy/` (kinds, names, namespaces, specs, the CRDs of its crds/ among them;
Helm's own labels and annotations aside; tests/unit/test_helm_toolchain.py keeps crds/ byte for
byte deploy/crds/), and values change what they name and nothing else. Then on a real
kube-apiserver (an API-only cluster like the tier's, but its own: the chart's cluster-wide
objects have fixed names that the other API tests apply themselves): `helm lint`, `helm
install` (CRDs from crds/, the admission policy enforced), `helm upgrade` with changed values,
`helm uninstall` (the CRDs and the objects in them stay, with the namespace; everything else is
gone). The API tier has no nodes: objects are checked, not pods.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from haku.dev import toolchain
from haku.dev.cluster import DevCluster
from haku.dev.layout import Layout
from tests.api.test_tcp_admission import KAMAJI_SAMPLE
from tests.conftest import TEST_ROOT, shifted

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "haku"
DEPLOY = REPO / "deploy"
NS = "haku-system"  # deploy/'s namespace: the chart goes into the release's
RELEASE = "haku"
# What Helm adds and the comparison with deploy/ leaves out.
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance",
               "app.kubernetes.io/version"}
HELM_ANNOTATIONS = {"helm.sh/resource-policy"}
CRD_NAMES = ("datastores.haku.dev", "tenantcontrolplanes.haku.dev")
TIMEOUT = 120.0

Key = tuple[str, str, str]  # kind, namespace ("" for cluster-scoped objects), name


class Tool:
    """A real binary run with a timeout; ``env`` keeps Helm's state out of the user's home."""

    def __init__(self, binary: Path, env: dict[str, str] | None = None) -> None:
        self.binary = binary
        self.env = {**os.environ, **(env or {})}

    def run(self, *args: str, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.binary), *args], input=stdin, env=self.env,
                                capture_output=True, text=True, timeout=TIMEOUT, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{self.binary.name} {' '.join(args)} failed "
                                 f"({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Tool:
    home = tmp_path_factory.mktemp("helm-home")
    binary = toolchain.ensure(["helm"])["helm"] / "helm"
    return Tool(binary, {"HELM_CACHE_HOME": str(home / "cache"),
                         "HELM_CONFIG_HOME": str(home / "config"),
                         "HELM_DATA_HOME": str(home / "data"),
                         "HELM_NAMESPACE": "", "HELM_KUBECONTEXT": ""})


@pytest.fixture(scope="module")
def kubectl() -> Tool:
    return Tool(toolchain.ensure(["kubernetes"])["kubernetes"] / "kubectl")


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def key(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def without_helm(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without Helm's labels and annotations (empty maps dropped with them)."""
    obj = copy.deepcopy(obj)
    meta = obj["metadata"]
    for field, helms in (("labels", HELM_LABELS), ("annotations", HELM_ANNOTATIONS)):
        kept = {k: v for k, v in (meta.get(field) or {}).items() if k not in helms}
        if kept:
            meta[field] = kept
        else:
            meta.pop(field, None)
    return obj


def by_key(objs: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    table = {key(o): o for o in objs}
    assert len(table) == len(objs), "two objects of the same kind, namespace and name"
    return table


def render(helm: Tool, *args: str, namespace: str = NS) -> dict[Key, dict[str, Any]]:
    """`helm template` of the chart (CRDs included), by key."""
    out = helm.run("template", RELEASE, str(CHART), "--namespace", namespace,
                   "--include-crds", *args).stdout
    return by_key(documents(out))


@pytest.fixture(scope="module")
def deploy_objects(kubectl: Tool) -> dict[Key, dict[str, Any]]:
    """What `kubectl apply -k deploy/` applies: kustomize's own output (images set)."""
    return by_key(documents(kubectl.run("kustomize", str(DEPLOY)).stdout))


@pytest.fixture(scope="module")
def defaults(helm: Tool) -> dict[Key, dict[str, Any]]:
    return render(helm)


# --- one source of truth ------------------------------------------------------------------

def test_lint_is_clean(helm: Tool) -> None:
    result = helm.run("lint", str(CHART), "--strict", "--namespace", NS)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def test_the_packaged_chart_renders_the_same(helm: Tool, tmp_path: Path,
                                             defaults: dict[Key, dict[str, Any]]) -> None:
    out = helm.run("package", str(CHART), "--destination", str(tmp_path)).stdout
    archive = tmp_path / "haku-0.1.0.tgz"
    assert str(archive) in out
    packaged = helm.run("template", RELEASE, str(archive), "--namespace", NS,
                        "--include-crds").stdout
    assert by_key(documents(packaged)) == defaults


def test_defaults_render_deploy(defaults: dict[Key, dict[str, Any]],
                                deploy_objects: dict[Key, dict[str, Any]]) -> None:
    assert sorted(defaults) == sorted(deploy_objects)
    for k, want in deploy_objects.items():
        assert without_helm(defaults[k]) == want, f"{k} differs from deploy/"
    # Helm's labels are on every object the templates make (not on crds/: Helm leaves those),
    # and nowhere in the selectors or the pod template.
    for k, obj in defaults.items():
        labels = set(obj["metadata"].get("labels") or {})
        if k[0] == "CustomResourceDefinition":
            assert not labels & HELM_LABELS
        else:
            assert labels >= HELM_LABELS, k
    deployment = defaults[("Deployment", NS, "haku-operator")]
    assert not set(deployment["spec"]["template"]["metadata"]["labels"]) & HELM_LABELS
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "ghcr.io/haku-dev/haku:0.1.0")


def container(objs: dict[Key, dict[str, Any]], namespace: str = NS) -> dict[str, Any]:
    pod = objs[("Deployment", namespace, "haku-operator")]["spec"]["template"]["spec"]
    c: dict[str, Any] = pod["containers"][0]
    return c


def test_values_change_what_they_name_and_nothing_else(
        helm: Tool, defaults: dict[Key, dict[str, Any]]) -> None:
    got = render(
        helm,
        "--set", "replicaCount=3",
        "--set", "image.tag=0.2.0",
        "--set", "image.repository=registry.example/haku",
        "--set", "leaseDuration=30",
        "--set", "metricsBindAddress=:9090",
        "--set", "defaultDatastoreName=dev-etcd",
        "--set-json", 'tenantNetworks=["192.0.2.0/24","198.51.100.0/24"]',
        "--set", "tenantNetworkPolicy=false",
        "--set-json", 'extraArgs=["--workers=8"]',
        "--set", "resources.limits.memory=1Gi",
        "--set", "priorityClass.value=5000",
        "--set-json", 'admission.allowedRegistries=["registry.example"]',
        "--set-json", 'admission.allowedExternalIPs=["203.0.113.10","10.1.0.0/16"]',
        "--set", "admission.podRules=false",
        "--set-json", 'imagePullSecrets=[{"name":"regcred"}]',
        "--set-json", 'tolerations=[{"key":"infra","operator":"Exists"}]',
        "--set", "nodeSelector.role=infra",
        "--set", "podAnnotations.team=platform",
        "--set", "serviceAccount.annotations.team=platform",
    )
    want = copy.deepcopy(defaults)
    deployment = want[("Deployment", NS, "haku-operator")]
    deployment["spec"]["replicas"] = 3
    template = deployment["spec"]["template"]
    template["metadata"]["annotations"] = {"team": "platform"}
    template["spec"] |= {"imagePullSecrets": [{"name": "regcred"}],
                         "tolerations": [{"key": "infra", "operator": "Exists"}],
                         "nodeSelector": {"role": "infra"}}
    want[("ServiceAccount", NS, "haku-operator")]["metadata"]["annotations"] = {
        "team": "platform"}
    c = container(want)
    c["image"] = "registry.example/haku:0.2.0"
    c["args"] = [a.replace("--lease-duration=15", "--lease-duration=30")
                 .replace("--metrics-bind-address=:8080", "--metrics-bind-address=:9090")
                 for a in c["args"]] + [
        "--default-datastore=dev-etcd", "--tenant-network=192.0.2.0/24",
        "--tenant-network=198.51.100.0/24", "--no-tenant-network-policy", "--workers=8"]
    c["ports"][0]["containerPort"] = 9090
    c["resources"]["limits"]["memory"] = "1Gi"
    want[("Service", NS, "haku-operator-metrics")]["spec"]["ports"][0]["port"] = 9090
    want[("PriorityClass", "", "haku-control-plane")]["value"] = 5000
    want[("ConfigMap", NS, "haku-admission")]["data"] = {
        "allowedRegistries": "registry.example\n",
        "allowedExternalIPs": "203.0.113.10\n10.1.0.0/16\n",
        "podRules": "off"}
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k] == want[k], k
    # The release's namespace goes everywhere deploy/ says haku-system.
    other = render(helm, namespace="haku-operators")
    assert {k[1] for k in other} == {"", "haku-operators"}
    assert "--namespace=haku-operators" in container(other, "haku-operators")["args"]
    binding = other[("ValidatingAdmissionPolicyBinding", "", "haku-tenantcontrolplanes")]
    assert binding["spec"]["paramRef"]["namespace"] == "haku-operators"
    (subject,) = other[("ClusterRoleBinding", "", "haku-operator")]["subjects"]
    assert subject["namespace"] == "haku-operators"
    assert ("Namespace", "", "haku-operators") in other


def test_optional_parts_leave_only_themselves_out(
        helm: Tool, defaults: dict[Key, dict[str, Any]]) -> None:
    got = render(helm, "--set", "namespace.create=false", "--set", "priorityClass.create=false",
                 "--set", "admission.enabled=false", "--set", "metricsBindAddress=0")
    left_out = {("Namespace", "", NS), ("PriorityClass", "", "haku-control-plane"),
                ("ValidatingAdmissionPolicy", "", "haku-tenantcontrolplanes"),
                ("ValidatingAdmissionPolicyBinding", "", "haku-tenantcontrolplanes"),
                ("ConfigMap", NS, "haku-admission"), ("Service", NS, "haku-operator-metrics")}
    assert set(defaults) - set(got) == left_out
    assert set(got) <= set(defaults)
    c = container(got)
    assert "--metrics-bind-address=0" in c["args"]
    assert [p["name"] for p in c["ports"]] == ["health"]


@pytest.mark.parametrize(("args", "namespace", "message"), [
    ((), "default", "Haku goes into a namespace of its own, not default"),
    ((), "kube-system", "not kube-system"),
    # values.schema.json
    (("--set", "replicas=3"), NS, "additional properties 'replicas' not allowed"),
    (("--set", "replicaCount=two"), NS, "at '/replicaCount': got string, want integer"),
    (("--set", "admission.podRules=off"), NS, "at '/admission/podRules': got string"),
    (("--set", "priorityClass.value=2000000000"), NS, "at '/priorityClass/value': maximum"),
    (("--set", "healthProbeBindAddress=0"), NS, "at '/healthProbeBindAddress'"),
    (("--set", "metricsBindAddress=localhost"), NS,
     "'localhost' does not match pattern"),
    # the templates' own checks, for a render without the schema
    (("--skip-schema-validation", "--set", "healthProbeBindAddress=0"), NS,
     "healthProbeBindAddress must serve"),
    (("--skip-schema-validation", "--set", "metricsBindAddress=localhost"), NS,
     '"localhost" is not HOST:PORT or :PORT'),
])
def test_refuses_what_cannot_work(helm: Tool, args: tuple[str, ...], namespace: str,
                                  message: str) -> None:
    result = helm.run("template", RELEASE, str(CHART), "--namespace", namespace, *args,
                      check=False)
    assert result.returncode != 0
    assert message in result.stderr


# --- on a real kube-apiserver -------------------------------------------------------------

@pytest.fixture(scope="module")
def helm_cluster() -> Iterator[DevCluster]:
    """An API-only cluster (etcd + kube-apiserver) of this file's own: state beside the tier's,
    ports 10 above it (and HAKU_TEST_PORT_OFFSET)."""
    if os.geteuid() != 0:
        pytest.fail("the api tier runs real daemons and needs root")
    layout = Layout.api_only(TEST_ROOT / "api-helm")
    ports = layout.ports
    layout = shifted(replace(layout, ports=replace(
        ports, apiserver=ports.apiserver + 10, etcd_client=ports.etcd_client + 10,
        etcd_peer=ports.etcd_peer + 10)))
    cluster = DevCluster(layout, printer=lambda _: None)
    cluster.down(purge=True)
    try:
        cluster.up()
    except BaseException:
        cluster.down()
        raise
    yield cluster
    cluster.down(purge=True)


def get(kubectl: Tool, kubeconfig: Path, kind: str, name: str,
        namespace: str = "") -> dict[str, Any] | None:
    """The object as the API server has it, or None if it does not exist."""
    ns = ["--namespace", namespace] if namespace else []
    result = kubectl.run("--kubeconfig", str(kubeconfig), "get", kind, name, *ns,
                         "--ignore-not-found", "-o", "json", check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip() else None


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not after {timeout:.0f}s: {what}")
        time.sleep(0.2)


KIND_RESOURCES = {  # kubectl's names for the kinds, so no lookup is ambiguous
    "Namespace": "namespaces", "ServiceAccount": "serviceaccounts", "ConfigMap": "configmaps",
    "Service": "services", "Deployment": "deployments.apps",
    "ClusterRole": "clusterroles.rbac.authorization.k8s.io",
    "ClusterRoleBinding": "clusterrolebindings.rbac.authorization.k8s.io",
    "Role": "roles.rbac.authorization.k8s.io",
    "RoleBinding": "rolebindings.rbac.authorization.k8s.io",
    "PriorityClass": "priorityclasses.scheduling.k8s.io",
    "ValidatingAdmissionPolicy": "validatingadmissionpolicies.admissionregistration.k8s.io",
    "ValidatingAdmissionPolicyBinding":
        "validatingadmissionpolicybindings.admissionregistration.k8s.io",
    "CustomResourceDefinition": "customresourcedefinitions.apiextensions.k8s.io",
}


def test_install_upgrade_uninstall(helm: Tool, kubectl: Tool, helm_cluster: DevCluster,
                                   defaults: dict[Key, dict[str, Any]]) -> None:
    kc = helm_cluster.layout.admin_kubeconfig
    base = ("--kubeconfig", str(kc), "--namespace", NS)

    def fetch(k: Key) -> dict[str, Any] | None:
        return get(kubectl, kc, KIND_RESOURCES[k[0]], k[2], k[1])

    for name in CRD_NAMES:  # a cluster of its own: nothing of Haku's is there yet
        assert fetch(("CustomResourceDefinition", "", name)) is None

    # install, as docs/helm.md says
    out = helm.run("install", RELEASE, str(CHART), *base, "--create-namespace").stdout
    assert "STATUS: deployed" in out
    status = json.loads(helm.run("status", RELEASE, *base, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed" and status["version"] == 1
    for k, want in defaults.items():
        live = fetch(k)
        assert live is not None, f"{k} was not created"
        if k[0] == "CustomResourceDefinition":
            established = {c["type"]: c["status"] for c in live["status"]["conditions"]}
            assert established.get("Established") == "True", k
            assert live["spec"]["versions"][0]["schema"] == want["spec"]["versions"][0]["schema"]
            continue
        labels = live["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", k
        assert live["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE, k
        for field in ("data", "rules", "roleRef", "subjects", "value"):  # no server defaults
            if field in want:
                assert live[field] == want[field], (k, field)
    namespace = fetch(("Namespace", "", NS))
    assert namespace is not None
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    deployment = fetch(("Deployment", NS, "haku-operator"))
    assert deployment is not None and deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "ghcr.io/haku-dev/haku:0.1.0")

    # The admission policy the chart installed is enforced, with the chart's settings.
    tenant_ns = "helm-tenants"
    kubectl.run("--kubeconfig", str(kc), "create", "namespace", tenant_ns)

    def tenant(**registry: str) -> str:
        doc = copy.deepcopy(KAMAJI_SAMPLE)
        doc["metadata"] = {"name": "tenant", "namespace": tenant_ns}
        if registry:
            doc["spec"]["controlPlane"]["deployment"]["registrySettings"] = registry
        return json.dumps(doc)

    def refusal(doc: str) -> str | None:
        result = kubectl.run("--kubeconfig", str(kc), "create", "--dry-run=server", "-f", "-",
                             stdin=doc, check=False)
        return None if result.returncode == 0 else result.stderr

    denied = "ValidatingAdmissionPolicy 'haku-tenantcontrolplanes'"
    eventually(lambda: denied in (refusal(tenant(registry="ghcr.io/example")) or ""),
               "the chart's policy refuses an image from a registry not allowed")
    assert refusal(tenant()) is None  # registry.k8s.io, allowed by the chart's defaults
    # A DataStore, so uninstall can show the CRDs keep what is in them.
    kubectl.run("--kubeconfig", str(kc), "apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "haku.dev/v1alpha1", "kind": "DataStore", "metadata": {"name": "kept"},
        "spec": {"driver": "PostgreSQL", "endpoints": ["127.0.0.1:1"],
                 "basicAuth": {"username": {"content": "dQ=="},
                               "password": {"content": "cA=="}}}}))

    # upgrade with changed values
    generation = deployment["metadata"]["generation"]
    out = helm.run("upgrade", RELEASE, str(CHART), *base, "--set", "replicaCount=3",
                   "--set", "image.tag=0.1.1", "--set", "leaseDuration=20",
                   "--set-json", 'admission.allowedRegistries=["registry.k8s.io","ghcr.io"]'
                   ).stdout
    assert "STATUS: deployed" in out and "REVISION: 2" in out
    deployment = fetch(("Deployment", NS, "haku-operator"))
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 3
    assert deployment["metadata"]["generation"] > generation
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "ghcr.io/haku-dev/haku:0.1.1"
    assert "--lease-duration=20" in c["args"] and "--lease-duration=15" not in c["args"]
    params = fetch(("ConfigMap", NS, "haku-admission"))
    assert params is not None
    assert params["data"]["allowedRegistries"] == "registry.k8s.io\nghcr.io\n"
    eventually(lambda: refusal(tenant(registry="ghcr.io/example")) is None,
               "the upgraded settings allow ghcr.io")
    history = json.loads(helm.run("history", RELEASE, *base, "-o", "json").stdout)
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"),
                                                                (2, "deployed")]

    # uninstall: the CRDs (with what is in them) and the namespace stay, the rest goes
    out = helm.run("uninstall", RELEASE, *base).stdout
    assert "uninstalled" in out
    for name in CRD_NAMES:
        assert fetch(("CustomResourceDefinition", "", name)) is not None, name
    assert get(kubectl, kc, "datastores.haku.dev", "kept") is not None
    assert fetch(("Namespace", "", NS)) is not None  # helm.sh/resource-policy: keep
    gone = [k for k in defaults if k[0] not in ("CustomResourceDefinition", "Namespace")]
    assert len(gone) == len(defaults) - 3
    for k in gone:
        assert fetch(k) is None, f"{k} is still there after helm uninstall"
    result = helm.run("status", RELEASE, *base, check=False)
    assert result.returncode != 0 and "not found" in result.stderr
    # With the policy gone nothing judges TenantControlPlanes: the registry is not checked.
    eventually(lambda: refusal(tenant(registry="elsewhere.example")) is None,
               "no policy after uninstall")

    # Installed again over what uninstall kept: the namespace is still the release's, and
    # the CRDs already there are left as they are.
    helm.run("install", RELEASE, str(CHART), *base, "--create-namespace")
    assert fetch(("Deployment", NS, "haku-operator")) is not None
    helm.run("uninstall", RELEASE, *base)

    # From `kubectl apply -k deploy/` to the chart (docs/helm.md): Helm refuses objects it did
    # not make, and adopts them with --take-ownership.
    kubectl.run("--kubeconfig", str(kc), "apply", "-k", str(DEPLOY))
    result = helm.run("install", RELEASE, str(CHART), *base, check=False)
    assert result.returncode != 0 and "exists and cannot be imported" in result.stderr
    helm.run("install", RELEASE, str(CHART), *base, "--take-ownership", "--force-conflicts")
    for k in gone:
        live = fetch(k)
        assert live is not None
        assert live["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm", k
    helm.run("uninstall", RELEASE, *base)
    for k in gone:
        assert fetch(k) is None, f"{k} is still there after helm uninstall"
