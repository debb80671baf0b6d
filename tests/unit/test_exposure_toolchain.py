"""Exposure in the dev cluster (issue 17): Traefik v3 and MetalLB as cached toolchain
components, built against a stand-in ``go`` here (the real builds are not part of ``make test``:
``make exposure-build``). Traefik runs in the dev cluster with ``haku dev exposure up``
(tests/unit/test_dev_exposure.py, tests/node/test_exposure.py); MetalLB does not run yet."""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime
from pathlib import Path

import pytest

from haku.dev import toolchain
from haku.dev.versions import METALLB_VERSION, TRAEFIK_VERSION, VersionError, Versions

from .fakes import ensure_cached_without_go, on_path, script

NAMES = ["traefik", "metallb"]
TRAEFIK = "github.com/traefik/traefik/v3"
METALLB = "go.universe.tf/metallb"


def test_pins_and_overrides() -> None:
    assert TRAEFIK_VERSION == "v3.7.10"
    assert METALLB_VERSION == "v0.15.2"
    assert (Versions().traefik, Versions().metallb) == ("v3.7.10", "v0.15.2")
    env = {"HAKU_TRAEFIK_VERSION": "v3.7.12", "HAKU_METALLB_VERSION": "v0.15.0"}
    assert (Versions.from_env(env).traefik, Versions.from_env(env).metallb) == \
        ("v3.7.12", "v0.15.0")
    with pytest.raises(VersionError, match=r"traefik version '3\.7'"):
        Versions.from_env({"HAKU_TRAEFIK_VERSION": "3.7"})
    with pytest.raises(VersionError, match=r"metallb version 'latest'"):
        Versions.from_env({"HAKU_METALLB_VERSION": "latest"})
    table = toolchain.components(Versions())
    assert [(table[n].name, table[n].version, table[n].binaries) for n in NAMES] == [
        ("traefik", "v3.7.10", ("traefik",)),
        ("metallb", "v0.15.2", ("controller", "speaker", "manifests/metallb-native.yaml")),
    ]
    assert table["traefik"].directory(Path("/c")) == Path("/c/bin/traefik-v3.7.10")
    assert table["metallb"].directory(Path("/c")) == Path("/c/bin/metallb-v0.15.2")
    assert toolchain.MODULES["traefik"] == TRAEFIK
    assert toolchain.MODULES["metallb"] == METALLB
    assert "HAKU_TRAEFIK_VERSION" in toolchain.VERSION_SETTINGS[TRAEFIK]
    assert "HAKU_METALLB_VERSION" in toolchain.VERSION_SETTINGS[METALLB]


def _fake_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, download: dict[str, str]) -> Path:
    """A ``go`` that records each call (with the directory it ran in) in ``calls`` and writes
    the file after ``-o`` for ``go build`` (each package's last element for ``-o DIR/``)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    on_path(monkeypatch, bin_dir)
    script(bin_dir, "go", f"""
printf '%s\\n' "$*" >> {calls}
pwd >> {calls}.cwd
case "$1" in
  mod) if [ "$3" = -json ]; then echo '{json.dumps(download)}'; fi ;;
  build) out=""
     while [ $# -gt 0 ]; do
       if [ "$1" = -o ]; then out="$2"; shift
       elif [ -n "$out" ] && [ "${{out%/}}" != "$out" ]; then echo built > "$out${{1##*/}}"
       fi
       shift
     done
     case "$out" in */) ;; *) echo built > "$out" ;; esac ;;
esac
""")
    return calls


def _module(tmp_path: Path, module: str, version: str, commit: str = "cafe") -> dict[str, str]:
    info = tmp_path / f"{version}.info"
    info.write_text(json.dumps({"Version": version, "Origin": {"Hash": commit}}))
    gomod = tmp_path / f"{version}.mod"
    gomod.write_text(f"module {module}\n\ngo 1.26.0\n")
    source = tmp_path / "modcache" / f"{module}@{version}"
    source.mkdir(parents=True)
    (source / "go.mod").write_text(gomod.read_text())
    return {"Path": module, "Version": version, "Info": str(info), "GoMod": str(gomod),
            "Dir": str(source)}


def with_manifest(download: dict[str, str]) -> dict[str, str]:
    """MetalLB's module as served: with its install manifest."""
    manifests = Path(download["Dir"]) / "config/manifests"
    manifests.mkdir(parents=True)
    (manifests / "metallb-native.yaml").write_text("# upstream's\n")
    return download


def test_traefik_ldflags_as_upstreams_release() -> None:
    when = datetime(2026, 12, 1, 13, 5, 9, tzinfo=UTC)
    pkg = f"{TRAEFIK}/pkg/version"
    assert toolchain.traefik_ldflags("v3.7.13", when) == (
        f"-s -w -X {pkg}.Version=v3.7.13 -X {pkg}.BuildDate=2026-12-01_01:05:09PM")
    assert f"-X {pkg}.Codename=cheddar " in toolchain.traefik_ldflags("v3.7.13", when, "cheddar")


