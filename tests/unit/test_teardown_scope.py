"""What `haku dev down` counts as its own: kubelet/kube-proxy chains made after `up`."""

from __future__ import annotations

from pathlib import Path

import pytest

from haku.dev.cluster import _chain_baseline, kubernetes_chain
from haku.dev.config import kubelet_config
from haku.dev.layout import Layout


@pytest.mark.parametrize("name", [
    "KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-KUBELET-CANARY", "KUBE-FIREWALL",
    "KUBE-SVC-NPX46M4PTMTKRN6Y", "KUBE-SEP-2ZBC5D7LLBXWKQ6M", "KUBE-SVL-1234567890123456",
    "KUBE-EXT-ABCDEFGHIJKLMNOP", "KUBE-FW-ABCDEFGHIJKLMNOP",
])
def test_chains_kubelet_and_kube_proxy_make_are_ours(name: str) -> None:
    assert kubernetes_chain(name)


@pytest.mark.parametrize("name", [
    "KUBE-AUDIT-FOREIGN", "KUBE-SVC-short", "KUBE-SVC-npx46m4ptmtkrn6y",
    "KUBE-SEP-2ZBC5D7LLBXWKQ6MX", "DOCKER", "KUBE-ROUTER-INPUT", "CILIUM_FORWARD",
])
def test_other_chains_are_left_alone(name: str) -> None:
    assert not kubernetes_chain(name)


NAT = ("iptables", "nat")


def test_the_first_up_takes_the_host_as_it_is() -> None:
    now = {(*NAT, "KUBE-SERVICES")}
    assert _chain_baseline(None, True, now) == [("iptables", "nat", "KUBE-SERVICES")]


def test_a_restart_keeps_the_recorded_baseline() -> None:
    """A chain an earlier, failed `down` left is not taken into the baseline: the next `down`
    removes it. Chains of the baseline that went meanwhile drop out."""
    recorded = [["iptables", "nat", "KUBE-FOREIGN"], ["iptables", "nat", "KUBE-GONE"]]
    now = {(*NAT, "KUBE-FOREIGN"), (*NAT, "KUBE-SERVICES")}
    assert _chain_baseline(recorded, True, now) == [("iptables", "nat", "KUBE-FOREIGN")]


def test_a_running_cluster_keeps_its_baseline_as_recorded() -> None:
    recorded = [["iptables", "nat", "KUBE-GONE"]]
    assert _chain_baseline(recorded, False, set()) == [("iptables", "nat", "KUBE-GONE")]


def test_the_admin_kubelet_keeps_its_pods_under_a_cgroup_of_its_own() -> None:
    layout = Layout(state_dir=Path("/tmp/x"))
    root = kubelet_config(layout)["cgroupRoot"]
    assert root == f"/{layout.pods_cgroup}" and root != "/" and "kubepods" not in root
