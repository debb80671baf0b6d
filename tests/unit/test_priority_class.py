"""deploy/priorityclass.yaml is the PriorityClass the control-plane pods name."""

from pathlib import Path

import yaml

from haku.render import controlplane

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_the_shipped_priority_class_is_the_rendered_one() -> None:
    shipped = yaml.safe_load((DEPLOY / "priorityclass.yaml").read_text())
    assert shipped == controlplane.priority_class()
    assert shipped["metadata"]["name"] == controlplane.DEFAULT_PRIORITY_CLASS
    assert shipped["value"] < 2_000_000_000  # below system-cluster-critical
    assert "priorityclass.yaml" in yaml.safe_load(
        (DEPLOY / "kustomization.yaml").read_text())["resources"]
