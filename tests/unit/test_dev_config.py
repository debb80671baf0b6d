import json
import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from haku.dev import config
from haku.dev.layout import Layout


def test_containerd_config_parses_and_carries_the_vm_workarounds() -> None:
    layout = Layout(state_dir=Path("/var/lib/haku/x"))
    doc = tomllib.loads(config.containerd_toml(layout, "registry.k8s.io/pause:3.10.2"))
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["sandbox_image"] == "registry.k8s.io/pause:3.10.2"
    assert cri["cni"]["conf_dir"] == "/var/lib/haku/x/cni/net.d"
    assert doc["grpc"]["address"] == "/var/lib/haku/x/containerd/containerd.sock"
    assert doc["root"].startswith("/var/lib/haku/x/")


def test_kubelet_config_for_hybrid_cgroups_without_systemd() -> None:
    layout = Layout(state_dir=Path("/s"))
    kc = config.kubelet_config(layout)
    assert kc["cgroupDriver"] == "cgroupfs" and kc["failCgroupV1"] is False
    assert kc["address"] == layout.node_ip
    assert kc["authentication"]["anonymous"]["enabled"] is False
    argv = config.kubelet_argv(Path("/b/kubelet"), layout)
    assert "--cert-dir=/s/kubelet/pki" in argv and f"--node-ip={layout.node_ip}" in argv


def test_the_kubelet_needs_of_this_machine_are_one_list_for_admin_and_tenants() -> None:
    from haku.dev import samples
    from haku.render import jsonpatch

    kc = config.kubelet_config(Layout(state_dir=Path("/s")))
    assert {k: kc[k] for k in config.VM_KUBELET} == config.VM_KUBELET
    assert set(config.VM_KUBELET_HARD) <= set(config.VM_KUBELET)
    settings = config.tenant_kubelet_settings()
    assert settings["cgroupfs"] == config.VM_KUBELET["cgroupDriver"] == "cgroupfs"
    # the patches set the rest of VM_KUBELET on whatever a tenant serves, present or not
    served = jsonpatch.apply({"kind": "KubeletConfiguration", "failSwapOn": True},
                             settings["configurationJSONPatches"])
    assert served == {"kind": "KubeletConfiguration",
                      **{k: v for k, v in config.VM_KUBELET.items() if k != "cgroupDriver"}}
    # the lists handed out are copies
    settings["configurationJSONPatches"][2]["value"]["nodefs.available"] = "50%"
    assert config.VM_KUBELET["evictionHard"]["nodefs.available"] == "1%"
    assert config.kubelet_patches() == config.tenant_kubelet_settings()[
        "configurationJSONPatches"]
    # every sample tenant carries them, then its own patches
    extra = {"op": "add", "path": "/maxPods", "value": 77}
    doc = samples.tenant_control_plane("t", "ns", "dev-etcd", "v1.37.2", kubelet_patches=[extra])
    kubelet = doc["spec"]["kubernetes"]["kubelet"]
    assert kubelet == {"cgroupfs": "cgroupfs",
                       "configurationJSONPatches": [*config.kubelet_patches(), extra]}
    assert samples.tenant_control_plane("t", "ns", "dev-etcd", "v1.37.2")["spec"][
        "kubernetes"]["kubelet"] == config.tenant_kubelet_settings()


def test_cni_gives_pods_a_default_route() -> None:
    conf = json.loads(config.cni_conflist(Layout(state_dir=Path("/s"))))
    ipam = conf["plugins"][0]["ipam"]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}]
    assert ipam["dataDir"] == "/s/cni/ipam"


def test_tier_layouts_can_run_side_by_side() -> None:
    full, api = Layout(state_dir=Path("/a")), Layout.api_only(Path("/b"))
    stores = Layout.datastores_only(Path("/c"))
    assert not set(full.listen_ports()) & set(api.listen_ports())
    assert not set(full.listen_ports()) & set(stores.listen_ports())
    assert not set(api.listen_ports()) & set(stores.listen_ports())
    assert stores.datastore_listen_addresses == ["127.0.0.1"]
    assert full.datastore_listen_addresses == ["127.0.0.1", full.node_ip]
    assert "--disable-admission-plugins=ServiceAccount" in config.apiserver_argv(Path("x"), api)
    assert "--kubelet-preferred-address-types=InternalIP" in config.apiserver_argv(Path("x"), full)


@pytest.mark.parametrize("make", [Layout, Layout.api_only, Layout.datastores_only],
                         ids=["full", "api-only", "datastores-only"])
def test_listeners_stay_out_of_the_ephemeral_port_range(make: Any, tmp_path: Path) -> None:
    # An outgoing connection may hold any port in 32768-60999 (Linux's default range); a
    # listener there fails to bind now and then, which broke CI once.
    ports = asdict(make(tmp_path).ports)
    assert ports
    for name, port in ports.items():
        assert not 32768 <= port <= 60999, f"{name} listens on ephemeral port {port}"
    assert len(set(ports.values())) == len(ports), "two listeners share a port"
