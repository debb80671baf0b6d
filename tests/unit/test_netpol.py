"""kube-network-policies in the dev admin cluster: its build, identity, command line, and the
rules that queue the admin pods' traffic to it (pure parts; the node tier runs the real thing
in tests/node/test_network_policy.py)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from haku.dev import netpol, toolchain, worker_net
from haku.dev.layout import Layout
from haku.dev.versions import Versions

from .fakes import on_path, script

# Kamaji's defaults, which the operator gives a tenant that names no ranges.
TENANT_SERVICES, TENANT_PODS = "10.96.0.0/16", "10.244.0.0/16"


def test_the_admin_ranges_stay_apart_from_tenant_defaults_and_workers(tmp_path: Path) -> None:
    lay = Layout(state_dir=tmp_path)
    admin = [ipaddress.ip_network(n) for n in (lay.service_cidr, lay.pod_cidr, lay.node_ip)]
    others = [ipaddress.ip_network(n) for n in (
        TENANT_SERVICES, TENANT_PODS, worker_net.WORKER_ADDRESSES, worker_net.WORKER_POD_RANGES)]
    for a in admin:
        for b in others:
            assert not a.overlaps(b), (a, b)
    assert (lay.service_cidr, lay.pod_cidr) == ("10.32.0.0/16", "10.240.0.0/24")
    assert lay.kubernetes_service_ip == "10.32.0.1"
    assert lay.cni_gateway == "10.240.0.1"


def test_the_version_is_pinned_and_overridable() -> None:
    assert Versions().kube_network_policies == "v0.8.0"
    v = Versions.from_env({"HAKU_KUBE_NETWORK_POLICIES_VERSION": "v0.7.0"})
    assert v.kube_network_policies == "v0.7.0"
    assert v.with_kubernetes("v1.36.3").kube_network_policies == "v0.7.0"
    with pytest.raises(ValueError, match="kube_network_policies version"):
        Versions.from_env({"HAKU_KUBE_NETWORK_POLICIES_VERSION": "0.8"})
    c = toolchain.components(v)["kube-network-policies"]
    assert (c.name, c.version, c.binaries) == ("kube-network-policies", "v0.7.0",
                                               ("kube-network-policies",))
    assert "HAKU_KUBE_NETWORK_POLICIES_VERSION" in toolchain.VERSION_SETTINGS[
        toolchain.MODULES["kube-network-policies"]]


def test_it_is_built_from_its_cmd_package(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    on_path(monkeypatch, bin_dir)
    # A go that answers `mod download -json`, records everything and "builds" the -o file.
    script(bin_dir, "go", f"""
