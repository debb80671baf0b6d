"""What the conformance run needs (issue 16, first step): e2e.test, agnhost and the CNCF
Distribution registry as cached toolchain components, built against a stand-in ``go`` here (the
real builds are not part of ``make test``: ``make conformance-build``), and the image list
e2e.test prints, parsed."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from haku.dev import conformance, toolchain
from haku.dev.conformance import CONFORMANCE_IMAGES, Image
from haku.dev.versions import (
    KUBERNETES_VERSION,
    REGISTRY_VERSION,
    VersionError,
    Versions,
    staging_version,
)

from .fakes import ensure_cached_without_go, on_path, script

REPO = Path(__file__).resolve().parents[2]
NAMES = ["e2e", "agnhost", "registry"]

# k8s.io/kubernetes' go.mod, shortened: requirements and two staging replaces.
KUBERNETES_GOMOD = """module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)
"""


def test_pins_and_overrides() -> None:
    assert REGISTRY_VERSION == "v3.1.2"
    assert Versions().registry == "v3.1.2"
    assert Versions.from_env({"HAKU_REGISTRY_VERSION": "v3.1.1"}).registry == "v3.1.1"
    with pytest.raises(VersionError, match=r"registry version '3\.1'"):
        Versions.from_env({"HAKU_REGISTRY_VERSION": "3.1"})
    table = toolchain.components(Versions())
    assert [(table[n].name, table[n].version, table[n].binaries) for n in NAMES] == [
        ("e2e", KUBERNETES_VERSION, ("e2e.test",)),
        ("agnhost", KUBERNETES_VERSION, ("agnhost",)),
        ("registry", "v3.1.2", ("registry",)),
    ]
    root = Path("/c")
    assert table["e2e"].directory(root) == Path(f"/c/bin/e2e-{KUBERNETES_VERSION}")
    assert table["agnhost"].directory(root) == Path(f"/c/bin/agnhost-{KUBERNETES_VERSION}")
    assert table["registry"].directory(root) == Path("/c/bin/registry-v3.1.2")
    # e2e.test and agnhost follow the Kubernetes version (its flag and variable).
    older = toolchain.components(Versions.from_env({"HAKU_KUBERNETES_VERSION": "v1.36.3"}))
    assert older["e2e"].version == older["agnhost"].version == "v1.36.3"
    assert toolchain.components(Versions().with_kubernetes("v1.36.3"))["e2e"].version == \
        "v1.36.3"
    assert toolchain.MODULES["e2e"] == toolchain.MODULES["agnhost"] == "k8s.io/kubernetes"
    assert toolchain.MODULES["registry"] == "github.com/distribution/distribution/v3"
    assert "HAKU_REGISTRY_VERSION" in \
        toolchain.VERSION_SETTINGS["github.com/distribution/distribution/v3"]
    assert conformance.COMPONENTS == ("registry", "agnhost", "e2e")


def _fake_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, download: dict[str, str]) -> Path:
    """A ``go`` that records each call (and the go.mod it saw at build time) in ``calls`` and
    writes the file after ``-o`` for ``go build`` and ``go test -c``."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    on_path(monkeypatch, bin_dir)
    script(bin_dir, "go", f"""
printf '%s\\n' "$*" >> {calls}
case "$1" in
  mod) if [ "$3" = -json ]; then echo '{json.dumps(download)}'; fi ;;
  build|test) cp go.mod {tmp_path}/gomod-at-build
     while [ $# -gt 0 ]; do [ "$1" = -o ] && {{ echo built > "$2"; }}; shift; done ;;
esac
""")
    return calls


def _kubernetes_download(tmp_path: Path, agnhost_version: str | None = "2.66.1") -> dict[str, str]:
    gomod = tmp_path / "kubernetes.mod"
    gomod.write_text(KUBERNETES_GOMOD)
    source = tmp_path / "kubernetes-src"
    if agnhost_version is not None:
        (source / "test/images/agnhost").mkdir(parents=True)
        (source / "test/images/agnhost/VERSION").write_text(agnhost_version + "\n")
    return {"Path": "k8s.io/kubernetes", "Version": KUBERNETES_VERSION,
            "GoMod": str(gomod), "Dir": str(source)}


