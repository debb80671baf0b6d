"""The clear errors `haku dev up` gives before it touches anything."""

import json
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from haku.dev import packages
from haku.dev.cluster import DevCluster, DevClusterError
from haku.dev.layout import Layout, Ports
from haku.dev.versions import Versions


def test_a_taken_port_is_named_with_its_owner(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        layout = replace(Layout.api_only(tmp_path), ports=replace(Ports(), apiserver=port))
        cluster = DevCluster(layout, printer=lambda _: None)
        with pytest.raises(DevClusterError) as info:
            cluster._check_ports()
    message = str(info.value)
    assert f"port {port} (for kube-apiserver) is taken by pid" in message
    assert "then run this again" in message


def test_a_directory_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    cluster = DevCluster(Layout.api_only(tmp_path), printer=lambda _: None)
    with pytest.raises(DevClusterError, match="not a Haku state directory"):
        cluster._check_state_dir()
    assert (tmp_path / "precious.txt").exists()


def test_a_state_dir_of_another_kubernetes_version_is_refused(tmp_path: Path) -> None:
    layout = Layout.api_only(tmp_path)
    (tmp_path / "state.json").write_text(json.dumps(
        {"kubernetes": "v1.30.0", "layout": layout.describe()}))
    cluster = DevCluster(layout, Versions(), printer=lambda _: None)
    with pytest.raises(DevClusterError, match=r"v1\.30\.0 cluster.*down --purge"):
        cluster._check_state_dir()


def test_a_state_dir_with_another_layout_is_refused(tmp_path: Path) -> None:
    other = Layout(state_dir=tmp_path)  # full, while we ask for API-only
    (tmp_path / "state.json").write_text(json.dumps(
        {"kubernetes": Versions().kubernetes, "layout": other.describe()}))
    cluster = DevCluster(Layout.api_only(tmp_path), printer=lambda _: None)
    with pytest.raises(DevClusterError, match="different layout"):
        cluster._check_state_dir()


def test_missing_packages_say_how_to_install_them(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = packages.Requirement("haku-no-such-pkg", ("/nonexistent/bin/x",), "testing")
    # Alone, so the message does not depend on what this machine has installed.
    monkeypatch.setattr(packages, "REQUIREMENTS", (fake,))
    with pytest.raises(packages.MissingPackages) as info:
        packages.check()
    message = str(info.value)
    assert "haku-no-such-pkg: needed for testing" in message
    assert "apt-get install -y haku-no-such-pkg" in message
    assert "make deps" in message
