"""gcc and ctr, as the image code runs them, against stand-ins on PATH: failures and hangs
become one clear error naming the command, its last output and what to do."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from haku.dev import images
from haku.errors import CommandFailed, CommandTimedOut, HakuError

from .fakes import on_path, script

CTR_LS = """
if [ "$5" = images ] && [ "$6" = ls ]; then
  echo "REF TYPE DIGEST SIZE PLATFORMS LABELS"
  echo "registry.k8s.io/pause:3.10.2 application/vnd.oci.image.manifest.v1+json sha256:aaa \
1 linux/amd64 -"
  exit 0
fi
"""


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    on_path(monkeypatch, tmp_path / "bin")
    return tmp_path / "bin"


def archives(tmp_path: Path) -> list[images.BuiltImage]:
    (tmp_path / "pause.tar").write_bytes(b"")
    (tmp_path / "busybox.tar").write_bytes(b"")
    return [images.BuiltImage("registry.k8s.io/pause:3.10.2", tmp_path / "pause.tar", "sha256:aaa"),
            images.BuiltImage("docker.io/library/busybox:haku", tmp_path / "busybox.tar",
                              "sha256:bbb")]


def test_a_failed_ctr_import_names_the_image_and_containerds_log(
    bin_dir: Path, tmp_path: Path
) -> None:
    script(bin_dir, "ctr", CTR_LS + f"""
echo "$@" >> {tmp_path}/calls
echo "ctr: failed to import: unexpected EOF" >&2
exit 1
""")
    with pytest.raises(images.ImageBuildError) as info:
        images.import_images(archives(tmp_path), tmp_path / "containerd.sock")
    assert isinstance(info.value, HakuError)
    assert str(info.value) == (
        f"ctr images import {tmp_path / 'busybox.tar'} (docker.io/library/busybox:haku) failed "
        "(exit 1): ctr: failed to import: unexpected EOF; containerd is not answering: see its "
        "log (<state>/logs/containerd.log), then run `haku dev down` and `haku dev up`")
    # pause was there with the same digest: only busybox was imported
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == [f"--address {tmp_path / 'containerd.sock'} --namespace k8s.io images "
                     f"import {tmp_path / 'busybox.tar'}"]


def test_a_hanging_ctr_import_is_stopped(
    bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images, "CTR_IMPORT_TIMEOUT", 0.5)
    script(bin_dir, "ctr", CTR_LS + "exec sleep 60")
    started = time.monotonic()
    with pytest.raises(CommandTimedOut, match=r"^ctr images import .*busybox\.tar \(docker\.io/"
                       r"library/busybox:haku\) did not finish within 0\.5 s and was stopped; "
                       r"containerd is not answering"):
        images.import_images(archives(tmp_path), tmp_path / "containerd.sock")
    assert time.monotonic() - started < 15


def test_a_failing_gcc_says_which_packages_build_the_pause_image(
    bin_dir: Path, tmp_path: Path
) -> None:
    script(bin_dir, "gcc", 'echo "/usr/bin/ld: cannot find -lc: No such file or directory" >&2\n'
                           'echo "collect2: error: ld returned 1 exit status" >&2\nexit 1')
    with pytest.raises(CommandFailed) as info:
        images.build_pause(tmp_path / "cache")
    assert str(info.value) == (
        "gcc -static pause.c (the pause image) failed (exit 1): /usr/bin/ld: cannot find -lc: "
        "No such file or directory | collect2: error: ld returned 1 exit status; gcc and "
        "libc6-dev (static libc) are needed: run `make deps`, then run this again")
    assert not list((tmp_path / "cache").rglob("pause"))  # no half-built binary is trusted
