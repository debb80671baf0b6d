"""The addon images (Konnectivity, metrics-server): names, layouts, where they go, and that
only what is built already reaches a new worker."""

from pathlib import Path

import pytest

from haku.dev import addons, images, toolchain
from haku.dev.layout import Layout
from haku.dev.versions import Versions

V = Versions()
SERVER = "registry.k8s.io/kas-network-proxy/proxy-server:v0.36.0"
AGENT = "registry.k8s.io/kas-network-proxy/proxy-agent:v0.36.0"
METRICS = "registry.k8s.io/metrics-server/metrics-server:v0.8.0"


def fake_build(cache: Path, name: str) -> Path:
    c = toolchain.components(V)[name]
    d = c.directory(cache)
    d.mkdir(parents=True)
    for b in c.binaries:
        (d / b).write_bytes(b.encode())
    (d / toolchain.STAMP).write_text("{}")
    return d


def test_konnectivity_images_are_upstreams_layout(tmp_path: Path) -> None:
    for b in ("proxy-server", "proxy-agent"):
        (tmp_path / b).write_bytes(b.encode())
    server, agent = images.konnectivity_images(tmp_path, "v0.36.0")
    assert (server.name, agent.name) == (SERVER, AGENT)
    assert server.entrypoint == ("/proxy-server",) and agent.entrypoint == ("/proxy-agent",)
    assert server.user == agent.user == "65532:65532"  # distroless static:nonroot
    assert server.files[0].path == "/proxy-server" and server.files[0].mode == 0o755
    assert server.files[0].source == tmp_path / "proxy-server"
    with pytest.raises(images.ImageBuildError, match="haku dev addons konnectivity"):
        images.konnectivity_images(tmp_path / "missing", "v0.36.0")


def test_metrics_server_image_is_upstreams_layout(tmp_path: Path) -> None:
    (tmp_path / "metrics-server").write_bytes(b"ms")
    spec = images.metrics_server_image(tmp_path / "metrics-server", "v0.8.0")
    assert spec.name == METRICS
    assert spec.entrypoint == ("/metrics-server",) and spec.cmd == ()
    assert spec.user == "65534:65534"  # upstream's USER 65534 (nobody)
    with pytest.raises(images.ImageBuildError, match="haku dev addons metrics-server"):
        images.metrics_server_image(tmp_path / "none", "v0.8.0")


def test_where_each_image_goes() -> None:
    assert addons.admin_image_names(V) == [SERVER]
    assert addons.worker_image_names(V) == [AGENT, METRICS]
    assert addons.admin_image_names(V, ["metrics-server"]) == []
    assert addons.worker_image_names(V, ["metrics-server"]) == [METRICS]


def test_names_default_to_all_and_unknown_ones_fail() -> None:
    assert addons.check_names([]) == ["konnectivity", "metrics-server"]
    assert addons.check_names(["metrics-server", "metrics-server"]) == ["metrics-server"]
    with pytest.raises(addons.AddonsError, match="known: konnectivity, metrics-server"):
        addons.check_names(["konnectivity", "dashboard"])


def test_a_new_worker_gets_only_what_is_built(tmp_path: Path) -> None:
    assert addons.cached_worker_specs(V, tmp_path) == []
    fake_build(tmp_path, "metrics-server")
    assert [s.name for s in addons.cached_worker_specs(V, tmp_path)] == [METRICS]
    fake_build(tmp_path, "konnectivity")
    assert [s.name for s in addons.cached_worker_specs(V, tmp_path)] == [AGENT, METRICS]
    assert set(addons.built(V, tmp_path)) == {"konnectivity", "metrics-server"}


def test_ensure_refuses_to_import_without_a_cluster(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(toolchain, "ensure", lambda *a, **k: pytest.fail("built"))
    with pytest.raises(addons.AddonsError, match="haku dev up"):
        addons.ensure(Layout(state_dir=tmp_path / "state"), printer=lambda _: None,
                      cache=tmp_path)


def test_ensure_build_only_writes_the_archives(tmp_path: Path) -> None:
    fake_build(tmp_path, "konnectivity")
    fake_build(tmp_path, "metrics-server")
    lines: list[str] = []
    report = addons.ensure(Layout(state_dir=tmp_path / "state"), [], lines.append,
                           versions=V, cache=tmp_path, import_images=False)
    assert report.built == []  # cached: nothing compiled
    assert sorted(b.name for b in report.archives) == sorted([SERVER, AGENT, METRICS])
    assert all(b.archive.is_file() for b in report.archives)
    assert report.admin == [] and report.workers == {}