def test_e2e_test_builds_in_the_kubernetes_consumer_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_go(tmp_path, monkeypatch, _kubernetes_download(tmp_path))
    root = tmp_path / "cache"
    lines: list[str] = []
    built = toolchain.ensure(["e2e"], Versions(), root, progress=lines.append)
    directory = root / "bin" / f"e2e-{KUBERNETES_VERSION}"
    assert built == {"e2e": directory}
    assert (directory / "e2e.test").read_text() == "built\n"
    stamp = json.loads((directory / toolchain.STAMP).read_text())
    assert (stamp["component"], stamp["version"]) == ("e2e", KUBERNETES_VERSION)

    # The same module the Kubernetes binaries are built in: each staging module replaced by
    # its published v0.MINOR.PATCH, by the one function that writes it.
    gomod = (tmp_path / "gomod-at-build").read_text()
    assert gomod.startswith(toolchain.kubernetes_consumer_gomod(KUBERNETES_GOMOD,
                                                                KUBERNETES_VERSION))
    staging = staging_version(KUBERNETES_VERSION)
    assert f"replace k8s.io/api => k8s.io/api {staging}" in gomod
    assert f"replace k8s.io/client-go => k8s.io/client-go {staging}" in gomod

    got = calls.read_text().splitlines()
    assert got[:3] == [
        f"mod download -json k8s.io/kubernetes@{KUBERNETES_VERSION}",
        "mod download k8s.io/kubernetes",
        f"get -t k8s.io/kubernetes/test/e2e@{KUBERNETES_VERSION}",
    ]
    assert len(got) == 4
    ldflags = re.search(r"-ldflags (.*) -o ", got[3])
    assert ldflags is not None
    build = shlex.split(got[3].replace(ldflags.group(1), "LDFLAGS"))
    assert build[:8] == ["test", "-c", "-vet=off", "-trimpath", "-tags",
                         "selinux,notest,grpcnotrace", "-ldflags", "LDFLAGS"]
    assert build[8] == "-o" and Path(build[9]).name == "e2e.test"
    assert build[10:] == ["k8s.io/kubernetes/test/e2e"]
    # Version-stamped as the Kubernetes binaries are (the build date aside).
    assert f"k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}" in ldflags.group(1)
    assert ldflags.group(1).startswith("-s -w ")
    assert any(line.startswith(f"building e2e {KUBERNETES_VERSION} from the Go module proxy")
               for line in lines)


def test_the_kubernetes_build_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_go(tmp_path, monkeypatch, _kubernetes_download(tmp_path))
    # (The stand-in writes no binaries into `-o DIR/`: only the calls matter here.)
    with pytest.raises(toolchain.ToolchainError, match="build produced no"):
        toolchain.ensure(["kubernetes"], Versions(), tmp_path / "cache", progress=lambda _: None)
    got = calls.read_text().splitlines()
    assert got[:3] == [
        f"mod download -json k8s.io/kubernetes@{KUBERNETES_VERSION}",
        "mod download k8s.io/kubernetes",
        f"get k8s.io/kubernetes/cmd/kube-apiserver@{KUBERNETES_VERSION}",
    ]
    assert got[3].startswith("build -v -trimpath -tags selinux,notest,grpcnotrace -ldflags ")
    assert got[3].endswith(" ".join(f"k8s.io/kubernetes/cmd/{b}"
                                    for b in toolchain.KUBERNETES_COMMANDS))


