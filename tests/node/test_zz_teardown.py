"""After `haku dev down`, nothing of the cluster is left on the host. Runs last in its tier."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from haku.dev import host
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
    assert host.cgroup_pids("kubepods")
    baseline = {tuple(c) for c in json.loads(lay.state_file.read_text())["baseline_chains"]}
    assert host.kube_chains() - baseline  # the cluster made chains of its own

    node_cluster.down()

    assert not [r.name for r in records if r.alive()]
    assert _our_processes(lay.state_dir) == []
    assert not host.cgroup_pids("kubepods")
    assert host.mounts_under([lay.state_dir]) == []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [ns for ns in netns if ns in listed]
    assert not host.link_exists(lay.cni_bridge) and not host.link_exists(lay.node_bridge)
    assert host.kube_chains() <= baseline
    assert host.listeners(lay.listen_ports()) == {}
