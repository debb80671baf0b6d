"""Two Kubernetes releases side by side in the dev cluster (issue 14, upgrades): the previous
release the tooling offers, which images of a release go where, the skew a worker's kubelet
may have, and which release a new worker runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haku import cli
from haku.api import tenantcontrolplane as api
from haku.dev import images, oci, releases, toolchain
from haku.dev import worker as workers
from haku.dev.layout import Layout
from haku.dev.versions import (
    KUBERNETES_VERSION,
    PREVIOUS_KUBERNETES_VERSION,
    VersionError,
    Versions,
    kubelet_skew_problem,
    offered_kubernetes_versions,
    parse_semver,
)
from haku.dev.worker_config import worker_paths

V = Versions()


def fake_kubernetes(cache: Path, version: str) -> Path:
    """A cached kubernetes build of ``version``: its stamp and one file per binary."""
    c = toolchain.components(V.with_kubernetes(version))["kubernetes"]
    d = c.directory(cache)
    d.mkdir(parents=True)
    for b in c.binaries:
        (d / b).write_bytes(f"{b} {version}".encode())
    (d / toolchain.STAMP).write_text("{}")
    return d


@pytest.fixture
def simple_kube_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """kube-proxy's image without the host's iptables (test_images covers that layout)."""
    def image(binary: Path, tag: str, root: Path = Path("/")) -> oci.ImageSpec:
        path = "/usr/local/bin/kube-proxy"
        return oci.ImageSpec(name=f"registry.k8s.io/kube-proxy:{tag}", entrypoint=(path,),
                             files=(oci.LayerFile(path, source=binary),))
    monkeypatch.setattr(images, "kube_proxy_image", image)


def test_the_previous_release_is_an_older_supported_minor() -> None:
    major, minor, _ = parse_semver(PREVIOUS_KUBERNETES_VERSION)
    assert (major, minor) in api.SUPPORTED_MINORS
    assert api.version_problem(PREVIOUS_KUBERNETES_VERSION) is None
    current = parse_semver(KUBERNETES_VERSION)
    assert (major, minor) < current[:2]  # a minor before: an upgrade, not a patch
    assert (major, minor + 1) == current[:2]  # one minor at a time, as upgrades go


def test_offered_versions_are_the_previous_then_the_current() -> None:
    assert offered_kubernetes_versions() == (PREVIOUS_KUBERNETES_VERSION, KUBERNETES_VERSION)
    assert offered_kubernetes_versions(PREVIOUS_KUBERNETES_VERSION) == (
        PREVIOUS_KUBERNETES_VERSION,)
    with pytest.raises(VersionError):
        offered_kubernetes_versions("1.37")


@pytest.mark.parametrize(("kubelet", "apiserver", "problem"), [
    ("v1.36.3", "v1.36.3", None),
    ("v1.36.3", "v1.37.2", None),  # an older kubelet after its tenant's upgrade
    ("v1.37.9", "v1.37.2", None),  # the policy is by minor
    ("v1.34.0", "v1.37.2", None),  # three minors older
    ("v1.33.0", "v1.37.2", "more than 3 minor versions older"),
    ("v1.37.2", "v1.36.3", "newer than the tenant's kube-apiserver v1.36.3"),
    ("v2.37.2", "v1.37.2", "differ in major version"),
])
def test_kubelet_skew(kubelet: str, apiserver: str, problem: str | None) -> None:
    got = kubelet_skew_problem(kubelet, apiserver)
    assert got is None if problem is None else problem in (got or "")


def test_versions_default_to_the_offered_ones_and_must_be_supported() -> None:
    assert releases.check_versions([], "v1.37.2") == ["v1.36.3", "v1.37.2"]
    assert releases.check_versions(["v1.36.3", "v1.36.3"], "v1.37.2") == ["v1.36.3"]
    assert releases.check_versions(["v1.36.0"], "v1.37.2") == ["v1.36.0"]
    with pytest.raises(releases.ReleasesError, match=r"v1\.35\.4 is not a version this Haku "
                       r"runs \(supported: v1\.36\.x, v1\.37\.x\)"):
        releases.check_versions(["v1.36.3", "v1.35.4"], "v1.37.2")
    with pytest.raises(VersionError, match=r"vMAJOR\.MINOR\.PATCH"):
        releases.check_versions(["1.36.3"], "v1.37.2")


def test_where_the_images_of_a_release_go(tmp_path: Path, simple_kube_proxy: None) -> None:
    assert releases.admin_image_names("v1.36.3") == [
        "registry.k8s.io/kube-apiserver:v1.36.3",
        "registry.k8s.io/kube-controller-manager:v1.36.3",
        "registry.k8s.io/kube-scheduler:v1.36.3",
    ]
    assert releases.worker_image_names("v1.36.3") == ["registry.k8s.io/kube-proxy:v1.36.3"]
    d = fake_kubernetes(tmp_path, "v1.36.3")
    specs = images.release_image_specs(d, "v1.36.3")
    assert [s.name for s in specs] == (releases.admin_image_names("v1.36.3")
                                       + releases.worker_image_names("v1.36.3"))
    assert specs[0].files[0].source == d / "kube-apiserver"
    assert specs[0].entrypoint == ("/usr/local/bin/kube-apiserver",)


def test_a_new_worker_runs_its_tenants_release_unless_told() -> None:
    assert releases.worker_versions(None, "v1.36.3").kubernetes == "v1.36.3"
    assert releases.worker_versions(None, None).kubernetes == KUBERNETES_VERSION
    chosen = V.with_kubernetes("v1.36.3")
    assert releases.worker_versions(chosen, "v1.37.2") is chosen  # an override stays


def test_ensure_refuses_to_import_without_a_cluster(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(toolchain, "ensure", lambda *a, **k: pytest.fail("built"))
    with pytest.raises(releases.ReleasesError, match="haku dev up"):
        releases.ensure(Layout(state_dir=tmp_path / "state"), ["v1.36.3"],
                        printer=lambda _: None, cache=tmp_path)


def test_ensure_writes_the_archives_once(tmp_path: Path, simple_kube_proxy: None,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fake_kubernetes(tmp_path, "v1.36.3")
    monkeypatch.setattr(toolchain, "GoBuilder", lambda *a, **k: pytest.fail("go ran"))
    lines: list[str] = []
    report = releases.ensure(Layout(state_dir=tmp_path / "state"), ["v1.36.3"], lines.append,
                             cache=tmp_path, import_images=False)
    assert report.versions == ["v1.36.3"] and report.built == []
    assert [b.name for b in report.archives] == (releases.admin_image_names("v1.36.3")
                                                 + releases.worker_image_names("v1.36.3"))
    assert all(b.archive.is_file() for b in report.archives)
    assert any("kubernetes v1.36.3 images" in line for line in lines)
    mtimes = [b.archive.stat().st_mtime_ns for b in report.archives]
    again = releases.ensure(Layout(state_dir=tmp_path / "state"), ["v1.36.3"], lines.append,
                            cache=tmp_path, import_images=False)
    assert [b.archive.stat().st_mtime_ns for b in again.archives] == mtimes
    assert [b.digest for b in again.archives] == [b.digest for b in report.archives]


def test_ensure_says_it_builds_a_release_that_is_not_cached(
        tmp_path: Path, simple_kube_proxy: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def build(names: list[str], versions: Versions, root: Path,
              progress: object = None) -> dict[str, Path]:
        assert names == ["kubernetes"] and versions.kubernetes == "v1.36.3"
        return {"kubernetes": fake_kubernetes(root, versions.kubernetes)}
    monkeypatch.setattr(toolchain, "ensure", build)
    lines: list[str] = []
    report = releases.ensure(Layout(state_dir=tmp_path / "state"), ["v1.36.3"], lines.append,
                             cache=tmp_path, import_images=False)
    assert report.built == ["v1.36.3"]
    assert lines[0].startswith("kubernetes v1.36.3 is not built yet: building it")


def test_a_new_worker_gets_the_newer_kube_proxy_that_is_built(
        tmp_path: Path, simple_kube_proxy: None) -> None:
    older = V.with_kubernetes(PREVIOUS_KUBERNETES_VERSION)
    assert releases.upgrade_kube_proxy_specs(older, tmp_path) == []  # nothing built
    fake_kubernetes(tmp_path, KUBERNETES_VERSION)
    assert [s.name for s in releases.upgrade_kube_proxy_specs(older, tmp_path)] == [
        f"registry.k8s.io/kube-proxy:{KUBERNETES_VERSION}"]
    fake_kubernetes(tmp_path, PREVIOUS_KUBERNETES_VERSION)  # never an older one
    assert releases.upgrade_kube_proxy_specs(V, tmp_path) == []


def test_the_kubelet_version_is_recorded_and_listed(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    layout = Layout(state_dir=tmp_path)
    paths = worker_paths(layout, 1)
    paths.root.mkdir(parents=True)
    w = workers.Worker(name="w1", index=1, tenant="tenants/old", node_name="old-w1",
                       endpoint="10.245.0.1:31443", address="10.245.1.1",
                       pod_cidr="10.246.1.0/24", netns="haku-w1", host_link="hkw1",
                       cgroup="/haku-w1", kubernetes="v1.36.3",
                       created="2026-01-01T00:00:00+00:00", state="ready")
    workers._save(paths, w)
    assert json.loads(paths.record.read_text())["kubernetes"] == "v1.36.3"
    assert workers.status(layout)[0]["kubelet"] == "v1.36.3"
    assert cli.main(["dev", "worker", "list", "--state-dir", str(tmp_path)]) == 0
    assert "kubelet v1.36.3" in capsys.readouterr().out


def test_command_lines() -> None:
    args = cli.parser().parse_args(["dev", "images", "v1.36.3", "--build-only"])
    assert args.versions == ["v1.36.3"] and args.build_only and args.fn is cli.cmd_images
    assert cli.parser().parse_args(["dev", "images"]).versions == []
    add = cli.parser().parse_args(["dev", "worker", "add", "t/a"])
    assert add.kubernetes_version is None  # the tenant's own release
    add = cli.parser().parse_args(["dev", "worker", "add", "t/a", "--kubernetes-version",
                                   "v1.36.3"])
    assert add.kubernetes_version == "v1.36.3"


def test_images_command_without_a_cluster_is_one_clear_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["dev", "images", "v1.36.3", "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith("haku: the admin cluster at") and "haku dev up" in err
    code = cli.main(["dev", "images", "v1.35.0", "--state-dir", str(tmp_path)])
    assert code == 1 and "not a version this Haku runs" in capsys.readouterr().err


def test_the_release_a_tenants_new_worker_runs() -> None:
    def tcp(spec: str, running: str | None = None) -> dict[str, object]:
        obj: dict[str, object] = {"spec": {"kubernetes": {"version": spec}}}
        if running is not None:
            obj["status"] = {"kubernetesResources": {"version": {"version": running}}}
        return obj
    assert releases.tenant_version(tcp("v1.36.3")) == "v1.36.3"
    assert releases.tenant_version(tcp("v1.37.2", "v1.37.2")) == "v1.37.2"
    # mid-upgrade the old control plane still serves: never a kubelet newer than it
    assert releases.tenant_version(tcp("v1.37.2", "v1.36.3")) == "v1.36.3"
    assert releases.tenant_version(tcp("v1.37.2", "")) == "v1.37.2"
    assert releases.tenant_version({}) == ""


def test_served_version_reads_what_the_api_server_says(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: dict[str, object] = {}

    def get(endpoint: str, timeout: float, path: str = "") -> object:
        assert (endpoint, path) == ("10.245.0.1:31443", "/version")
        return answers["got"]
    monkeypatch.setattr(workers, "_cluster_info", get)
    answers["got"] = (200, {"gitVersion": "v1.36.3", "major": "1", "minor": "36"})
    assert workers.served_version("10.245.0.1:31443") == "v1.36.3"
    for got in ((403, {"message": "forbidden"}), "10.245.0.1:31443 does not answer",
                (200, {"gitVersion": "v1.36.3-dirty"})):
        answers["got"] = got
        assert workers.served_version("10.245.0.1:31443") is None