def test_agnhost_builds_with_its_own_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_go(tmp_path, monkeypatch, _kubernetes_download(tmp_path, "2.66.1"))
    root = tmp_path / "cache"
    built = toolchain.ensure(["agnhost"], Versions(), root, progress=lambda _: None)
    directory = built["agnhost"]
    assert directory == root / "bin" / f"agnhost-{KUBERNETES_VERSION}"
    assert (directory / "agnhost").read_text() == "built\n"
    assert (directory / "agnhost.version").read_text() == "2.66.1\n"
    assert (tmp_path / "gomod-at-build").read_text() == toolchain.kubernetes_consumer_gomod(
        KUBERNETES_GOMOD, KUBERNETES_VERSION)
    got = calls.read_text().splitlines()
    assert got[2] == f"get k8s.io/kubernetes/test/images/agnhost@{KUBERNETES_VERSION}"
    build = shlex.split(got[3].replace(toolchain.agnhost_ldflags("2.66.1"), "LDFLAGS"))
    assert build[:5] == ["build", "-v", "-trimpath", "-ldflags", "LDFLAGS"]
    assert build[-1] == "k8s.io/kubernetes/test/images/agnhost"
    assert Path(build[-2]).name == "agnhost" and "-tags" not in build
    assert toolchain.agnhost_ldflags("2.66.1") == "-s -w -X main.Version=2.66.1"


def test_agnhost_version_must_be_readable(tmp_path: Path) -> None:
    with pytest.raises(toolchain.ToolchainError, match="cannot read agnhost's version"):
        toolchain.agnhost_version(tmp_path)
    (tmp_path / "test/images/agnhost").mkdir(parents=True)
    (tmp_path / "test/images/agnhost/VERSION").write_text("latest\n")
    with pytest.raises(toolchain.ToolchainError, match="'latest', not an agnhost version"):
        toolchain.agnhost_version(tmp_path)
    (tmp_path / "test/images/agnhost/VERSION").write_text("2.55\n")
    assert toolchain.agnhost_version(tmp_path) == "2.55"


def test_registry_builds_cmd_registry_as_distributions_makefile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "v3.1.2.info"
    info.write_text(json.dumps({"Version": "v3.1.2", "Origin": {"Hash": "cafe"}}))
    gomod = tmp_path / "v3.1.2.mod"
    gomod.write_text("module github.com/distribution/distribution/v3\n\ngo 1.26.0\n")
    module = "github.com/distribution/distribution/v3"
    calls = _fake_go(tmp_path, monkeypatch, {"Path": module, "Version": "v3.1.2",
                                            "Info": str(info), "GoMod": str(gomod)})
    root = tmp_path / "cache"
    built = toolchain.ensure(["registry"], Versions(), root, progress=lambda _: None)
    assert built == {"registry": root / "bin" / "registry-v3.1.2"}
    assert (built["registry"] / "registry").read_text() == "built\n"
    got = calls.read_text().splitlines()
    assert got[:2] == [f"mod download -json {module}@v3.1.2", f"get {module}@v3.1.2"]
    ldflags = toolchain.registry_ldflags("v3.1.2", "cafe")
    assert ldflags == (f"-s -w -X {module}/version.version=v3.1.2 "
                       f"-X {module}/version.revision=cafe -X {module}/version.mainpkg={module}")
    build = shlex.split(got[2].replace(ldflags, "LDFLAGS"))
    assert build[:5] == ["build", "-v", "-trimpath", "-ldflags", "LDFLAGS"]
    assert build[-1] == f"{module}/cmd/registry" and "-tags" not in build  # no BUILDTAGS
    assert len(got) == 3
    assert "revision" not in toolchain.registry_ldflags("v3.1.2", "")


def test_cached_builds_need_no_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sorted(conformance.COMPONENTS) == sorted(NAMES)
    versions = Versions()
    root, marker = ensure_cached_without_go(tmp_path, monkeypatch, list(conformance.COMPONENTS),
                                            versions)

    # A build without its stamp is not trusted: go runs (and here, fails).
    (toolchain.components(versions)["registry"].directory(root) / toolchain.STAMP).unlink()
    with pytest.raises(toolchain.ToolchainError, match=r"distribution/v3@v3\.1\.2"):
        toolchain.ensure(NAMES, versions, root, progress=lambda _: None)
    assert marker.exists()


