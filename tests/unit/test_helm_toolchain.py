"""Helm (for charts/haku) is one more cached upstream build: pinned in versions.py, built from
helm.sh/helm/v4 as upstream's Makefile builds a tag, against a stand-in ``go`` here; and the
chart's CRDs and versions stay deploy/'s (the chart's objects are compared with the real helm
in tests/api/test_helm_chart.py)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from haku import __version__
from haku.dev import toolchain
from haku.dev.versions import HELM_VERSION, VersionError, Versions

from .fakes import ensure_cached_without_go, go_that_must_not_run, on_path, script

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "haku"
DEPLOY = REPO / "deploy"


def test_helm_is_pinned_and_overridable() -> None:
    assert HELM_VERSION == "v4.3.1"
    c = toolchain.components(Versions())["helm"]
    assert (c.name, c.version, c.binaries) == ("helm", "v4.3.1", ("helm",))
    assert c.directory(Path("/c")) == Path("/c/bin/helm-v4.3.1")
    assert Versions.from_env({"HAKU_HELM_VERSION": "v4.3.0"}).helm == "v4.3.0"
    with pytest.raises(VersionError, match=r"helm version '4\.3'"):
        Versions.from_env({"HAKU_HELM_VERSION": "4.3"})
    assert toolchain.MODULES["helm"] == "helm.sh/helm/v4"
    assert "HAKU_HELM_VERSION" in toolchain.VERSION_SETTINGS["helm.sh/helm/v4"]


def test_helm_ldflags_are_upstreams_for_a_tag() -> None:
    pkg = "helm.sh/helm/v4/internal/version"
    assert toolchain.helm_ldflags("v4.3.1", "abc123") == (
        f"-w -s -X {pkg}.version=v4.3.1 -X {pkg}.metadata= -X {pkg}.gitCommit=abc123 "
        f"-X {pkg}.gitTreeState=clean")
    assert "gitCommit" not in toolchain.helm_ldflags("v4.3.1", "")


def test_helm_builds_from_the_module_proxy_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    on_path(monkeypatch, bin_dir)
    info = tmp_path / "v4.3.1.info"
    info.write_text(json.dumps({"Version": "v4.3.1", "Origin": {"Hash": "f00d"}}))
    gomod = tmp_path / "v4.3.1.mod"
    gomod.write_text("module helm.sh/helm/v4\n\ngo 1.26.0\n")
    download = json.dumps({"Path": "helm.sh/helm/v4", "Version": "v4.3.1",
                           "Info": str(info), "GoMod": str(gomod)})
    # Records each call; `go build -o FILE` writes FILE.
    script(bin_dir, "go", f"""
printf '%s\\n' "$*" >> {calls}
case "$1" in
  mod) echo '{download}' ;;
  build) while [ $# -gt 0 ]; do [ "$1" = -o ] && {{ echo built > "$2"; }}; shift; done ;;
esac
""")
    root = tmp_path / "cache"
    built = toolchain.ensure(["helm"], Versions(), root, progress=lambda _: None)
    assert built == {"helm": root / "bin" / "helm-v4.3.1"}
    assert (built["helm"] / "helm").read_text() == "built\n"
    stamp = json.loads((built["helm"] / toolchain.STAMP).read_text())
    assert stamp["component"] == "helm" and stamp["version"] == "v4.3.1"
    lines = calls.read_text().splitlines()
    assert lines[0] == "mod download -json helm.sh/helm/v4@v4.3.1"
    assert lines[1] == "get helm.sh/helm/v4@v4.3.1"
    build = shlex.split(lines[2].replace(
        toolchain.helm_ldflags("v4.3.1", "f00d"), "LDFLAGS"))
    assert build[:4] == ["build", "-v", "-trimpath", "-ldflags"]
    assert build[4] == "LDFLAGS" and build[-1] == "helm.sh/helm/v4/cmd/helm"
    assert len(lines) == 3

    # Warm: go is not run again.
    marker = tmp_path / "go-ran"
    go_that_must_not_run(bin_dir, marker)
    assert toolchain.ensure(["helm"], Versions(), root, progress=pytest.fail) == built
    assert not marker.exists()


def test_a_cached_helm_needs_no_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, marker = ensure_cached_without_go(tmp_path, monkeypatch, ["helm"], Versions())
    assert toolchain.ensure(["helm"], Versions(), root)["helm"] == root / "bin" / "helm-v4.3.1"
    assert not marker.exists()


def test_chart_crds_are_deploys_byte_for_byte() -> None:
    names = sorted(p.name for p in (DEPLOY / "crds").glob("*.yaml"))
    assert names and names == sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    for name in names:
        assert (CHART / "crds" / name).read_bytes() == (DEPLOY / "crds" / name).read_bytes(), (
            f"charts/haku/crds/{name} differs from deploy/crds/{name}: copy it over")


def test_chart_app_version_is_the_deployed_image_tag() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (image,) = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["images"]
    assert chart["appVersion"] == image["newTag"] == __version__
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == image["name"]
    assert values["image"]["tag"] == ""  # the appVersion
