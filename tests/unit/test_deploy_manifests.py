"""deploy/: the CRDs and the admission policy are the package's, the RBAC is least-privilege,
the pod is locked down."""

from pathlib import Path
from typing import Any

import yaml

from haku.api import crds, policies

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CRD_SOURCE = Path(crds.__file__).parent


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def test_deploy_crds_are_the_packaged_ones_byte_for_byte() -> None:
    packaged = sorted(p.name for p in CRD_SOURCE.glob("*.yaml"))
    assert packaged == sorted(p.name for p in (DEPLOY / "crds").glob("*.yaml"))
    for name in packaged:
        assert (DEPLOY / "crds" / name).read_bytes() == (CRD_SOURCE / name).read_bytes(), (
            f"deploy/crds/{name} differs from src/haku/api/crds/{name}: copy it over")


def test_deploy_admission_policy_is_the_packaged_one_byte_for_byte() -> None:
    packaged = Path(policies.__file__).parent
    assert sorted(p.name for p in packaged.glob("*.yaml")) == [policies.FILE]
    assert (DEPLOY / policies.FILE).read_bytes() == (packaged / policies.FILE).read_bytes(), (
        f"deploy/{policies.FILE} differs from src/haku/api/policies/{policies.FILE}: "
        "copy it over")
    namespace = next(d for d in docs("namespace.yaml") if d["kind"] == "Namespace")
    assert policies.of_kind("ConfigMap")["metadata"]["namespace"] == (
        namespace["metadata"]["name"])


def test_kustomization_lists_every_file() -> None:
    kustomization = docs("kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    present = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*.yaml")
               if p.name != "kustomization.yaml"}
    assert listed == present


def test_rbac_has_no_wildcards_and_no_dangerous_verbs() -> None:
    rules = [r for d in docs("rbac.yaml") if d["kind"] in ("ClusterRole", "Role")
             for r in d["rules"]]
    assert rules
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
        assert "pods/exec" not in rule["resources"]
        if "nodes" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}
        if "secrets" in rule["resources"]:
            assert "delete" not in rule["verbs"]


def test_operator_pod_is_non_root_read_only_with_a_memory_tmp() -> None:
    deployment = next(d for d in docs("operator.yaml") if d["kind"] == "Deployment")
    assert deployment["metadata"]["labels"]["app.kubernetes.io/name"] == "haku"
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"]["medium"] == "Memory"
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert "--no-install-crds" in container["args"]  # the CRDs come with deploy/


def test_the_deployed_image_is_the_one_haku_builds() -> None:
    from haku import __version__
    from haku.dev.versions import OPERATOR_IMAGE_REPOSITORY, operator_image_name

    (image,) = docs("kustomization.yaml")[0]["images"]
    assert image["name"] == OPERATOR_IMAGE_REPOSITORY
    assert image["newTag"] == __version__
    assert f"{image['name']}:{image['newTag']}" == operator_image_name()
    deployment = next(d for d in docs("operator.yaml") if d["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image["name"]
