from datetime import UTC, datetime

import pytest

from haku.dev import toolchain
from haku.dev.versions import VersionError, Versions, etcd_image_tag, staging_version

KUBERNETES_GOMOD = """module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tgithub.com/blang/semver/v4 v4.0.0
\tk8s.io/api v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/apimachinery => ./staging/src/k8s.io/apimachinery
\tk8s.io/streaming => ./staging/src/k8s.io/streaming
)
"""


def test_staging_modules_are_replaced_with_the_published_versions() -> None:
    gomod = toolchain.kubernetes_consumer_gomod(KUBERNETES_GOMOD, "v1.37.2")
    lines = gomod.splitlines()
    assert "go 1.26.0" in lines
    assert "godebug default=go1.26" in lines
    assert "require k8s.io/kubernetes v1.37.2" in lines
    assert "replace k8s.io/api => k8s.io/api v0.37.2" in lines
    assert "replace k8s.io/streaming => k8s.io/streaming v0.37.2" in lines
    assert sum(line.startswith("replace ") for line in lines) == 3
    assert "blang" not in gomod


def test_a_gomod_without_staging_modules_is_an_error() -> None:
    with pytest.raises(toolchain.ToolchainError, match="no staging modules"):
        toolchain.kubernetes_consumer_gomod("module x\n\ngo 1.26.0\n", "v1.37.2")


def test_ldflags_stamp_both_version_packages() -> None:
    flags = toolchain.kubernetes_ldflags("v1.36.3", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    for pkg in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        assert f"-X {pkg}.gitVersion=v1.36.3" in flags
        assert f"-X {pkg}.gitMinor=36" in flags
        assert f"-X {pkg}.buildDate=2026-01-02T03:04:05Z" in flags


def test_versions_are_validated_and_overridable() -> None:
    v = Versions.from_env({"HAKU_KUBERNETES_VERSION": "v1.36.3"})
    assert v.kubernetes == "v1.36.3"
    assert Versions.from_env({}).kubernetes.startswith("v1.")
    with pytest.raises(VersionError, match=r"vMAJOR\.MINOR\.PATCH"):
        Versions.from_env({"HAKU_KUBERNETES_VERSION": "1.36"})
    with pytest.raises(VersionError):
        v.with_kubernetes("latest")
    assert staging_version("v1.37.2") == "v0.37.2"
    assert etcd_image_tag("v3.7.3") == "3.7.3-0"


def test_nearest_versions_prefers_the_same_minor() -> None:
    served = ["v1.35.4", "v1.36.1", "v1.36.3", "v1.37.0-rc.1", "v1.37.2"]
    assert toolchain.nearest_versions(served, "v1.36.9") == ["v1.36.1", "v1.36.3"]
    assert toolchain.nearest_versions(served, "v1.99.0", count=2) == ["v1.36.3", "v1.37.2"]


def test_a_component_counts_as_built_only_with_its_stamp(tmp_path) -> None:
    c = toolchain.components(Versions())["etcd"]
    d = c.directory(tmp_path)
    d.mkdir(parents=True)
    for b in c.binaries:
        (d / b).write_text("x")
    assert not c.is_built(tmp_path)  # an interrupted build leaves no stamp
    (d / toolchain.STAMP).write_text("{}")
    assert c.is_built(tmp_path)
    (d / "etcdctl").unlink()
    assert not c.is_built(tmp_path)


def test_cache_root_honours_overrides(tmp_path) -> None:
    assert toolchain.cache_root({"HAKU_CACHE": str(tmp_path)}) == tmp_path
    assert toolchain.cache_root({"XDG_CACHE_HOME": "/c"}).as_posix() == "/c/haku"