def test_go_test_c_progress_gives_the_time(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    on_path(monkeypatch, tmp_path / "bin")
    script(tmp_path / "bin", "go", f'echo "$@" > {tmp_path}/args\nsleep 0.5')
    lines: list[str] = []
    go = toolchain.GoBuilder(progress=lines.append, report_every=0.1)
    go.build(["-o", "x", "k8s.io/kubernetes/test/e2e"], tmp_path, "e2e.test v1.37.2",
             command=("test", "-c"))
    assert (tmp_path / "args").read_text() == "test -c -o x k8s.io/kubernetes/test/e2e\n"
    assert any(re.fullmatch(r"  e2e\.test v1\.37\.2: 0m00s, go test -c compiling", line)
               for line in lines)
    assert re.fullmatch(r"  e2e\.test v1\.37\.2: built in \d+s", lines[-1])


# `e2e.test --list-images` at v1.37.2 prints one reference a line in Go's map order; a few of
# its lines, shuffled, and a log line to skip.
LIST_IMAGES = """\
registry.k8s.io/e2e-test-images/busybox:1.37.0-2
I1201 00:10:00.000000   123 test_context.go:1] something logged
registry.k8s.io/e2e-test-images/agnhost:2.66.1
invalid.registry.k8s.io/invalid/alpine:3.1
registry.k8s.io/sig-storage/csi-attacher:v4.8.0
registry.k8s.io/pause:3.10.2
registry.k8s.io/e2e-test-images/agnhost:2.66.1
docker.io/library/nginx:1.27
"""


def test_parse_image_list() -> None:
    images = conformance.parse_image_list(LIST_IMAGES)
    assert [i.ref for i in images] == [
        "docker.io/library/nginx:1.27",
        "invalid.registry.k8s.io/invalid/alpine:3.1",
        "registry.k8s.io/e2e-test-images/agnhost:2.66.1",
        "registry.k8s.io/e2e-test-images/busybox:1.37.0-2",
        "registry.k8s.io/pause:3.10.2",
        "registry.k8s.io/sig-storage/csi-attacher:v4.8.0",
    ]
    assert images[2] == Image("registry.k8s.io/e2e-test-images/agnhost", "2.66.1")
    assert images[2].name == "agnhost"
    assert conformance.parse_image_list("localhost:5000/x/y:1\nnot an image\n") == [
        Image("localhost:5000/x/y", "1")]


def test_list_images_runs_e2e_test(tmp_path: Path) -> None:
    e2e = script(tmp_path, "e2e.test",
                 f'[ "$1" = --list-images ] || exit 2\ncat <<EOF\n{LIST_IMAGES}EOF')
    images = conformance.list_images(e2e)
    assert Image("registry.k8s.io/pause", "3.10.2") in images and len(images) == 6

    seen: dict[str, object] = {}

    def runner(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.update(kwargs, args=args)
        return subprocess.CompletedProcess(args, 0, "registry.k8s.io/pause:3.10.2\n", "")

    env = {"PATH": "/usr/bin"}
    assert conformance.list_images(Path("/x/e2e.test"), runner, env=env) == [
        Image("registry.k8s.io/pause", "3.10.2")]
    assert seen["args"] == ["/x/e2e.test", "--list-images"] and seen["env"] == env


def test_list_images_failures_are_clear(tmp_path: Path) -> None:
    failing = script(tmp_path, "bad", 'echo "flag provided but not defined" >&2\nexit 1')
    with pytest.raises(conformance.ConformanceError, match="exited 1: flag provided"):
        conformance.list_images(failing)
    silent = script(tmp_path, "silent", "exit 0")
    with pytest.raises(conformance.ConformanceError, match="printed no image references"):
        conformance.list_images(silent)
    with pytest.raises(conformance.ConformanceError, match="failed"):
        conformance.list_images(tmp_path / "absent")


MANIFEST_EXCERPT = """
\tconfigs[AgnhostPrev] = Config{list.PromoterE2eRegistry, "agnhost", "2.55"}
\tconfigs[Agnhost] = Config{list.PromoterE2eRegistry, "agnhost", "2.66.1"}
\tconfigs[Etcd] = Config{list.GcEtcdRegistry, "etcd", "3.7.0-0"}
\tconfigs[Pause] = Config{list.GcRegistry, "pause", "3.10.2"}
"""


def test_manifest_tags_name_the_agnhost_e2e_test_expects() -> None:
    tags = conformance.manifest_tags(MANIFEST_EXCERPT)
    assert tags["Agnhost"] == ("PromoterE2eRegistry", "agnhost", "2.66.1")
    assert tags["AgnhostPrev"][2] == "2.55" and len(tags) == 4
    planned = {p.image_id: p.image for p in CONFORMANCE_IMAGES}
    for image_id, (_, name, tag) in tags.items():
        assert planned[image_id].name == name.rsplit("/", 1)[-1]
        assert planned[image_id].tag == tag


def test_the_conformance_plan() -> None:
    ids = [p.image_id for p in CONFORMANCE_IMAGES]
    assert len(ids) == len(set(ids)) == 11
    assert {p.source for p in CONFORMANCE_IMAGES} <= {
        conformance.MODULE_PROXY, conformance.DEBIAN, conformance.TINY, conformance.RELEASE,
        conformance.EXISTING}
    by_id = {p.image_id: p.image for p in CONFORMANCE_IMAGES}
    assert by_id["Pause"].ref == "registry.k8s.io/pause:3.10.2"
    assert by_id["Agnhost"].ref == "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
    listed = conformance.parse_image_list(LIST_IMAGES)
    missing = {p.image_id for p in conformance.missing_from(listed)}
    assert "Pause" not in missing and "Agnhost" not in missing and "Nautilus" in missing
    # The plan is the table in docs/conformance.md.
    doc = (REPO / "docs" / "conformance.md").read_text()
    for p in CONFORMANCE_IMAGES:
        assert f"`{p.image.ref}`" in doc, p.image.ref


def test_make_conformance_build_builds_the_three_and_nothing_else() -> None:
    makefile = (REPO / "Makefile").read_text()
    phony = next(line for line in makefile.splitlines() if line.startswith(".PHONY:"))
    assert "conformance-build" in phony.split()
    recipe = makefile.split("\nconformance-build:", 1)[1].split("\n\n", 1)[0]
    assert "$(HAKU) dev build e2e agnhost registry" in recipe
    for target in ("deps", "test", "test-fast"):
        body = makefile.split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]
        assert "e2e" not in body and "conformance" not in body, target


def test_e2e_test_has_room_to_build() -> None:
    # ~27 min on 2 cores with a warm Go build cache: more than one `go build` may take.
    assert toolchain.E2E_BUILD_TIMEOUT >= 2 * toolchain.GO_BUILD_TIMEOUT


def test_the_recorded_v1_37_2_list_holds_every_planned_image() -> None:
    # docs/conformance.md records what the real e2e.test v1.37.2 printed for --list-images.
    doc = (REPO / "docs" / "conformance.md").read_text()
    rows = re.findall(r"^\| `([a-z0-9.-]+\.[a-z]+/[^`]+)` \| `([^`]+)` \|", doc, re.MULTILINE)
    listed = [Image(repository, tag) for repository, tag in rows]
    assert len(listed) == len(set(listed)) == 41
    assert conformance.missing_from(listed) == []
    assert conformance.parse_image_list("\n".join(i.ref for i in listed)) == listed  # sorted
