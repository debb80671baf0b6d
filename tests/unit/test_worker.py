"""The pure parts of ``haku dev worker``: names, addresses, configuration files, parsing."""

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.dev import config, worker, worker_config, worker_net
from haku.dev.layout import Layout
from haku.dev.worker_config import (
    IGNORED_PREFLIGHT_ERRORS,
    WorkerError,
    WorkerPaths,
    cni_conflist,
    containerd_toml,
    join_argv,
    join_configuration,
    kubelet_argv,
    kubelet_dropin,
    node_name,
    node_ready,
    parse_index,
    parse_kubeadm_flags,
    process_names,
    resolv_conf,
    served_kubelet_error,
    served_kubelet_problems,
    split_tenant,
    worker_name,
)
from haku.dev.worker_net import WorkerNet
from haku.tenant.tokens import JoinCommand

LAYOUT = Layout(state_dir=Path("/var/lib/haku/dev"))
NET = WorkerNet(3, LAYOUT.node_ip)
PATHS = worker_config.worker_paths(LAYOUT, 3)
JOIN = JoinCommand("10.245.0.1:31443", "abcdef.0123456789abcdef",
                   "sha256:" + "0" * 64)

# What kubeadm 1.37 downloaded into /var/lib/kubelet/config.yaml in a real join from a
# sample tenant with a maxPods patch (trimmed; tlsCertFile added to show a moved path).
DOWNLOADED = {
    "apiVersion": "kubelet.config.k8s.io/v1beta1",
    "kind": "KubeletConfiguration",
    "authentication": {"anonymous": {"enabled": False},
                       "webhook": {"cacheTTL": "0s", "enabled": True},
                       "x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"}},
    "authorization": {"mode": "Webhook"},
    "cgroupDriver": "cgroupfs",
    "failCgroupV1": False,
    "failSwapOn": False,
    "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                     "imagefs.available": "1%"},
    "imageGCHighThresholdPercent": 100,
    "imageGCLowThresholdPercent": 99,
    "serializeImagePulls": False,
    "maxPods": 77,
    "clusterDNS": ["10.96.0.10"],
    "clusterDomain": "cluster.local",
    "containerRuntimeEndpoint": "unix:///var/lib/haku/dev/workers/w3/containerd/containerd.sock",
    "healthzBindAddress": "127.0.0.1",
    "healthzPort": 10248,
    "rotateCertificates": True,
    "staticPodPath": "/etc/kubernetes/manifests",
    "tlsCertFile": "/var/lib/kubelet/pki/kubelet.crt",
}


# ------------------------------------------------------------------ names and addresses


def test_names_of_a_worker() -> None:
    assert worker_name(3) == "w3"
    assert node_name("np", 3) == "np-w3"
    assert process_names("w3") == ("worker-w3-containerd", "worker-w3-kubelet")
    assert (NET.netns, NET.host_link, str(NET.netns_path)) == ("haku-w3", "hkw3",
                                                               "/run/netns/haku-w3")
    assert PATHS.root == Path("/var/lib/haku/dev/workers/w3")
    assert worker_config.join_log(LAYOUT, "w3") == Path(
        "/var/lib/haku/dev/logs/worker-w3-kubeadm-join.log")


@pytest.mark.parametrize(("ref", "index"), [("w3", 3), ("3", 3), ("haku-w12", 12),
                                            (" w7 ", 7), ("np-w3", None), ("w", None),
                                            ("hkw3", None)])
def test_parse_index(ref: str, index: int | None) -> None:
    assert parse_index(ref) == index


def test_split_tenant() -> None:
    assert split_tenant("tenants/np") == ("tenants", "np")
    assert split_tenant("np") == ("default", "np")
    for bad in ("tenants/", "a/b/c", ""):
        with pytest.raises(WorkerError):
            split_tenant(bad)


@pytest.mark.parametrize(("index", "address", "pods"), [
    (1, "10.245.1.1", "10.246.1.0/24"),
    (3, "10.245.1.3", "10.246.3.0/24"),
    (254, "10.245.1.254", "10.246.254.0/24"),
])
def test_worker_addresses(index: int, address: str, pods: str) -> None:
    net = WorkerNet(index, "10.245.0.1")
    assert (net.address, net.pod_cidr) == (address, pods)