EXT = "github.com/traefik/traefik/dynamic/ext"
TRAEFIK_GOMOD = (f"module {TRAEFIK}\n\ngo 1.25.0\n\n"
                 f"require {EXT} v0.0.0-00010101000000-000000000000\n"
                 "\n// Dynamic config extension.\n"
                 f"replace {EXT} => ./pkg/config/dynamic/ext\n\nreplace (\n"
                 "\tgithub.com/gorilla/mux => github.com/containous/mux "
                 "v0.0.0-20250523120546-41b6ec3aed59\n)\n")


@pytest.mark.parametrize("placeholder", [True, False])
@pytest.mark.parametrize("ext_in_zip", [False, True])
def test_traefik_builds_cmd_traefik_in_its_own_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, placeholder: bool, ext_in_zip: bool
) -> None:
    download = _module(tmp_path, TRAEFIK, "v3.7.10")
    source = Path(download["Dir"])
    (source / "go.mod").write_text(TRAEFIK_GOMOD)
    (source / "pkg/config/dynamic").mkdir(parents=True)
    (source / "pkg/config/dynamic/http_config.go").write_text("package dynamic\n")
    if ext_in_zip:  # not so in v3.7.10's zip: then the build leaves upstream's alone
        (source / "pkg/config/dynamic/ext").mkdir()
        (source / "pkg/config/dynamic/ext/go.mod").write_text(f"module {EXT}\n")
    (source / "cmd/traefik").mkdir(parents=True)
    (source / "cmd/traefik/traefik.go").write_text("package main\n")
    static = source / "webui/static"
    static.mkdir(parents=True)
    if placeholder:  # as the module zip has it
        (static / "DONT-EDIT-FILES-IN-THIS-DIRECTORY.md").write_text("upstream's")
    read_only = [source / "cmd/traefik", source / "cmd", static, source / "webui",
                 source / "pkg/config/dynamic", source / "pkg/config", source / "pkg", source]
    for d in read_only:
        d.chmod(0o555)  # read-only, as in the module cache
    try:
        calls = _fake_go(tmp_path, monkeypatch, download)
        # The stand-in go also saves the ext module as it finds it when it builds.
        saved = tmp_path / "ext-seen"
        go = tmp_path / "bin" / "go"
        go.write_text(go.read_text().replace(
            'case "$1" in', f'[ "$1" = build ] && cp -r pkg/config/dynamic/ext {saved}\n'
                            'case "$1" in', 1))
        root = tmp_path / "cache"
        lines: list[str] = []
        built = toolchain.ensure(["traefik"], Versions(), root, progress=lines.append)
    finally:
        for d in read_only:
            d.chmod(0o755)
    directory = root / "bin" / "traefik-v3.7.10"
    assert built == {"traefik": directory}
    assert (directory / "traefik").read_text() == "built\n"
    stamp = json.loads((directory / toolchain.STAMP).read_text())
    assert (stamp["component"], stamp["version"]) == ("traefik", "v3.7.10")
    got = calls.read_text().splitlines()
    # No consumer module (it would drop Traefik's replaces): built inside a copy of its source.
    assert got[0] == f"mod download -json {TRAEFIK}@v3.7.10"
    assert len(got) == 2
    cwd = Path(Path(f"{calls}.cwd").read_text().splitlines()[1])
    assert cwd.name == "traefik" and cwd != source
    found = re.search(r"-ldflags (.*) -o ", got[1])
    assert found is not None
    ldflags = found.group(1)
    build = shlex.split(got[1].replace(ldflags, "LDFLAGS"))
    assert build[:3] == ["build", "-v", "-trimpath"] and "-tags" not in build
    assert build[-1] == "./cmd/traefik"
    assert Path(build[build.index("-o") + 1]).name == "traefik"
    assert ldflags.startswith(f"-s -w -X {TRAEFIK}/pkg/version.Version=v3.7.10 ")
    assert f"{TRAEFIK}/pkg/version.BuildDate=" in ldflags
    # The nested module ext as go found it: upstream's when the zip has it, else ours, with
    # the module path, Traefik's go line and the two empty types v3.7.10 embeds.
    if ext_in_zip:
        assert sorted(p.name for p in saved.iterdir()) == ["go.mod"]
        assert (saved / "go.mod").read_text() == f"module {EXT}\n"
        assert not any("wrote the nested module" in line for line in lines)
    else:
        assert sorted(p.name for p in saved.iterdir()) == ["ext.go", "go.mod"]
        assert (saved / "go.mod").read_text() == f"module {EXT}\n\ngo 1.25.0\n"
        code = (saved / "ext.go").read_text()
        assert "\npackage ext\n" in code
        assert re.findall(r"^type (\w+) (.*)$", code, re.MULTILINE) == [
            ("HTTP", "struct{}"), ("Router", "struct{}")]
        assert any("wrote the nested module ./pkg/config/dynamic/ext" in line
                   for line in lines)
    # The module cache is left alone; the copy is deleted with the build's temporary directory.
    assert sorted(p.name for p in static.iterdir()) == \
        (["DONT-EDIT-FILES-IN-THIS-DIRECTORY.md"] if placeholder else [])
    assert (source / "pkg/config/dynamic/ext").exists() == ext_in_zip
    assert not cwd.exists()
    assert any(line.startswith("building traefik v3.7.10 from the Go module proxy")
               for line in lines)


