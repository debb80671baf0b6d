"""`haku dev up` raises the inotify limits a node with many tenants needs, never lowers one,
and never fails over them."""

from __future__ import annotations

from pathlib import Path

import pytest

from haku.dev import host


@pytest.fixture
def proc_sys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(host, "sysctl_path",
                        lambda name: tmp_path / name.replace(".", "/"))
    (tmp_path / "fs/inotify").mkdir(parents=True)
    return tmp_path / "fs/inotify"


def test_low_limits_are_raised_and_said(proc_sys: Path) -> None:
    (proc_sys / "max_user_instances").write_text("128\n")
    (proc_sys / "max_user_watches").write_text("1048576\n")  # already higher: kept
    said: list[str] = []
    notes = host.raise_inotify_limits(said.append)
    assert (proc_sys / "max_user_instances").read_text() == "8192\n"
    assert (proc_sys / "max_user_watches").read_text() == "1048576\n"
    assert notes == said == ["fs.inotify.max_user_instances raised from 128 to 8192"]
    assert host.raise_inotify_limits() == []  # a second run has nothing to do


def test_limits_that_cannot_be_read_or_set_are_left_alone(
    proc_sys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (proc_sys / "max_user_instances").mkdir()  # cannot be read
    (proc_sys / "max_user_watches").write_text("8192\n")

    def refuse(name: str, value: str) -> None:
        raise host.HostError(f"cannot set {name}={value}: Read-only file system")

    monkeypatch.setattr(host, "write_sysctl", refuse)
    notes = host.raise_inotify_limits()
    assert notes == [
        "fs.inotify.max_user_instances: cannot read it; not raised to 8192",
        "fs.inotify.max_user_watches stays 8192: cannot set "
        "fs.inotify.max_user_watches=524288: Read-only file system"]
    assert (proc_sys / "max_user_watches").read_text() == "8192\n"


def test_the_limits_are_the_documented_ones() -> None:
    assert host.INOTIFY_LIMITS == {"fs.inotify.max_user_instances": 8192,
                                   "fs.inotify.max_user_watches": 524288}
    doc = (Path(__file__).resolve().parents[2] / "docs/dev-cluster.md").read_text()
    assert "fs.inotify.max_user_instances" in doc and "too many open files" in doc