@pytest.mark.parametrize("index", [0, 255, -1])
def test_worker_index_out_of_range(index: int) -> None:
    with pytest.raises(worker_net.WorkerNetError):
        WorkerNet(index, "10.245.0.1")


def test_setup_commands_pin_the_namespace_without_ip_netns_add() -> None:
    cmds = worker_net.setup_commands(NET)
    assert cmds[0] == ["unshare", "--net=/run/netns/haku-w3", "true"]
    assert not any(c[:3] == ["ip", "netns", "add"] for c in cmds)
    joined = [" ".join(c) for c in cmds]
    assert "ip link add hkw3 type veth peer name eth0 netns haku-w3" in joined
    assert "ip -n haku-w3 addr add 10.245.1.3/32 dev eth0" in joined
    assert "ip -n haku-w3 route add default via 10.245.0.1 dev eth0 onlink" in joined
    assert "ip route add 10.245.1.3/32 dev hkw3 src 10.245.0.1" in joined
    assert "ip route add 10.246.3.0/24 via 10.245.1.3 dev hkw3 src 10.245.0.1" in joined
    # forwarding is switched on inside the worker only; never the host's ip_forward
    fwd = [c for c in cmds if any("ip_forward" in a for a in c)]
    assert fwd == [["nsenter", "--net=/run/netns/haku-w3", "sysctl", "-q", "-w",
                    "net.ipv4.ip_forward=1"]]
    # the gateway route comes before the default route that uses it
    assert joined.index("ip -n haku-w3 route add 10.245.0.1 dev eth0") < \
        joined.index("ip -n haku-w3 route add default via 10.245.0.1 dev eth0 onlink")


def test_forward_guard_returns_between_haku_interfaces_and_drops_the_rest() -> None:
    rules = worker_net.forward_guard_rules("haku-cni0")
    assert all(r[:2] == ["-A", "HAKU-FORWARD"] for r in rules)
    targets = [r[-1] for r in rules]
    assert targets == ["RETURN"] * 4 + ["DROP"] * 3  # every RETURN before any DROP
    pairs = {(r[r.index("-i") + 1], r[r.index("-o") + 1]) for r in rules[:4]}
    assert pairs == {(a, b) for a in ("haku-cni0", "hkw+") for b in ("haku-cni0", "hkw+")}
    drops = [(r[2], r[3]) for r in rules[4:]]
    assert drops == [("-i", "haku-cni0"), ("-i", "hkw+"), ("-o", "hkw+")]


def test_jump_positions() -> None:
    rules = "\n".join([
        "-P FORWARD ACCEPT",
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
        "-A FORWARD -j HAKU-FORWARD",
        "-A FORWARD -g HAKU-FORWARD",
    ])
    assert worker_net._jump_positions(rules, "HAKU-FORWARD") == [2, 3]
    assert worker_net._jump_positions("-P FORWARD ACCEPT", "HAKU-FORWARD") == []


def test_behind_nat_rejects_what_the_admin_side_opens_towards_the_worker() -> None:
    rules = worker_net.nat_filter_rules(NET)
    chain = worker_net.nat_chain(NET)
    assert chain == "HAKU-NAT-W3"
    body = [r for r in rules if r[0] == "-A"]
    assert len(body) == 1 and body[0][1] == chain
    r = body[0]
    # anything but replies (and ICMP errors) of connections the worker opened
    assert r[r.index("--ctstate") - 1:r.index("--ctstate") + 2] == \
        ["!", "--ctstate", "ESTABLISHED,RELATED"]
    assert r[-3:] == ["REJECT", "--reject-with", "icmp-host-unreachable"]
    # from the host itself and from forwarded traffic (admin pods, other workers), first
    jumps = [x for x in rules if x[0] == "-I"]
    assert jumps == [["-I", "OUTPUT", "1", "-o", "hkw3", "-j", chain],
                     ["-I", "FORWARD", "1", "-o", "hkw3", "-j", chain]]
    assert rules.index(body[0]) < rules.index(jumps[0])  # the chain is full before any jump


