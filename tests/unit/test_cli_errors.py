"""Bad input through the command line: one ``haku: …`` line saying what failed and what to do,
exit code 1, no traceback, and nothing started.

``haku dev up`` runs these checks before it creates anything (cluster.py ``up``: root, the
Kubernetes version, the state directory, Debian packages, cached binaries, ports; only then
directories, state.json, certificates and processes). Each test also makes
``Supervisor.start`` fail the test, and checks the state directory was left as it was.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from haku import cli
from haku.dev import packages
from haku.dev.layout import Layout
from haku.dev.processes import Supervisor
from haku.dev.versions import Versions

from .fakes import go_that_must_not_run, on_path, script, stamped_cache

FAKE_PACKAGE = packages.Requirement("haku-no-such-pkg", ("/nonexistent/haku/bin/x",), "testing")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def haku_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("haku: ")]


def assert_one_clear_line(code: int, stderr: str) -> str:
    assert code == 1
    assert "Traceback" not in stderr
    lines = haku_lines(stderr)
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """`up` and `deps` refuse non-root first; these tests are about what comes after."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    def start(self: Supervisor, spec: object) -> None:
        raise AssertionError(f"a process was started: {spec}")

    monkeypatch.setattr(Supervisor, "start", start)


@pytest.fixture
def cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A build cache with every component finished, and a `go` that fails the test if run."""
    root = stamped_cache(tmp_path / "cache", ["kubernetes", "etcd", "kine", "coredns"])
    monkeypatch.setenv("HAKU_CACHE", str(root))
    go_that_must_not_run(tmp_path / "bin", tmp_path / "go-ran")
    on_path(monkeypatch, tmp_path / "bin")
    return root


# ---------------------------------------------------------------------------------------------
# haku dev deps: apt-get


@pytest.fixture
def apt_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_root: None) -> Path:
    """One missing package, a policy-rc.d of the test's own, a fake apt-get first on PATH."""
    monkeypatch.setattr(packages, "REQUIREMENTS", (FAKE_PACKAGE,))
    monkeypatch.setattr(packages, "POLICY_RC_D", tmp_path / "policy-rc.d")
    on_path(monkeypatch, tmp_path / "bin")
    return tmp_path / "bin"


def test_a_failing_apt_get_is_one_line_with_its_last_output(
    apt_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script(apt_env, "apt-get", f"""
echo "$@" >> {tmp_path}/apt-calls
[ "$1" = update ] && {{ echo "Hit:1 http://deb.debian.org/debian bookworm InRelease"; exit 0; }}
echo "Reading package lists..."
echo "Building dependency tree..."
echo "E: Unable to locate package haku-no-such-pkg" >&2
exit 100
""")
    code, _, err = run_cli(capsys, "dev", "deps")
    line = assert_one_clear_line(code, err)
    assert line.startswith("haku: apt-get install haku-no-such-pkg failed (exit 100): ")
    assert "E: Unable to locate package haku-no-such-pkg" in line  # stderr, captured too
    assert "Building dependency tree..." in line
    assert line.endswith("check the network and the apt sources (/etc/apt/sources.list*), "
                         "then re-run `make deps`")
    calls = (tmp_path / "apt-calls").read_text().splitlines()
    assert calls[0] == "update -q"
    assert calls[1] == "install -y -q --no-install-recommends haku-no-such-pkg"
    assert not (tmp_path / "policy-rc.d").exists()  # written for the run, removed after


def test_a_hanging_apt_get_is_stopped_and_named(
    apt_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(packages, "APT_TIMEOUT", 0.5)
    script(apt_env, "apt-get", 'echo "0% [Connecting to deb.debian.org]"\nexec sleep 60')
    started = time.monotonic()
    code, _, err = run_cli(capsys, "dev", "deps")
    assert time.monotonic() - started < 15
    line = assert_one_clear_line(code, err)
    assert line.startswith("haku: apt-get update did not finish within 0.5 s and was stopped "
                           "(last output: 0% [Connecting to deb.debian.org]); check the network")
    assert "re-run `make deps`" in line


def test_deps_with_everything_present_runs_no_apt_get(
    apt_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    present = tmp_path / "present"
    present.write_text("")
    monkeypatch.setattr(packages, "REQUIREMENTS", (
        packages.Requirement("haku-present", (str(present),), "testing"),))
    script(apt_env, "apt-get", f"touch {tmp_path}/apt-ran\nexit 1")
    code, out, _ = run_cli(capsys, "dev", "deps")
    assert code == 0
    assert out.strip() == "all Debian packages present"
    assert not (tmp_path / "apt-ran").exists()


# ---------------------------------------------------------------------------------------------
# haku dev up: preflight


def test_a_taken_port_stops_up_before_anything_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    as_root: None, nothing_starts: None, cached: Path,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        # The API-only layout, with its API server on the port this test holds (its fixed
        # ports may be in use by a running API tier; it must not be disturbed).
        api_only = Layout.api_only

        def on_our_port(state_dir: Path) -> Layout:
            lay = api_only(state_dir)
            return replace(lay, ports=replace(lay.ports, apiserver=port))

        monkeypatch.setattr(Layout, "api_only", staticmethod(on_our_port))
        state = tmp_path / "state"
        code, _, err = run_cli(capsys, "dev", "up", "--api-only", "--state-dir", str(state))
    assert code == 1 and "Traceback" not in err
    assert err.startswith("haku: cannot start: ports in use\n")
    assert f"\n  port {port} (for kube-apiserver) is taken by pid {os.getpid()} (" in err
    assert "then run this again" in err
    assert not state.exists()  # no directory, state.json, certificate or process
    assert not (tmp_path / "go-ran").exists()


def test_missing_packages_stop_up_before_anything_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    as_root: None, nothing_starts: None, cached: Path,
) -> None:
    monkeypatch.setattr(packages, "REQUIREMENTS", (FAKE_PACKAGE,))
    state = tmp_path / "state"
    code, _, err = run_cli(capsys, "dev", "up", "--datastores-only", "--state-dir", str(state))
    assert code == 1 and "Traceback" not in err
    assert err.startswith("haku: missing Debian packages:\n  haku-no-such-pkg: needed for "
                          "testing\ninstall them with `make deps` (or: apt-get install -y "
                          "haku-no-such-pkg)")
    assert not state.exists()


def test_a_corrupt_state_json_says_how_to_start_afresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], as_root: None, nothing_starts: None,
    cached: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text('{"kubernetes": "v1.37.2", "layout": {trunc')
    code, _, err = run_cli(capsys, "dev", "up", "--api-only", "--state-dir", str(state))
    line = assert_one_clear_line(code, err)
    assert line.startswith(f"haku: {state / 'state.json'} is unreadable (")
    assert line.endswith(f"run `haku dev down --purge --state-dir {state}` to start afresh")
    assert sorted(p.name for p in state.iterdir()) == ["state.json"]  # left as it was


FAKE_GO_PROXY = """
case "$*" in
  "list -m -versions k8s.io/kubernetes")
    echo "k8s.io/kubernetes v1.36.3 v1.37.0-rc.1 v1.37.0 v1.37.1 v1.37.2"; exit 0;;
  "list -m -json k8s.io/kubernetes@v1.37.99"|"mod download -json k8s.io/kubernetes@v1.37.99")
    echo "go: k8s.io/kubernetes@v1.37.99: reading https://proxy.golang.org/k8s.io/\
kubernetes/@v/v1.37.99.info: 403 Forbidden" >&2
    echo "	server response: This module version is not available." >&2
    exit 1;;
esac
echo "unexpected: go $*" >&2
exit 98
"""


def test_an_unknown_version_is_named_before_the_state_directory_is_judged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    as_root: None, nothing_starts: None,
) -> None:
    monkeypatch.setenv("HAKU_CACHE", str(tmp_path / "empty-cache"))
    script(tmp_path / "bin", "go", FAKE_GO_PROXY)
    on_path(monkeypatch, tmp_path / "bin")
    state = tmp_path / "state"
    state.mkdir()
    recorded = json.dumps({"kubernetes": Versions().kubernetes,
                           "layout": Layout.api_only(state).describe()})
    (state / "state.json").write_text(recorded)
    code, _, err = run_cli(capsys, "dev", "up", "--api-only", "--state-dir", str(state),
                           "--kubernetes-version", "v1.37.99")
    line = assert_one_clear_line(code, err)
    assert line.startswith("haku: k8s.io/kubernetes@v1.37.99 cannot be fetched (")
    assert "This module version is not available." in line
    assert line.endswith("versions the proxy serves include v1.37.0, v1.37.1, v1.37.2: pass "
                         "--kubernetes-version / set HAKU_KUBERNETES_VERSION to one of these")
    assert "--purge" not in err  # the working cluster is not the problem
    assert (state / "state.json").read_text() == recorded