echo "$@" >> {calls}
case "$1" in
  mod) echo '{{"GoMod": "/dev/null"}}' ;;
  build) while [ $# -gt 1 ]; do [ "$1" = -o ] && : > "$2"; shift; done ;;
esac
""")
    root = tmp_path / "cache"
    built = toolchain.ensure(["kube-network-policies"], Versions(), root,
                             progress=lambda _: None)
    d = built["kube-network-policies"]
    assert d == root / "bin" / "kube-network-policies-v0.8.0"
    assert (d / "kube-network-policies").is_file()
    assert json.loads((d / toolchain.STAMP).read_text())["version"] == "v0.8.0"
    lines = calls.read_text().splitlines()
    assert "get sigs.k8s.io/kube-network-policies@v0.8.0" in lines
    build = next(line for line in lines if line.startswith("build "))
    assert build.endswith(" sigs.k8s.io/kube-network-policies/cmd")
    assert "-trimpath" in build


def test_rbac_is_upstreams_list_and_watch(tmp_path: Path) -> None:
    sa, role, binding = netpol.rbac_objects()
    assert (sa["kind"], sa["metadata"]["namespace"]) == ("ServiceAccount", "kube-system")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {(g, r, v) for g, r in (("", "pods"), ("", "namespaces"),
                                               ("networking.k8s.io", "networkpolicies"))
                       for v in ("list", "watch")}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "kube-system"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_it_runs_with_its_own_run_directory_and_flags(tmp_path: Path) -> None:
    lay = Layout(state_dir=tmp_path)
    argv = netpol.argv(Path("/cache/kube-network-policies"), lay)
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert argv[7] == 'mount --bind "$0" /run && exec "$@"'
    assert argv[8] == str(tmp_path / "kube-network-policies" / "run")  # $0, bound on /run
    assert argv[9:] == ["/cache/kube-network-policies", "--hostname-override=haku-admin",
                        "--nfqueue-id=100", "--metrics-bind-address=127.0.0.1:9080"]
    env = netpol.env(lay)
    assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == (
        "127.0.0.1", "6443")
    assert lay.listen_ports()[9080] == "kube-network-policies (metrics)"
    assert 9080 not in Layout.api_only(tmp_path).listen_ports()


def test_credentials_land_where_in_cluster_config_reads_them(tmp_path: Path) -> None:
    lay = Layout(state_dir=tmp_path)
    lay.pki.mkdir(parents=True)
    (lay.pki / "ca.crt").write_text("CA")
    d = netpol.write_credentials(lay, "tok")
    # /var/run/secrets/kubernetes.io/serviceaccount, with /run the run directory
    assert d == netpol.run_dir(lay) / "secrets" / "kubernetes.io" / "serviceaccount"
    assert {p.name: p.read_text() for p in d.iterdir()} == {
        "token": "tok", "ca.crt": "CA", "namespace": "kube-system"}
    assert all(p.stat().st_mode & 0o077 == 0 for p in d.iterdir())
    netpol.write_credentials(lay, "renewed")
    assert (d / "token").read_text() == "renewed"


def test_steering_queues_admin_pod_traffic_only(tmp_path: Path) -> None:
    lay = Layout(state_dir=tmp_path)
    rules = netpol.steering_rules(lay)
    assert set(rules) == {"HAKU-NETPOL-POSTROUTING", "HAKU-NETPOL-INPUT"}
    assert netpol.JUMPS == {"HAKU-NETPOL-POSTROUTING": "POSTROUTING",
                            "HAKU-NETPOL-INPUT": "INPUT"}
    text = json.dumps(rules)
    assert "10.245.1." not in text and "10.246." not in text and "hkw" not in text
    assert "--queue-bypass" not in text  # fails closed, as kube-network-policies' default
    queued = [r for chain in rules.values() for r in chain if "NFQUEUE" in r]
    assert all(r[r.index("--queue-num") + 1] == "100" for r in queued)
    # Every queued packet is from or to an admin pod, or came in on the admin pod bridge.
    for r in queued:
        assert ("-s" in r and r[r.index("-s") + 1] == lay.pod_cidr) or \
            ("-d" in r and r[r.index("-d") + 1] == lay.pod_cidr) or \
            ("-i" in r and r[r.index("-i") + 1] == lay.cni_bridge), r
    post, inp = rules["HAKU-NETPOL-POSTROUTING"], rules["HAKU-NETPOL-INPUT"]
    # Established connections and root's own sockets pass before anything is queued.
    assert "--uid-owner" in post[0] and post[0][-1] == "RETURN"
    assert "RELATED,ESTABLISHED" in post[1] and "RELATED,ESTABLISHED" in inp[0]
    assert not any("--uid-owner" in r for r in inp)  # no owner on INPUT


def test_queue_bound_reads_nfnetlink_queue(tmp_path: Path) -> None:
    proc = tmp_path / "nfnetlink_queue"
    assert not netpol.queue_bound(100, proc)  # no file
    proc.write_text("")
    assert not netpol.queue_bound(100, proc)
    proc.write_text("  100  51234     0 2   128     0     0        7  1\n"
                    " 1000  51235     0 2   128     0     0        0  1\n")
    assert netpol.queue_bound(100, proc)
    assert netpol.queue_bound(1000, proc)
    assert not netpol.queue_bound(10, proc)


def test_steering_is_written_in_one_restore_transaction(tmp_path: Path) -> None:
    text = netpol.steering_restore(Layout(state_dir=tmp_path))
    lines = text.splitlines()
    assert lines[0] == "*mangle" and lines[-1] == "COMMIT"
    # Declared chains are emptied and refilled atomically (iptables-restore --noflush).
    assert ":HAKU-NETPOL-POSTROUTING - [0:0]" in lines and ":HAKU-NETPOL-INPUT - [0:0]" in lines
    assert ('-A HAKU-NETPOL-INPUT -i haku-cni0 -m comment --comment "haku: NetworkPolicy: '
            'from an admin pod to the node itself" -j NFQUEUE --queue-num 100') in lines
    assert sum(line.startswith("-A ") for line in lines) == sum(
        len(r) for r in netpol.steering_rules(Layout(state_dir=tmp_path)).values())
