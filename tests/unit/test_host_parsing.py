import json
from pathlib import Path

import pytest

from haku.dev import host
from haku.errors import HakuError

PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:192B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1
   1: 0100007F:0950 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1
   2: 0100007F:D2A4 0100007F:192B 01 00000000:00000000 00:00000000 00000000     0        0 4444 1
"""


def test_only_listening_sockets_are_reported() -> None:
    parsed = host.parse_proc_net_tcp(PROC_NET_TCP)
    assert parsed == {6443: {4242}, 2384: {4343}}


def test_listeners_name_the_owning_process() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        found = host.listeners([port, 1])
        assert set(found) == {port}
        import os

        assert found[port].pid == os.getpid()
        assert "python" in found[port].command or "pytest" in found[port].command


RULES = """\
-P INPUT ACCEPT
-N KUBE-FIREWALL
-N KUBE-KUBELET-CANARY
-N OTHER
-A INPUT -j KUBE-FIREWALL
-A OUTPUT -m comment --comment "kubernetes" -j KUBE-FIREWALL
-A FORWARD -j OTHER
-A KUBE-FIREWALL -m mark --mark 0x8000 -j DROP
-A OTHER -g KUBE-KUBELET-CANARY
"""


def test_kube_chains_and_the_rules_that_reference_them() -> None:
    assert host.parse_chains(RULES) == ["KUBE-FIREWALL", "KUBE-KUBELET-CANARY"]
    refs = host.rules_jumping_to(RULES, {"KUBE-FIREWALL", "KUBE-KUBELET-CANARY"})
    assert [r[1] for r in refs] == ["INPUT", "OUTPUT", "OTHER"]
    assert refs[1][-2:] == ["-j", "KUBE-FIREWALL"]


MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
100 22 0:50 / /var/lib/haku/dev/kubelet/pods/x/volumes/a rw - tmpfs tmpfs rw
101 100 0:51 / /var/lib/haku/dev/kubelet/pods/x/volumes/a/b rw - tmpfs tmpfs rw
102 22 0:52 / /var/lib/haku/dev2 rw - tmpfs tmpfs rw
103 22 0:53 / /var/lib/haku/dev/with\\040space rw - tmpfs tmpfs rw
"""


def test_mounts_under_a_root_deepest_first_and_nothing_beside_it() -> None:
    points = host.mounts_under([Path("/var/lib/haku/dev")], MOUNTINFO)
    assert points == [
        "/var/lib/haku/dev/kubelet/pods/x/volumes/a/b",
        "/var/lib/haku/dev/kubelet/pods/x/volumes/a",
        "/var/lib/haku/dev/with space",
    ]


def test_netns_are_matched_to_the_bridge_by_netnsid() -> None:
    links = json.dumps([
        {"ifname": "veth1", "master": "haku-cni0", "link_netnsid": 0},
        {"ifname": "veth2", "master": "haku-cni0", "link_netnsid": 2},
        {"ifname": "veth3", "master": "other0", "link_netnsid": 1},
    ])
    namespaces = json.dumps([
        {"name": "cni-a", "id": 0}, {"name": "cni-b", "id": 1}, {"name": "cni-c", "id": 2},
        {"name": "mine"},
    ])
    assert host.netns_attached_to("haku-cni0", links, namespaces) == ["cni-a", "cni-c"]
    assert host.netns_attached_to("haku-cni0", "", "") == []


def test_a_host_command_that_hangs_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "RUN_TIMEOUT", 0.3)
    with pytest.raises(HakuError, match=r"^sleep 30 did not finish within 0\.3 s and was "
                       r"stopped: something on the host holds it"):
        host.run(["sleep", "30"], check=False)
    with pytest.raises(host.HostError, match=r"^sh -c echo nope >&2; exit 2 failed: nope$"):
        host.run(["sh", "-c", "echo nope >&2; exit 2"])