def test_a_cached_version_other_than_the_state_directorys_names_both_ways_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], as_root: None, nothing_starts: None,
    cached: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text(json.dumps(
        {"kubernetes": "v1.36.3", "layout": Layout.api_only(state).describe()}))
    code, _, err = run_cli(capsys, "dev", "up", "--api-only", "--state-dir", str(state))
    line = assert_one_clear_line(code, err)
    assert f"holds a Kubernetes v1.36.3 cluster and this is {Versions.from_env().kubernetes}: " \
           "pass --kubernetes-version v1.36.3 to keep using it, run `haku dev down --purge" in line
    assert not (tmp_path / "go-ran").exists()  # the version is cached: no go, no network


def test_build_of_an_unknown_version_says_which_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HAKU_CACHE", str(tmp_path / "empty-cache"))
    script(tmp_path / "bin", "go", FAKE_GO_PROXY)
    on_path(monkeypatch, tmp_path / "bin")
    code, _, err = run_cli(capsys, "dev", "build", "kubernetes", "--kubernetes-version",
                           "v1.37.99")
    assert assert_one_clear_line(code, err).endswith(
        "versions the proxy serves include v1.37.0, v1.37.1, v1.37.2: pass --kubernetes-version "
        "/ set HAKU_KUBERNETES_VERSION to one of these")
    assert not (tmp_path / "empty-cache" / "bin").exists()


def test_a_malformed_version_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "dev", "build", "--kubernetes-version", "1.37")
    assert assert_one_clear_line(code, err) == (
        "haku: kubernetes version '1.37' is not of the form vMAJOR.MINOR.PATCH (e.g. v1.37.2)")


# ---------------------------------------------------------------------------------------------
# The last resort: a command that failed where nothing clearer was raised


def test_an_unexpected_failing_command_in_dev_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def install() -> list[str]:
        subprocess.run(["sh", "-c", "echo 'it broke' >&2; exit 3"], check=True,
                       capture_output=True, text=True)
        return []

    monkeypatch.setattr(packages, "install", install)
    code, _, err = run_cli(capsys, "dev", "deps")
    line = assert_one_clear_line(code, err)
    assert line.startswith("haku: `sh -c 'echo '\"'\"'it broke'\"'\"' >&2; exit 3'` failed "
                           "(exit 3): it broke; ")
