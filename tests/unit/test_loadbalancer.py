"""MetalLB in the dev cluster (haku.dev.loadbalancer): its images, its pool, and the install
manifest its build caches."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from haku.dev import loadbalancer, releases, toolchain, worker_net
from haku.dev.layout import Layout
from haku.dev.versions import Versions
from tests.unit.test_exposure_toolchain import METALLB, _fake_go, _module


def test_images_carry_upstreams_names_and_entrypoints(tmp_path: Path) -> None:
    for binary in toolchain.METALLB_BINARIES:
        (tmp_path / binary).write_text("built\n")
    controller, speaker = loadbalancer.image_specs(tmp_path, "v0.15.2")
    assert (controller.name, controller.entrypoint) == \
        ("quay.io/metallb/controller:v0.15.2", ("/controller",))
    assert (speaker.name, speaker.entrypoint) == \
        ("quay.io/metallb/speaker:v0.15.2", ("/speaker",))
    assert controller.files[0].path == "/controller"
    assert controller.files[0].source == tmp_path / "controller"
    (tmp_path / "speaker").unlink()
    with pytest.raises(loadbalancer.LoadBalancerError, match="haku dev build metallb"):
        loadbalancer.image_specs(tmp_path, "v0.15.2")


def test_the_pool_is_routed_to_the_admin_node_and_apart_from_its_addresses() -> None:
    pool, advertisement = loadbalancer.pool_objects()
    assert (pool["kind"], advertisement["kind"]) == ("IPAddressPool", "L2Advertisement")
    assert pool["spec"] == {"addresses": [loadbalancer.POOL], "avoidBuggyIPs": True}
    assert advertisement["spec"] == {"ipAddressPools": [loadbalancer.POOL_NAME]}
    network = ipaddress.ip_network(loadbalancer.POOL)
    lay = Layout(state_dir=Path("/x"))
    assert ipaddress.ip_address(lay.node_ip) not in network
    assert not network.overlaps(worker_net.WORKER_ADDRESSES)


def test_the_build_refuses_a_module_without_its_install_manifest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_go(tmp_path, monkeypatch, _module(tmp_path, METALLB, "v0.15.2"))
    with pytest.raises(toolchain.ToolchainError, match=r"metallb-native\.yaml"):
        toolchain.ensure(["metallb"], Versions(), tmp_path / "cache", progress=lambda _: None)


def test_a_cache_without_the_manifest_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(loadbalancer.LoadBalancerError, match="haku dev build metallb"):
        loadbalancer.manifest(tmp_path)


def test_nothing_is_installed_into_a_cluster_that_is_not_up(tmp_path: Path) -> None:
    lay = Layout(state_dir=tmp_path)
    assert "run `haku dev up` first" in (releases.admin_not_up(lay) or "")
    with pytest.raises(loadbalancer.LoadBalancerError, match="is not up"):
        loadbalancer.ensure(lay, lambda _: None)
