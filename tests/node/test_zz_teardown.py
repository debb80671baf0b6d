"""After `haku dev down`, nothing of the cluster is left on the host. Runs last in its tier."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from haku.dev import host, netpol
from haku.dev.cluster import DevCluster
from haku.dev.processes import process_start_time


def _our_processes(state_dir: Path) -> list[str]:
    found = []
    marker = str(state_dir).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or process_start_time(int(proc.name)) is None:
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            command = cmdline.replace(b"\0", b" ").decode()[:120]
            found.append(f"{proc.name}: {command}")
    return found


FOREIGN_CHAIN = "KUBE-AUDIT-FOREIGN"  # a KUBE-* chain of some other tool, made after up
FOREIGN_NETNS = "haku-test-foreign"
FOREIGN_LINK = "hakufrgn0"
FOREIGN_CGROUP = "kubepods"  # another kubelet's pods on this host would live here


def _plant_foreign_things() -> None:
    subprocess.run(["iptables", "-w", "-t", "filter", "-N", FOREIGN_CHAIN], check=True)
    # As containerd makes one: a namespace bind-mounted on a file. (Not `ip netns add`: on a
    # host where /run/netns is no mount point yet, it bind-mounts /run/netns over itself and so
    # hides the mounts of the namespaces already there.)
    Path("/run/netns").mkdir(exist_ok=True)
    (Path("/run/netns") / FOREIGN_NETNS).touch()
    subprocess.run(["unshare", f"--net=/run/netns/{FOREIGN_NETNS}", "true"], check=True)
    subprocess.run(["ip", "link", "add", FOREIGN_LINK, "type", "bridge"], check=True)
    host.ensure_cgroup(FOREIGN_CGROUP)


def _remove_foreign_things() -> None:
    subprocess.run(["iptables", "-w", "-t", "filter", "-X", FOREIGN_CHAIN], check=False)
    subprocess.run(["umount", f"/run/netns/{FOREIGN_NETNS}"], check=False,
                   capture_output=True)
    (Path("/run/netns") / FOREIGN_NETNS).unlink(missing_ok=True)
    subprocess.run(["ip", "link", "delete", FOREIGN_LINK], check=False)
    host.remove_cgroups(FOREIGN_CGROUP)


def test_down_leaves_no_process_mount_netns_link_or_chain(node_cluster: DevCluster) -> None:
    lay = node_cluster.layout
    subprocess.run([str(lay.bin / "kubectl"), f"--kubeconfig={lay.admin_kubeconfig}", "run",
                    "leftover", "--image=docker.io/library/busybox:haku",
                    "--image-pull-policy=Never", "--restart=Never", "--", "sleep", "3600"],
                   check=True, capture_output=True)
    subprocess.run([str(lay.bin / "kubectl"), f"--kubeconfig={lay.admin_kubeconfig}", "wait",
                    "pod/leftover", "--for=condition=Ready", "--timeout=60s"],
                   check=True, capture_output=True)
    records = node_cluster.supervisor.records()
    netns = host.pod_netns(lay.cni_bridge)
    assert records and netns and host.mounts_under([lay.state_dir])
    assert host.cgroup_pids(lay.pods_cgroup)  # the pod runs under the cluster's cgroup root
    baseline = {tuple(c) for c in json.loads(lay.state_file.read_text())["baseline_chains"]}
    assert host.kube_chains() - baseline  # the cluster made chains of its own
    assert netpol.steering_present()  # what feeds kube-network-policies' queue
    _remove_foreign_things()
    _plant_foreign_things()
    try:
        # The real command, as a user runs it.
        down = subprocess.run([sys.executable, "-m", "haku", "dev", "down",
                               "--state-dir", str(lay.state_dir)],
                              capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, down.stderr
        assert "Traceback" not in down.stderr

        assert not [r.name for r in records if r.alive()]
        assert _our_processes(lay.state_dir) == []
        assert not host.cgroup_pids(lay.pods_cgroup)
        assert not any((root / lay.pods_cgroup).exists() for root in host.cgroup_roots())
        assert host.mounts_under([lay.state_dir]) == []
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not [ns for ns in netns if ns in listed]
        assert not host.link_exists(lay.cni_bridge) and not host.link_exists(lay.node_bridge)
        assert host.kube_chains() <= baseline | {("iptables", "filter", FOREIGN_CHAIN)}
        assert not [chain for chain in netpol.JUMPS if subprocess.run(
            ["iptables", "-w", "-t", netpol.STEERING_TABLE, "-S", chain],
            capture_output=True).returncode == 0]
        assert host.listeners(lay.listen_ports()) == {}
        # ... and nothing it did not make is touched.
        assert ("iptables", "filter", FOREIGN_CHAIN) in host.kube_chains()
        assert FOREIGN_NETNS in listed.split()
        assert host.link_exists(FOREIGN_LINK)
        assert all((root / FOREIGN_CGROUP).is_dir() for root in host.cgroup_roots())
    finally:
        _remove_foreign_things()
