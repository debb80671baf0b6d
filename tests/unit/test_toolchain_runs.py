"""The builder against a stand-in ``go`` on PATH: progress while it works, a timeout that stops
go and everything it started, and a warm cache that never runs go at all."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from haku.dev import toolchain
from haku.dev.processes import process_start_time
from haku.dev.versions import Versions
from haku.errors import CommandTimedOut

from .fakes import go_that_must_not_run, on_path, script, stamped_cache

ALL = ["kubernetes", "etcd", "kine", "coredns", "kube-network-policies"]


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    on_path(monkeypatch, tmp_path / "bin")
    return tmp_path / "bin"


def test_a_long_build_prints_progress_with_what_it_compiles(
    bin_dir: Path, tmp_path: Path
) -> None:
    script(bin_dir, "go", """
[ "$1" = build ] || exit 97
for p in k8s.io/api/core/v1 k8s.io/apiserver/pkg/server k8s.io/kubernetes/cmd/kubelet; do
  echo "$p"; sleep 0.4
done
""")
    lines: list[str] = []
    go = toolchain.GoBuilder(progress=lines.append, report_every=0.1)
    go.build(["-o", "out/", "k8s.io/kubernetes/cmd/kubelet"], tmp_path, "kubernetes v1.37.2")
    reports = [line for line in lines if " packages compiled (now " in line]
    assert len(reports) >= 3, lines  # ~1.2 s of building at one line per 0.1 s
    assert reports[0].startswith("  kubernetes v1.37.2: 0m00s, ")
    assert any("(now k8s.io/apiserver/pkg/server)" in line for line in reports)
    assert lines[-1].startswith("  kubernetes v1.37.2: built in ")
    assert lines[-1].endswith(" (3 packages compiled)")


def test_a_build_that_hangs_is_stopped_with_all_it_started(
    bin_dir: Path, tmp_path: Path
) -> None:
    # go forks its compilers: the child must go too, not only go itself.
    script(bin_dir, "go", f"""
echo k8s.io/api/core/v1
sleep 60 &
echo $! > {tmp_path}/child
wait
""")
    lines: list[str] = []
    go = toolchain.GoBuilder(progress=lines.append, report_every=0.1)
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as info:
        go.build(["k8s.io/kubernetes/cmd/kubelet"], tmp_path, "kubernetes v1.37.2", timeout=0.8)
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert message.startswith("go build of kubernetes v1.37.2 did not finish within 0.8 s and "
                              "was stopped (last output: k8s.io/api/core/v1); check the network")
    assert "finished components stay cached" in message
    child = int((tmp_path / "child").read_text())
    deadline = time.monotonic() + 5
    while process_start_time(child) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_start_time(child) is None  # gone (or a zombie awaiting PID 1)
    assert any("1 packages compiled (now k8s.io/api/core/v1)" in line for line in lines)


def test_a_failed_build_shows_gos_last_lines(bin_dir: Path, tmp_path: Path) -> None:
    script(bin_dir, "go", 'echo "k8s.io/a"\necho "x.go:1:1: syntax error: bad"\nexit 1')
    go = toolchain.GoBuilder(progress=lambda _: None)
    with pytest.raises(toolchain.ToolchainError, match=r"(?s)building kine v0\.17\.5 failed:"
                       r".*x\.go:1:1: syntax error: bad"):
        go.build([], tmp_path, "kine v0.17.5")


def test_a_go_command_that_hangs_is_stopped(
    bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(toolchain, "GO_COMMAND_TIMEOUT", 0.5)
    script(bin_dir, "go", "exec sleep 60")
    go = toolchain.GoBuilder(progress=lambda _: None)
    with pytest.raises(CommandTimedOut, match=r"^go mod download k8s\.io/kubernetes did not "
                       r"finish within 0\.5 s and was stopped; check the network"):
        go.output(["mod", "download", "k8s.io/kubernetes"], tmp_path)


def test_a_warm_cache_returns_without_go(
    bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = Versions()
    root = stamped_cache(tmp_path / "cache", ALL, versions)
    marker = tmp_path / "go-ran"
    go_that_must_not_run(bin_dir, marker)
    built = toolchain.ensure(ALL, versions, root, progress=lambda line: pytest.fail(line))
    assert built == {n: toolchain.components(versions)[n].directory(root) for n in ALL}
    toolchain.check_available(ALL, versions, root)
    assert not marker.exists()

    # The same call with one stamp gone does run go: the check above can fail.
    (toolchain.components(versions)["kine"].directory(root) / toolchain.STAMP).unlink()
    with pytest.raises(toolchain.ToolchainError, match=r"github\.com/k3s-io/kine@v"):
        toolchain.ensure(ALL, versions, root, progress=lambda _: None)
    assert marker.exists()


def test_unknown_version_messages_say_how_to_pick_another() -> None:
    served = ["v3.5.21", "v3.6.4", "v3.7.2", "v3.7.3"]
    message = toolchain.unknown_version_message(
        "go.etcd.io/etcd/server/v3", "v3.7.9", "not found", served)
    assert message == ("go.etcd.io/etcd/server/v3@v3.7.9 cannot be fetched (not found); "
                       "versions the proxy serves include v3.7.2, v3.7.3: set "
                       "HAKU_ETCD_VERSION to one of these")
    offline = toolchain.unknown_version_message("k8s.io/kubernetes", "v1.37.2", "dial tcp: "
                                                "i/o timeout", None)
    assert "check the network and the Go module proxy" in offline
    assert offline.endswith("or pass --kubernetes-version / set HAKU_KUBERNETES_VERSION to a "
                            "version the proxy serves")