def test_behind_nat_snats_the_worker_and_its_pods_to_the_admin_node_ip() -> None:
    rules = worker_net.nat_snat_rules(NET)
    snat = [r for r in rules if r[1] == "HAKU-NAT-W3"]
    assert [(r[r.index("-s") + 1], r[-3:]) for r in snat] == [
        ("10.245.1.3/32", ["SNAT", "--to-source", "10.245.0.1"]),
        ("10.246.3.0/24", ["SNAT", "--to-source", "10.245.0.1"]),
    ]
    # appended: kube-proxy's masquerading of NodePort traffic stays as for any worker
    assert [r for r in rules if r[1] != "HAKU-NAT-W3"] == [
        ["-A", "POSTROUTING", "-j", "HAKU-NAT-W3"], ["-A", "INPUT", "-j", "HAKU-NAT-W3"]]


def test_a_link_that_vanishes_with_its_namespace_is_not_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleting the namespace destroys hkw<N> asynchronously: `ip link del` may then fail
    with "Cannot find device", which is what removal wanted."""
    import subprocess

    from haku.dev import host

    exists = iter([True, False])  # there when looked at, gone after the failed delete
    monkeypatch.setattr(host, "netns_exists", lambda name: False)
    monkeypatch.setattr(host, "link_exists", lambda name: next(exists))
    monkeypatch.setattr(host, "run", lambda argv, check=True: subprocess.CompletedProcess(
        argv, 1, "", 'Cannot find device "hkw3"'))
    assert worker_net.delete(NET) == ["hkw3"]
    monkeypatch.setattr(host, "link_exists", lambda name: True)  # still there: an error
    with pytest.raises(worker_net.WorkerNetError, match="Cannot find device"):
        worker_net.delete(NET)


def test_nat_jumps_carry_no_comment() -> None:
    """host.remove_chains deletes jumps from ``iptables -S`` split on spaces."""
    for rule in worker_net.nat_filter_rules(NET) + worker_net.nat_snat_rules(NET):
        if rule[1] in ("OUTPUT", "FORWARD", "POSTROUTING", "INPUT"):
            assert "--comment" not in rule


# ------------------------------------------------------------------ configuration files


def test_containerd_config_is_the_workers_own() -> None:
    doc = tomllib.loads(containerd_toml(PATHS, NET, "registry.k8s.io/pause:3.10.2"))
    root = "/var/lib/haku/dev/workers/w3"
    assert doc["root"] == f"{root}/containerd/root"
    assert doc["state"] == f"{root}/containerd/state"
    assert doc["grpc"]["address"] == f"{root}/containerd/containerd.sock"
    assert doc["ttrpc"]["address"].startswith(root)
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True  # the admin containerd's VM workaround
    assert cri["sandbox_image"] == "registry.k8s.io/pause:3.10.2"
    assert cri["cni"]["conf_dir"] == f"{root}/cni/net.d"
    options = cri["containerd"]["runtimes"]["runc"]["options"]
    assert options == {"SystemdCgroup": False, "Root": f"{root}/runc"}
    assert doc["plugins"]["io.containerd.internal.v1.opt"]["path"].startswith(root)


def test_cni_conflist_for_the_workers_pod_range() -> None:
    conf = json.loads(cni_conflist(PATHS, NET))
    assert conf["name"] == "haku-w3"
    bridge, *rest = conf["plugins"]
    assert bridge["type"] == "bridge" and bridge["bridge"] == "cni0"
    assert bridge["hairpinMode"] is True and bridge["isGateway"] is True
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.246.3.0/24"}]]
    assert bridge["ipam"]["dataDir"] == "/var/lib/haku/dev/workers/w3/cni/ipam"
    assert [p["type"] for p in rest] == ["loopback", "portmap"]


def test_resolv_conf_names_only_the_admin_node() -> None:
    assert resolv_conf("10.245.0.1") == "nameserver 10.245.0.1\n"


def test_join_configuration() -> None:
    text = join_configuration(JOIN, "np-w3", PATHS.containerd_socket)
    doc = yaml.safe_load(text)
    assert doc["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert doc["kind"] == "JoinConfiguration"
    assert doc["discovery"]["bootstrapToken"] == {
        "apiServerEndpoint": "10.245.0.1:31443", "token": "abcdef.0123456789abcdef",
        "caCertHashes": ["sha256:" + "0" * 64]}
    reg = doc["nodeRegistration"]
    assert reg["name"] == "np-w3"
    assert reg["criSocket"] == "unix:///var/lib/haku/dev/workers/w3/containerd/containerd.sock"
    assert reg["ignorePreflightErrors"] == ["SystemVerification"] == \
        list(IGNORED_PREFLIGHT_ERRORS)
    assert "all" not in [e.lower() for e in reg["ignorePreflightErrors"]]
    # each ignored check is explained in the file itself
    for check in IGNORED_PREFLIGHT_ERRORS:
        assert f"# {check}: " in text
    assert set(doc["timeouts"]) == {"discovery", "kubernetesAPICall", "kubeletHealthCheck",
                                    "tlsBootstrap"}


def test_join_configuration_quotes_what_it_is_given() -> None:
    odd = JoinCommand("[fd00::1]:31443", "abcdef.0123456789abcdef", "sha256:" + "a" * 64)
    doc = yaml.safe_load(join_configuration(odd, "x: y", Path("/a b/c.sock")))
    assert doc["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "[fd00::1]:31443"
    assert doc["nodeRegistration"]["name"] == "x: y"
    assert doc["nodeRegistration"]["criSocket"] == "unix:///a b/c.sock"


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_the_kubelet_drop_in_holds_the_workers_placement_and_nothing_else() -> None:
    original = json.loads(json.dumps(DOWNLOADED))
    dropin = kubelet_dropin(DOWNLOADED, PATHS, NET)
    assert original == DOWNLOADED  # not modified in place
    root = "/var/lib/haku/dev/workers/w3"
    assert dropin == {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # the tenant's paths under /etc/kubernetes and /var/lib/kubelet, moved
        "authentication": {"x509": {"clientCAFile": f"{root}/etc-kubernetes/pki/ca.crt"}},
        "staticPodPath": f"{root}/etc-kubernetes/manifests",
        "tlsCertFile": f"{root}/kubelet/pki/kubelet.crt",
        # the worker's own places
        "cgroupRoot": "/haku-w3",
        "containerRuntimeEndpoint": f"unix://{root}/containerd/containerd.sock",
        "resolvConf": f"{root}/resolv.conf",
        "podLogsDir": f"{root}/pod-logs",
        "volumePluginDir": f"{root}/kubelet/volume-plugins",
        "healthzBindAddress": "127.0.0.1",
    }
    assert not set(dropin) & set(worker_config.VM_KUBELET_KEYS)
    # Merged over the served configuration as the kubelet does (JSON merge patch): nothing of
    # the fixed kubeadm paths or the admin's PKI is left, the tenant's settings stay.
    merged = json.loads(json.dumps(DOWNLOADED))
    worker_config._merge(merged, {k: v for k, v in dropin.items()
                                  if k not in ("apiVersion", "kind")})
    leaked = [s for s in _strings(merged)
              if s.startswith(("/etc/kubernetes", "/var/lib/kubelet", str(LAYOUT.pki)))]
    assert leaked == []
    assert merged["authentication"]["webhook"] == {"cacheTTL": "0s", "enabled": True}
    assert merged["clusterDNS"] == ["10.96.0.10"] and merged["cgroupDriver"] == "cgroupfs"
    assert merged["maxPods"] == 77 and merged["evictionHard"]["nodefs.available"] == "1%"


def test_the_drop_in_never_sets_what_the_tenant_must_serve() -> None:
    served = {**DOWNLOADED, "cgroupDriver": "systemd", "failSwapOn": True}
    dropin = kubelet_dropin(served, PATHS, NET)
    assert "cgroupDriver" not in dropin and "failSwapOn" not in dropin
    # a VM key that held a path would be moved, so it is refused instead
    odd = {**DOWNLOADED, "evictionHard": {"x": "/var/lib/kubelet/x"}}
    with pytest.raises(WorkerError, match="evictionHard: those are the tenant's to serve"):
        kubelet_dropin(odd, PATHS, NET)


def test_the_drop_in_refuses_what_is_not_a_kubelet_configuration() -> None:
    with pytest.raises(WorkerError):
        kubelet_dropin({"kind": "Pod"}, PATHS, NET)
    with pytest.raises(WorkerError):
        served_kubelet_problems({"kind": "Pod"})


def test_what_the_sample_tenants_serve_meets_this_machines_needs() -> None:
    assert served_kubelet_problems(DOWNLOADED) == ([], [])
    # what a sample tenant serves, rendered by Haku, has everything the worker checks
    from haku.dev import samples
    from haku.render.tenant_bootstrap import kubelet_configuration

    doc = samples.tenant_control_plane("t", "ns", "dev-etcd", "v1.37.2")
    doc["metadata"]["uid"] = "u"
    served = kubelet_configuration(TenantControlPlaneSpec.parse(doc))
    assert served_kubelet_problems(served) == ([], [])
    assert {k: served[k] for k in worker_config.VM_KUBELET_KEYS} == config.VM_KUBELET


def test_a_tenant_without_this_machines_needs_is_refused_saying_which_patches() -> None:
    kubeadm_default = {k: v for k, v in DOWNLOADED.items()
                       if k not in worker_config.VM_KUBELET_KEYS}
    hard, soft = served_kubelet_problems({**kubeadm_default, "cgroupDriver": "systemd",
                                          "failSwapOn": True})
    assert hard == ['cgroupDriver is "systemd" (this machine needs "cgroupfs")',
                    "failCgroupV1 is unset (this machine needs false)",
                    "failSwapOn is true (this machine needs false)"]
    assert soft == [
        'evictionHard is unset (this machine needs {"memory.available": "100Mi", '
        '"nodefs.available": "1%", "imagefs.available": "1%"})',
        "imageGCHighThresholdPercent is unset (this machine needs 100)",
        "imageGCLowThresholdPercent is unset (this machine needs 99)",
        "serializeImagePulls is unset (this machine needs false)"]
    message = str(served_kubelet_error("tenants/t", hard))
    assert message.startswith("tenant tenants/t serves a KubeletConfiguration "
                              "(kube-system/kubelet-config) that a kubelet cannot run with on "
                              'this machine: cgroupDriver is "systemd"')
    settings = json.loads(message.split("spec.kubernetes.kubelet: ", 1)[1].split(" (", 1)[0])
    assert settings == config.tenant_kubelet_settings()
    assert settings["cgroupfs"] == "cgroupfs"
    assert {"op": "add", "path": "/failSwapOn", "value": False} in \
        settings["configurationJSONPatches"]
    assert "haku.dev.config.VM_KUBELET" in message and "haku.dev.samples" in message
    # 0 is not false, 1.0 is 1: JSON equality
    assert served_kubelet_problems({**DOWNLOADED, "failSwapOn": 0})[0] == [
        "failSwapOn is 0 (this machine needs false)"]
    assert served_kubelet_problems({**DOWNLOADED, "imageGCLowThresholdPercent": 99.0}) == \
        ([], [])


@pytest.mark.parametrize(("text", "flags"), [
    ('KUBELET_KUBEADM_ARGS="--hostname-override=np-w1"\n', ["--hostname-override=np-w1"]),
    ('KUBELET_KUBEADM_ARGS="--a=b --c=d e"\n', ["--a=b", "--c=d", "e"]),
    ('# comment\nKUBELET_KUBEADM_ARGS="--node-labels=x=y,z=w"', ["--node-labels=x=y,z=w"]),
    ("", []),
    ("OTHER=1\n", []),
])
def test_parse_kubeadm_flags(text: str, flags: list[str]) -> None:
    assert parse_kubeadm_flags(text) == flags


def test_kubelet_argv_runs_in_the_workers_netns_and_keeps_kubeadms_extra_flags() -> None:
    argv = kubelet_argv(Path("/bin/kubelet"), PATHS, NET, "np-w3",
                        ["--hostname-override=other", "--node-labels=a=b", "--v=4"])
    assert argv[:3] == ["nsenter", "--net=/run/netns/haku-w3", "/bin/kubelet"]
    root = "/var/lib/haku/dev/workers/w3"
    for flag in (f"--config={root}/var-lib-kubelet/config.yaml",
                 f"--config-dir={root}/kubelet.conf.d",
                 f"--kubeconfig={root}/etc-kubernetes/kubelet.conf",
                 f"--bootstrap-kubeconfig={root}/etc-kubernetes/bootstrap-kubelet.conf",
                 f"--root-dir={root}/kubelet", f"--cert-dir={root}/kubelet-pki",
                 "--node-ip=10.245.1.3", "--hostname-override=np-w3", "--node-labels=a=b"):
        assert flag in argv
    assert "--hostname-override=other" not in argv and "--v=4" not in argv
    assert [a for a in argv if a.startswith("--config")] == [
        f"--config={root}/var-lib-kubelet/config.yaml", f"--config-dir={root}/kubelet.conf.d"]
    assert PATHS.kubelet_dropin == Path(f"{root}/kubelet.conf.d/50-haku-worker.conf")
    assert not any(a.startswith("--container-runtime-endpoint") for a in argv)  # in config


def test_join_argv_binds_the_fixed_paths_in_a_private_mount_namespace() -> None:
    paths = WorkerPaths(Path("/state dir/workers/w3"))
    argv = join_argv(NET, paths, Path("/cache/kubeadm"))
    assert argv[:7] == ["nsenter", "--net=/run/netns/haku-w3", "unshare", "--mount",
                        "--propagation", "private", "sh"]
    script = argv[-1]
    assert "mount --bind '/state dir/workers/w3/etc-kubernetes' /etc/kubernetes" in script
    assert "mount --bind '/state dir/workers/w3/var-lib-kubelet' /var/lib/kubelet" in script
    assert "mount --bind '/state dir/workers/w3/resolv.conf' /etc/resolv.conf" in script
    assert script.endswith(
        "exec /cache/kubeadm join --config '/state dir/workers/w3/join.yaml' --v=1")
    assert "ip netns exec" not in " ".join(argv)  # would hide kubelet mounts from containerd


def test_node_ready() -> None:
    ready = {"status": {"conditions": [
        {"type": "MemoryPressure", "status": "False"},
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok"}]}}
    not_ready = {"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "KubeletNotReady",
         "message": "container runtime network not ready"}]}}
    assert node_ready(ready) == (True, "KubeletReady: ok")
    assert node_ready(not_ready)[0] is False
    assert "network not ready" in node_ready(not_ready)[1]
    assert node_ready({}) == (False, "no Ready condition yet")


# ------------------------------------------------------------------ records and logs


def test_worker_record_round_trip_ignores_unknown_keys(tmp_path: Path) -> None:
    layout = Layout(state_dir=tmp_path)
    paths = worker_config.worker_paths(layout, 2)
    paths.root.mkdir(parents=True)
    w = worker.Worker(name="w2", index=2, tenant="tenants/np", node_name="np-w2",
                      endpoint="10.245.0.1:31443", address="10.245.1.2",
                      pod_cidr="10.246.2.0/24", netns="haku-w2", host_link="hkw2",
                      cgroup="/haku-w2", kubernetes="v1.37.2", created="2026-01-01T00:00:00+00:00",
                      pids={"containerd": 10})
    worker._save(paths, w)
    data = json.loads(paths.record.read_text())
    paths.record.write_text(json.dumps(data | {"from_the_future": 1}))
    assert worker.load(layout, 2) == w
    assert not w.behind_nat  # records from before --behind-nat load as not behind NAT
    w.behind_nat = True
    worker._save(paths, w)
    assert worker.load(layout, 2) == w
    assert [x.name for x in worker.list_workers(layout)] == ["w2"]
    assert worker.resolve(layout, "np-w2") == 2
    assert worker.resolve(layout, "w2") == 2
    for missing in ("nope", "w9"):
        with pytest.raises(WorkerError, match="np-w2"):
            worker.resolve(layout, missing)


def test_join_log_tail_drops_the_coloured_table(tmp_path: Path) -> None:
    log = tmp_path / "join.log"
    log.write_text("[preflight] Running pre-flight checks\n"
                   "\x1b[0;37mCONFIG_CGROUPS\x1b[0m: \x1b[0;32menabled\x1b[0m\n"
                   "error: error execution phase preflight: boom\n")
    assert worker.join_log_tail(log) == ("[preflight] Running pre-flight checks\n"
                                         "error: error execution phase preflight: boom")
