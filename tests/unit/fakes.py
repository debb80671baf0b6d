"""Stand-ins for external programs (go, apt-get, ctr, gcc): real executables on PATH that act
out one behaviour, and a cache of stamped (fake) builds so nothing needs go."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from haku.dev import toolchain
from haku.dev.versions import Versions


def script(bin_dir: Path, name: str, body: str) -> Path:
    """An executable ``bin_dir/name`` running ``body`` under /bin/sh."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body.strip() + "\n")
    path.chmod(0o755)
    return path


def on_path(monkeypatch: pytest.MonkeyPatch, bin_dir: Path) -> None:
    """Put ``bin_dir`` first on PATH (for this test only)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")


def go_that_must_not_run(bin_dir: Path, marker: Path) -> Path:
    """A ``go`` that leaves ``marker`` behind if anything runs it."""
    return script(bin_dir, "go", f'echo "$@" >> {marker}\necho "go must not run" >&2\nexit 99')


def stamped_cache(root: Path, names: list[str], versions: Versions | None = None) -> Path:
    """``root`` as a build cache where ``names`` are finished builds (stamp and binaries)."""
    table = toolchain.components(versions or Versions.from_env())
    for name in names:
        c = table[name]
        d = c.directory(root)
        d.mkdir(parents=True, exist_ok=True)
        for b in c.binaries:
            (d / b).parent.mkdir(parents=True, exist_ok=True)
            (d / b).write_text("#!/bin/sh\nexit 1\n")
        (d / toolchain.STAMP).write_text('{"seconds": "1.0"}\n')
    return root


def ensure_cached_without_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: list[str],
                             versions: Versions) -> tuple[Path, Path]:
    """``toolchain.ensure(names)`` on a cache (``tmp_path/cache``) where they are finished
    builds, with a ``go`` on PATH that only leaves a marker file if it runs: checks that ensure
    returns each component's directory, says nothing and runs no go. Returns the cache root and
    the marker, for the test to go on (a build that must run go next)."""
    on_path(monkeypatch, tmp_path / "bin")
    marker = tmp_path / "go-ran"
    go_that_must_not_run(tmp_path / "bin", marker)
    root = stamped_cache(tmp_path / "cache", names, versions)
    toolchain.check_available(names, versions, root)
    built = toolchain.ensure(list(names), versions, root, progress=pytest.fail)
    assert built == {n: toolchain.components(versions)[n].directory(root) for n in names}
    assert not marker.exists()
    return root, marker
