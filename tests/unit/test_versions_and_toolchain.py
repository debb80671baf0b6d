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


# ------------------------------------------------ addons: Konnectivity, metrics-server


def test_addon_versions_are_pinned_and_overridable() -> None:
    from haku.dev.versions import konnectivity_image_names, metrics_server_image_name

    v = Versions.from_env({})
    assert (v.konnectivity, v.metrics_server) == ("v0.36.0", "v0.8.0")
    v = Versions.from_env({"HAKU_KONNECTIVITY_VERSION": "v0.35.1",
                           "HAKU_METRICS_SERVER_VERSION": "v0.7.2"})
    assert (v.konnectivity, v.metrics_server) == ("v0.35.1", "v0.7.2")
    with pytest.raises(VersionError, match="konnectivity"):
        Versions.from_env({"HAKU_KONNECTIVITY_VERSION": "0.36"})
    assert konnectivity_image_names("v0.36.0") == (
        "registry.k8s.io/kas-network-proxy/proxy-server:v0.36.0",
        "registry.k8s.io/kas-network-proxy/proxy-agent:v0.36.0")
    assert metrics_server_image_name("v0.8.0") == \
        "registry.k8s.io/metrics-server/metrics-server:v0.8.0"


def test_addon_components() -> None:
    table = toolchain.components(Versions())
    assert table["konnectivity"].binaries == ("proxy-server", "proxy-agent")
    assert table["konnectivity"].version == "v0.36.0"
    assert table["metrics-server"].binaries == ("metrics-server",)
    assert toolchain.MODULES["metrics-server"] == "sigs.k8s.io/metrics-server"
    assert "konnectivity" not in toolchain.MODULES  # the proxy refuses its module path


def test_third_party_dir_is_beside_the_repository_unless_overridden(tmp_path) -> None:
    from pathlib import Path

    repo = Path(toolchain.__file__).resolve().parents[3]
    assert toolchain.third_party_dir({}) == repo.parent / "shared" / "third_party"
    assert toolchain.third_party_dir({"HAKU_THIRD_PARTY_DIR": str(tmp_path)}) == tmp_path


def test_a_missing_tarball_names_both_ways_out(tmp_path) -> None:
    env = {"HAKU_THIRD_PARTY_DIR": str(tmp_path)}
    with pytest.raises(toolchain.ToolchainError) as e:
        toolchain.source_tarball("konnectivity", "v0.36.0", env)
    assert "apiserver-network-proxy-v0.36.0.tar.gz" in str(e.value)
    assert str(tmp_path) in str(e.value) and "HAKU_THIRD_PARTY_DIR" in str(e.value)
    (tmp_path / "apiserver-network-proxy-v0.36.0.tar.gz").write_bytes(b"x")
    assert toolchain.source_tarball("konnectivity", "v0.36.0", env).is_file()


def test_ensure_fails_before_go_without_the_tarball(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HAKU_THIRD_PARTY_DIR", str(tmp_path / "none"))
    monkeypatch.setattr(toolchain, "GoBuilder", lambda *a, **k: pytest.fail("go was run"))
    with pytest.raises(toolchain.ToolchainError, match="HAKU_THIRD_PARTY_DIR") as e:
        toolchain.ensure(["konnectivity"], Versions(), tmp_path / "cache")
    assert "konnectivity-v0.36.0" in str(e.value)  # where a build would be cached


def test_a_cached_konnectivity_needs_no_tarball_and_no_go(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HAKU_THIRD_PARTY_DIR", str(tmp_path / "none"))
    monkeypatch.setattr(toolchain, "GoBuilder", lambda *a, **k: pytest.fail("go was run"))
    c = toolchain.components(Versions())["konnectivity"]
    d = c.directory(tmp_path)
    d.mkdir(parents=True)
    for b in c.binaries:
        (d / b).write_text("x")
    (d / toolchain.STAMP).write_text("{}")
    assert toolchain.ensure(["konnectivity"], Versions(), tmp_path) == {"konnectivity": d}
    toolchain.check_available(["konnectivity"], Versions(), tmp_path)


def test_metrics_server_ldflags_follow_its_makefile() -> None:
    flags = toolchain.metrics_server_ldflags("v0.8.0", "d66279c",
                                             datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    pkg = "k8s.io/client-go/pkg/version"
    assert f"-X {pkg}.gitVersion=v0.8.0" in flags
    assert f"-X {pkg}.gitCommit=d66279c" in flags
    assert f"-X {pkg}.buildDate=2026-01-02T03:04:05Z" in flags
    assert "gitCommit" not in toolchain.metrics_server_ldflags(
        "v0.8.0", "", datetime(2026, 1, 2, tzinfo=UTC))


def test_extract_tarball_returns_its_top_directory(tmp_path) -> None:
    import io
    import tarfile

    tarball = tmp_path / "src.tar.gz"
    with tarfile.open(tarball, "w:gz") as t:
        data = b"module x\n"
        info = tarfile.TarInfo("proj-v1/go.mod")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    into = tmp_path / "out"
    into.mkdir()
    top = toolchain.extract_tarball(tarball, into)
    assert top == into / "proj-v1" and (top / "go.mod").read_text() == "module x\n"
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(toolchain.ToolchainError, match="cannot unpack"):
        toolchain.extract_tarball(tmp_path / "bad.tar.gz", into)