def test_traefik_ext_module_files() -> None:
    files = toolchain.traefik_ext_module("module x\n\ngo 1.25.0\n\ntoolchain go1.26.1\n")
    assert sorted(files) == ["pkg/config/dynamic/ext/ext.go", "pkg/config/dynamic/ext/go.mod"]
    assert files["pkg/config/dynamic/ext/go.mod"] == f"module {EXT}\n\ngo 1.25.0\n"
    assert toolchain.traefik_ext_module("module x\n")["pkg/config/dynamic/ext/go.mod"] == \
        f"module {EXT}\n"


def test_metallb_builds_controller_and_speaker_and_caches_its_crds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    download = _module(tmp_path, METALLB, "v0.15.2", commit="beef")
    with_manifest(download)
    crds = Path(download["Dir"]) / "config/crd/bases"
    crds.mkdir(parents=True)
    for name in ("metallb.io_ipaddresspools.yaml", "metallb.io_l2advertisements.yaml"):
        (crds / name).write_text(f"# {name}\n")
    (crds / "kustomization.txt").write_text("not a CRD\n")
    calls = _fake_go(tmp_path, monkeypatch, download)
    root = tmp_path / "cache"
    built = toolchain.ensure(["metallb"], Versions(), root, progress=lambda _: None)
    directory = root / "bin" / "metallb-v0.15.2"
    assert built == {"metallb": directory}
    assert (directory / "controller").read_text() == "built\n"
    assert (directory / "speaker").read_text() == "built\n"
    assert sorted(p.name for p in (directory / "crds").iterdir()) == [
        "metallb.io_ipaddresspools.yaml", "metallb.io_l2advertisements.yaml"]
    assert (directory / "crds/metallb.io_l2advertisements.yaml").read_text() == \
        "# metallb.io_l2advertisements.yaml\n"
    assert (directory / "manifests/metallb-native.yaml").read_text() == "# upstream's\n"
    got = calls.read_text().splitlines()
    assert got[:2] == [f"mod download -json {METALLB}@v0.15.2", f"get {METALLB}@v0.15.2"]
    assert len(got) == 3
    ldflags = toolchain.metallb_ldflags("beef")
    assert ldflags == f"-s -w -X {METALLB}/internal/version.gitCommit=beef"
    build = shlex.split(got[2].replace(ldflags, "LDFLAGS"))
    assert build[:5] == ["build", "-v", "-trimpath", "-ldflags", "LDFLAGS"]
    assert build[5] == "-o" and build[6].endswith("/") and "-tags" not in build
    assert build[7:] == [f"{METALLB}/controller", f"{METALLB}/speaker"]
    assert toolchain.metallb_ldflags("", "main") == \
        f"-s -w -X {METALLB}/internal/version.gitBranch=main"


def test_metallb_without_crds_in_the_module_still_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_go(tmp_path, monkeypatch, with_manifest(_module(tmp_path, METALLB, "v0.15.2")))
    lines: list[str] = []
    built = toolchain.ensure(["metallb"], Versions(), tmp_path / "cache", progress=lines.append)
    assert not (built["metallb"] / "crds").exists()
    assert any("no config/crd/bases in the module" in line for line in lines)


def test_cached_builds_need_no_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, marker = ensure_cached_without_go(tmp_path, monkeypatch, NAMES, Versions())

    # Another pinned version is another cache directory: go runs (and here, fails).
    other = Versions.from_env({"HAKU_TRAEFIK_VERSION": "v3.7.12"})
    with pytest.raises(toolchain.ToolchainError, match=r"traefik/v3@v3\.7\.12"):
        toolchain.ensure(["traefik"], other, root, progress=lambda _: None)
    assert marker.exists()


def test_traefik_with_another_missing_nested_module_is_refused_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The module zip leaves out every nested module. The build writes ext (found with v3.7.10
    # and v3.7.13); any other local replace it cannot supply stops it before go builds.
    assert toolchain.missing_local_replaces(TRAEFIK_GOMOD, tmp_path) == [
        f"{EXT} => ./pkg/config/dynamic/ext"]
    gomod = TRAEFIK_GOMOD + "replace example.com/other => ./pkg/other\n"
    download = _module(tmp_path, TRAEFIK, "v3.7.10")
    (Path(download["Dir"]) / "go.mod").write_text(gomod)
    calls = _fake_go(tmp_path, monkeypatch, download)
    with pytest.raises(toolchain.ToolchainError,
                       match=r"traefik v3\.7\.10 cannot be built from the Go module proxy.*"
                             r"\(example\.com/other => \./pkg/other;"):
        toolchain.ensure(["traefik"], Versions(), tmp_path / "cache", progress=lambda _: None)
    assert calls.read_text().splitlines() == [f"mod download -json {TRAEFIK}@v3.7.10"]
