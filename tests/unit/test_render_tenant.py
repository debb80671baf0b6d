"""The tenant renderers: certificate set, kubeconfigs, Deployment, Service, Ingress."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.datastore import TenantConnection
from haku.render import InvalidSpec, controlplane, pki, tenant_kubeconfigs, tenant_pki

ALG = pki.KeyAlgorithm.ECDSA_P256
NOW = datetime(2026, 11, 23, tzinfo=UTC)


def tcp(**spec: Any) -> TenantControlPlaneSpec:
    base: dict[str, Any] = {"kubernetes": {"version": "v1.37.2"},
                            "controlPlane": {"service": {"serviceType": "ClusterIP"}}}
    base.update(spec)
    return TenantControlPlaneSpec.parse({
        "metadata": {"name": "t1", "namespace": "tenants", "uid": "1234-abcd", "generation": 3},
        "spec": base})


def sans(pem: bytes) -> tuple[set[str], set[str]]:
    ext = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    return (set(ext.get_values_for_type(x509.DNSName)),
            {str(i) for i in ext.get_values_for_type(x509.IPAddress)})


def test_spec_defaults_match_the_crd_and_kamaji() -> None:
    s = tcp()
    assert s.replicas == 2 and s.port == 6443 and s.cluster_domain == "cluster.local"
    assert s.data_store_schema == s.data_store_username == "1234-abcd"
    assert s.dns_service_ips == ("10.96.0.10",)
    assert s.kubernetes_service_ips == ["10.96.0.1"]
    assert s.image("kube-apiserver") == "registry.k8s.io/kube-apiserver:v1.37.2"
    custom = tcp(controlPlane={"service": {"serviceType": "ClusterIP"}, "deployment": {
        "registrySettings": {"registry": "my.reg", "tagSuffix": "-fips"}}},
        networkProfile={"serviceCidrs": ["fd00::/108"]})
    assert custom.image("kube-scheduler") == "my.reg/kube-scheduler:v1.37.2-fips"
    assert custom.dns_service_ips == ("fd00::10",)


def test_a_fresh_pki_is_complete_and_a_second_plan_keeps_it_byte_for_byte() -> None:
    s = tcp(networkProfile={"certSANs": ["api.example.com", "192.0.2.10"]})
    first = tenant_pki.plan(s, {}, ("10.0.0.7",), ALG, NOW)
    assert set(first.issued) == {"ca", "ca-bundle", "front-proxy-ca", "apiserver",
                                 "apiserver-kubelet-client", "front-proxy-client", "sa"}
    keys = {"ca.crt", "ca.key", "ca-bundle.crt", "apiserver.crt", "apiserver.key",
            "apiserver-kubelet-client.crt",
            "apiserver-kubelet-client.key", "front-proxy-ca.crt", "front-proxy-ca.key",
            "front-proxy-client.crt", "front-proxy-client.key", "sa.key", "sa.pub"}
    assert set(first.data) == keys
    dns, ips = sans(first.data["apiserver.crt"])
    assert {"kubernetes.default.svc.cluster.local", "t1.tenants.svc", "api.example.com"} <= dns
    assert {"10.96.0.1", "127.0.0.1", "10.0.0.7", "192.0.2.10"} <= ips
    kubelet_client = x509.load_pem_x509_certificate(first.data["apiserver-kubelet-client.crt"])
    assert kubelet_client.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value \
        == "kubeadm:cluster-admins"
    again = tenant_pki.plan(s, first.data, ("10.0.0.7",), ALG, NOW + timedelta(days=1))
    assert not again.changed and again.data == first.data


def test_only_what_needs_it_is_reissued() -> None:
    s = tcp()
    base = tenant_pki.plan(s, {}, ("10.0.0.7",), ALG, NOW).data
    moved = tenant_pki.plan(s, base, ("10.0.0.8",), ALG, NOW)
    assert moved.issued == {"apiserver": "lacks 10.0.0.8"}
    assert moved.data["ca.crt"] == base["ca.crt"]
    late = tenant_pki.plan(s, base, ("10.0.0.7",), ALG, NOW + timedelta(days=340))
    assert set(late.issued) == {"apiserver", "apiserver-kubelet-client", "front-proxy-client"}
    assert all(why.startswith("expires ") for why in late.issued.values())
    assert late.data["ca.key"] == base["ca.key"] and late.data["sa.key"] == base["sa.key"]
    new_ca = dict(base)
    del new_ca["ca.key"]
    rotated = tenant_pki.plan(s, new_ca, ("10.0.0.7",), ALG, NOW)
    assert rotated.issued["ca"] == "missing"
    assert rotated.issued["apiserver"] == "not signed by the current CA"
    assert "front-proxy-client" not in rotated.issued  # other CA, untouched
    swapped = dict(base, **{"apiserver.key": base["front-proxy-client.key"]})
    assert tenant_pki.plan(s, swapped, ("10.0.0.7",), ALG, NOW).issued == {
        "apiserver": "key does not match"}


def test_kubeconfigs_carry_kubeadm_identities_and_follow_the_endpoint() -> None:
    ca = pki.new_ca("kubernetes", ALG)
    first = tenant_kubeconfigs.plan("t1", ca, {}, "https://10.0.0.7:6443",
                                    "https://127.0.0.1:6443", algorithm=ALG, now=NOW)
    assert set(first.data) == {"admin.conf", "super-admin.conf", "controller-manager.conf",
                               "scheduler.conf"}
    admin = yaml.safe_load(first.data["admin.conf"])
    assert admin["clusters"][0]["cluster"]["server"] == "https://10.0.0.7:6443"
    cert = x509.load_pem_x509_certificate(
        base64.b64decode(admin["users"][0]["user"]["client-certificate-data"]))
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == \
        "kubeadm:cluster-admins"
    cm = yaml.safe_load(first.data["controller-manager.conf"])
    assert cm["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    same = tenant_kubeconfigs.plan("t1", ca, first.data, "https://10.0.0.7:6443",
                                   "https://127.0.0.1:6443", algorithm=ALG, now=NOW)
    assert not same.changed and same.data == first.data
    moved = tenant_kubeconfigs.plan("t1", ca, first.data, "https://10.0.0.9:6443",
                                    "https://127.0.0.1:6443", algorithm=ALG, now=NOW)
    assert set(moved.issued) == {"admin.conf", "super-admin.conf"}
    other_ca = pki.new_ca("kubernetes", ALG)
    assert len(tenant_kubeconfigs.plan("t1", other_ca, first.data, "https://10.0.0.7:6443",
                                       "https://127.0.0.1:6443", algorithm=ALG,
                                       now=NOW).issued) == 4


def test_managed_flags_win_defaults_yield_and_extras_stay_verbatim() -> None:
    args = controlplane.merge_args(
        {"--secure-port": "6443"}, {"--leader-elect": "true", "--v": "0"},
        ["--secure-port=1", "--leader-elect=false", "--feature-gates=A=true",
         "--feature-gates=B=true"])
    assert args == ["--secure-port=6443", "--v=0", "--leader-elect=false",
                    "--feature-gates=A=true", "--feature-gates=B=true"]


ETCD = TenantConnection(driver="etcd", etcd_servers=("https://10.245.0.1:12379",),
                        etcd_prefix="/t1", files={"ca.crt": b"", "tls.crt": b"", "tls.key": b""})
KINE = TenantConnection(driver="PostgreSQL", kine_endpoint="postgres://u:secret@h:5432/db",
                        files={"ca.crt": b""})


def _containers(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in d["spec"]["template"]["spec"]["containers"]}


def test_deployment_on_etcd() -> None:
    s = tcp(controlPlane={"service": {"serviceType": "ClusterIP"}, "deployment": {
        "replicas": 3, "extraArgs": {"apiServer": ["--v=4", "--secure-port=1"]}}})
    d = controlplane.deployment(s, ETCD, "10.0.0.7", {"pki": "abc"}, "kine:x")
    assert d["spec"]["replicas"] == 3
    assert d["spec"]["selector"]["matchLabels"] == {"haku.dev/tenant-control-plane": "t1"}
    assert d["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": "100%"}
    c = _containers(d)
    assert list(c) == ["kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    api = c["kube-apiserver"]
    assert api["image"] == "registry.k8s.io/kube-apiserver:v1.37.2"
    assert "--etcd-prefix=/t1" in api["args"] and "--secure-port=6443" in api["args"]
    assert "--etcd-servers=https://10.245.0.1:12379" in api["args"]
    # No compaction of its own (the operator compacts a shared etcd), but a non-zero
    # interval, without which kube-apiserver never watches compact_rev_key.
    assert [a for a in api["args"] if a.startswith("--etcd-compaction-interval")] == [
        "--etcd-compaction-interval=8760h0m0s"]
    assert "--advertise-address=10.0.0.7" in api["args"] and api["args"][-1] == "--v=4"
    assert "--secure-port=1" not in api["args"]
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 6443,
                                                "scheme": "HTTPS"}
    assert "--controllers=*,bootstrapsigner,tokencleaner" in c["kube-controller-manager"]["args"]
    pod = d["spec"]["template"]
    assert pod["metadata"]["annotations"]["checksum.haku.dev/pki"] == "abc"
    assert pod["spec"]["automountServiceAccountToken"] is False


LONG_LEASES = ["--leader-elect=true", "--leader-elect-lease-duration=137s",
               "--leader-elect-renew-deadline=107s", "--leader-elect-retry-period=5s"]


def _leader_flags(args: list[str]) -> list[str]:
    return [a for a in args if a.startswith("--leader-elect")]


def test_controller_manager_and_scheduler_get_long_leader_election_timings() -> None:
    c = _containers(controlplane.deployment(tcp(), ETCD, "10.0.0.7", {}, "kine:x"))
    for name in ("kube-controller-manager", "kube-scheduler"):
        assert _leader_flags(c[name]["args"]) == LONG_LEASES
    assert not _leader_flags(c["kube-apiserver"]["args"])


GATE = "ControllerManagerReleaseLeaderElectionLockOnExit"


def test_controller_manager_releases_its_lease_on_exit_unless_the_user_says_otherwise() -> None:
    c = _containers(controlplane.deployment(tcp(), ETCD, "10.0.0.7", {}, "kine:x"))
    gates = [a for a in c["kube-controller-manager"]["args"] if a.startswith("--feature-gates")]
    assert gates == [f"--feature-gates={GATE}=true"]
    for name in ("kube-apiserver", "kube-scheduler"):
        assert not [a for a in c[name]["args"] if a.startswith("--feature-gates")]
    # the user's --feature-gates come after Haku's: the component merges repeated flags and
    # the later value of a gate wins, so theirs add to it or turn it off
    s = tcp(controlPlane={"service": {"serviceType": "ClusterIP"}, "deployment": {
        "extraArgs": {"controllerManager": ["--feature-gates=A=true",
                                            f"--feature-gates={GATE}=false"]}}})
    kcm = _containers(controlplane.deployment(s, ETCD, "10.0.0.7", {}, "kine:x"))[
        "kube-controller-manager"]["args"]
    assert [a for a in kcm if a.startswith("--feature-gates")] == [
        f"--feature-gates={GATE}=true", "--feature-gates=A=true", f"--feature-gates={GATE}=false"]


def test_extra_args_override_the_leader_election_timings() -> None:
    mine = ["--leader-elect-lease-duration=60s", "--leader-elect-renew-deadline=40s",
            "--leader-elect-retry-period=5s"]
    s = tcp(controlPlane={"service": {"serviceType": "ClusterIP"}, "deployment": {
        "extraArgs": {"controllerManager": mine,
                      "scheduler": ["--leader-elect-lease-duration=200s"]}}})
    c = _containers(controlplane.deployment(s, ETCD, "10.0.0.7", {}, "kine:x"))
    kcm, sched = c["kube-controller-manager"]["args"], c["kube-scheduler"]["args"]
    assert _leader_flags(kcm) == ["--leader-elect=true", *mine]
    assert kcm[-3:] == mine  # the user's, verbatim and last
    # one flag overridden, the others keep Haku's defaults
    assert _leader_flags(sched) == ["--leader-elect=true", "--leader-elect-renew-deadline=107s",
                                    "--leader-elect-retry-period=5s",
                                    "--leader-elect-lease-duration=200s"]


def test_leader_election_timings_client_go_would_refuse_are_invalid() -> None:
    # 60 s lease under the default 107 s renew deadline: the component would crash-loop
    s = tcp(controlPlane={"service": {"serviceType": "ClusterIP"}, "deployment": {
        "extraArgs": {"scheduler": ["--leader-elect-lease-duration=1m"]}}})
    with pytest.raises(InvalidSpec, match="lease duration > renew deadline") as bad:
        controlplane.deployment(s, ETCD, "10.0.0.7", {}, "kine:x")
    assert bad.value.field == "spec.controlPlane.deployment.extraArgs.scheduler"
    s = tcp(controlPlane={"service": {"serviceType": "ClusterIP"}, "deployment": {
        "extraArgs": {"controllerManager": ["--leader-elect-retry-period=1m30s"]}}})
    with pytest.raises(InvalidSpec, match=r"extraArgs\.controllerManager"):
        controlplane.deployment(s, ETCD, "10.0.0.7", {}, "kine:x")
    # longer than the defaults, or leader election off: fine
    for extra in (["--leader-elect-lease-duration=2m30s"],
                  ["--leader-elect=false", "--leader-elect-lease-duration=1s"]):
        s = tcp(controlPlane={"service": {"serviceType": "ClusterIP"}, "deployment": {
            "extraArgs": {"scheduler": extra}}})
        controlplane.deployment(s, ETCD, "10.0.0.7", {}, "kine:x")


def test_deployment_on_sql_runs_kine_with_the_password_out_of_argv() -> None:
    d = controlplane.deployment(tcp(), KINE, "10.0.0.7", {}, "docker.io/rancher/kine:v0.17.5")
    c = _containers(d)
    assert "kine" in c
    assert "secret" not in " ".join(c["kine"]["args"] + c["kube-apiserver"]["args"])
    assert c["kine"]["env"] == [{"name": "KINE_ENDPOINT", "valueFrom": {"secretKeyRef": {
        "name": "t1-datastore", "key": "KINE_ENDPOINT"}}}]
    assert "--etcd-servers=unix:///var/run/kine/kine.sock" in c["kube-apiserver"]["args"]
    assert {"name": "datastore", "mountPath": "/etc/kine/tls", "readOnly": True} in \
        c["kine"]["volumeMounts"]
    volumes = {v["name"] for v in d["spec"]["template"]["spec"]["volumes"]}
    assert {"pki", "kubeconfigs", "datastore", "kine-socket"} <= volumes
    # kine outlives kube-apiserver's shutdown (its delay, then its watches ended)
    assert c["kine"]["lifecycle"] == {"preStop": {"sleep": {"seconds": 10}}}
    args = c["kube-apiserver"]["args"]
    assert "--shutdown-delay-duration=5s" in args
    assert "--shutdown-watch-termination-grace-period=10s" in args
    assert "lifecycle" not in c["kube-apiserver"]
    # Its own kine, its own compaction: kube-apiserver's default interval (no flag).
    assert not [a for a in args if a.startswith("--etcd-compaction-interval")]


def test_service_and_ingress() -> None:
    node_port = tcp(controlPlane={"service": {"serviceType": "NodePort"}},
                    networkProfile={"port": 31443})
    svc = controlplane.service(node_port)
    assert svc["spec"]["ports"][0] == {"name": "kube-apiserver", "protocol": "TCP",
                                       "port": 31443, "targetPort": 31443, "nodePort": 31443}
    assert "nodePort" not in controlplane.service(tcp())["spec"]["ports"][0]
    assert controlplane.ingress(tcp()) is None
    ing = controlplane.ingress(tcp(controlPlane={
        "service": {"serviceType": "ClusterIP"},
        "ingress": {"hostname": "t1.example.com:443", "ingressClassName": "nginx"}}))
    assert ing is not None
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["rules"][0]["host"] == "t1.example.com"


def test_control_plane_probes_are_kubeadms() -> None:
    c = _containers(controlplane.deployment(tcp(), KINE, "10.0.0.7", {}, "kine:x"))
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        live, ready, start = (c[name][p] for p in ("livenessProbe", "readinessProbe",
                                                   "startupProbe"))
        assert {k: live[k] for k in live if k != "httpGet"} == {
            "initialDelaySeconds": 10, "timeoutSeconds": 15, "periodSeconds": 10,
            "failureThreshold": 8}
        assert (ready["timeoutSeconds"], ready["periodSeconds"], ready["failureThreshold"]) \
            == (15, 1, 3)
        assert (start["timeoutSeconds"], start["periodSeconds"], start["failureThreshold"]) \
            == (15, 1, 240)  # kubeadm's 4 minutes to come up, checked every second
    assert c["kube-apiserver"]["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["kube-apiserver"]["startupProbe"]["httpGet"]["path"] == "/livez"
    assert c["kube-apiserver"]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "livenessProbe" not in c["kine"]  # kine serves no health endpoint


def test_every_container_requests_resources_unless_the_spec_sets_them() -> None:
    c = _containers(controlplane.deployment(tcp(), KINE, "10.0.0.7", {}, "kine:x"))
    assert {n: x["resources"] for n, x in c.items()} == {
        "kube-apiserver": {"requests": {"cpu": "25m", "memory": "192Mi"}},
        "kube-controller-manager": {"requests": {"cpu": "10m", "memory": "48Mi"}},
        "kube-scheduler": {"requests": {"cpu": "5m", "memory": "24Mi"}},
        "kine": {"requests": {"cpu": "5m", "memory": "24Mi"}},
    }
    assert all("limits" not in x["resources"] for x in c.values())
    given = tcp(controlPlane={"service": {"serviceType": "ClusterIP"}, "deployment": {
        "resources": {"apiServer": {"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}},
                      "scheduler": {}}}})
    c = _containers(controlplane.deployment(given, ETCD, "10.0.0.7", {}, "kine:x"))
    assert c["kube-apiserver"]["resources"] == {"requests": {"cpu": "1"},
                                                "limits": {"memory": "2Gi"}}
    assert "resources" not in c["kube-scheduler"]  # {} in the spec: none
    assert c["kube-controller-manager"]["resources"]["requests"]["cpu"] == "10m"
    bare = _containers(controlplane.deployment(tcp(), ETCD, "10.0.0.7", {}, "kine:x",
                                               default_resources=None))
    assert all("resources" not in x for x in bare.values())
    # The defaults are not shared with the manifest: changing one leaves the other alone.
    c = _containers(controlplane.deployment(tcp(), ETCD, "10.0.0.7", {}, "kine:x"))
    c["kube-apiserver"]["resources"]["requests"]["cpu"] = "9"
    assert controlplane.DEFAULT_RESOURCES["kube-apiserver"]["requests"]["cpu"] == "25m"


def test_pods_get_the_priority_class() -> None:
    def pod(**kw: Any) -> dict[str, Any]:
        d = controlplane.deployment(tcp(), ETCD, "10.0.0.7", {}, "kine:x", **kw)
        spec: dict[str, Any] = d["spec"]["template"]["spec"]
        return spec

    assert pod()["priorityClassName"] == "haku-control-plane"
    assert pod(priority_class="tenants-gold")["priorityClassName"] == "tenants-gold"
    assert "priorityClassName" not in pod(priority_class=None)
    pc = controlplane.priority_class()
    assert pc["metadata"]["name"] == "haku-control-plane"
    assert 0 < pc["value"] <= 1_000_000_000 and pc["globalDefault"] is False


@pytest.mark.parametrize(("network", "field"), [
    ({"serviceCidr": "10.96.0.0/32"}, "spec.networkProfile.serviceCidr"),
    ({"serviceCidr": "10.96.0.0/30"}, "spec.networkProfile.serviceCidr"),
    ({"serviceCidrs": ["10.96.0.0/16", "fd00::/128"]}, "spec.networkProfile.serviceCidrs[1]"),
    ({"serviceCidrs": ["fd00::/48"]}, "spec.networkProfile.serviceCidrs[0]"),
    ({"serviceCidrs": ["not-a-cidr"]}, "spec.networkProfile.serviceCidrs[0]"),
])
def test_an_unusable_service_cidr_is_invalid_spec_not_a_crash(
    network: dict[str, Any], field: str
) -> None:
    s = tcp(networkProfile=network)  # parsing never fails
    with pytest.raises(InvalidSpec) as info:
        tenant_pki.plan(s, {}, ("10.0.0.7",), ALG, NOW)
    assert info.value.field == field
    assert field in str(info.value) and isinstance(info.value, ValueError)
    with pytest.raises(InvalidSpec) as again:
        controlplane.deployment(s, ETCD, "10.0.0.7", {}, "kine:x")
    assert again.value.field == field
    with pytest.raises(ValueError, match=r"service range|not a CIDR"):
        s.kubernetes_service_ips  # noqa: B018  (a property that raises)


def test_the_smallest_service_ranges_work() -> None:
    s = tcp(networkProfile={"serviceCidrs": ["10.96.0.0/29", "fd00:10:96::/125"],
                            "dnsServiceIPs": ["10.96.0.6"]})
    assert s.kubernetes_service_ips == ["10.96.0.1", "fd00:10:96::1"]
    assert controlplane.kubernetes_service_ips(s) == ["10.96.0.1", "fd00:10:96::1"]
    _, ips = tenant_pki.apiserver_names(s)
    assert {"10.96.0.1", "fd00:10:96::1"} <= set(ips)


@pytest.mark.parametrize(("change", "field"), [
    ({"networkProfile": {"certSANs": ["api.example.com", "bücher.example"]}},
     "spec.networkProfile.certSANs[1]"),
    ({"networkProfile": {"address": "hôte.example"}}, "spec.networkProfile.address"),
    ({"controlPlane": {"service": {"serviceType": "ClusterIP"},
                       "ingress": {"hostname": "tenant.exämple:443"}}},
     "spec.controlPlane.ingress.hostname"),
])
def test_a_name_a_certificate_cannot_hold_is_invalid_spec(change: dict[str, Any],
                                                           field: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        tenant_pki.plan(tcp(**change), {}, ("10.0.0.7",), ALG, NOW)
    assert info.value.field == field
    assert "xn--" in info.value.message or "ASCII" in info.value.message


def test_an_endpoint_a_certificate_cannot_hold_names_where_it_came_from() -> None:
    with pytest.raises(InvalidSpec) as info:
        tenant_pki.apiserver_names(tcp(), ("lb-ü.example",))
    assert info.value.field == "status.controlPlaneEndpoint"
    s = tcp(networkProfile={"advertiseAddress": "192.0.2.50"})
    dns, ips = tenant_pki.apiserver_names(s, ("lb.example", "192.0.2.50"))
    assert "lb.example" in dns and "192.0.2.50" in ips
    # pki itself refuses what cryptography would not encode, naming the value.
    ca = pki.new_ca("kubernetes", ALG)
    with pytest.raises(ValueError, match="bücher"):
        pki.issue(ca, "x", pki.Usage.SERVER, dns_names=["bücher.example"], algorithm=ALG)


def test_additional_ports_clashing_with_the_api_port_are_invalid_spec() -> None:
    def svc(ports: list[dict[str, Any]], **network: Any) -> dict[str, Any]:
        return controlplane.service(tcp(controlPlane={"service": {
            "serviceType": "ClusterIP", "additionalPorts": ports}}, networkProfile=network))

    with pytest.raises(InvalidSpec) as info:
        svc([{"name": "extra", "port": 6443}])
    assert info.value.field == "spec.controlPlane.service.additionalPorts[0].port"
    with pytest.raises(InvalidSpec, match=re.escape("additionalPorts[1].name")):
        svc([{"name": "a", "port": 1}, {"name": "a", "port": 2}])
    with pytest.raises(InvalidSpec, match=re.escape("additionalPorts[1].port")):
        svc([{"name": "a", "port": 1}, {"name": "b", "port": 1}])
    with pytest.raises(InvalidSpec, match=re.escape("additionalPorts[0].name")):
        svc([{"name": "kube-apiserver", "port": 1}])
    with pytest.raises(InvalidSpec):
        svc([{"name": "x", "port": 7443}], port=7443)
    ok = svc([{"name": "udp", "port": 6443, "protocol": "UDP"}, {"name": "b", "port": 6444}])
    assert [p["port"] for p in ok["spec"]["ports"]] == [6443, 6443, 6444]


def test_a_name_too_long_for_the_service_is_invalid_spec() -> None:
    def named(name: str) -> TenantControlPlaneSpec:
        return TenantControlPlaneSpec.parse({
            "metadata": {"name": name, "namespace": "tenants", "uid": "u"},
            "spec": {"kubernetes": {"version": "v1.37.2"},
                     "controlPlane": {"service": {"serviceType": "ClusterIP"}}}})

    assert controlplane.service(named("t" * 63))["metadata"]["name"] == "t" * 63
    for bad in ("t" * 64, "1tenant", "a.b"):
        with pytest.raises(InvalidSpec) as info:
            controlplane.service(named(bad))
        assert info.value.field == "metadata.name"
        with pytest.raises(InvalidSpec):
            controlplane.deployment(named(bad), ETCD, "10.0.0.7", {}, "kine:x")


def test_invalid_spec_carries_field_and_message() -> None:
    import copy
    import pickle

    e = InvalidSpec("spec.networkProfile.serviceCidr", "too small")
    assert (e.field, e.message, str(e)) == ("spec.networkProfile.serviceCidr", "too small",
                                            "spec.networkProfile.serviceCidr: too small")
    for twin in (pickle.loads(pickle.dumps(e)), copy.copy(e)):  # noqa: S301
        assert (twin.field, twin.message) == (e.field, e.message)


def test_a_weakening_flag_admitted_before_the_rule_is_not_rendered() -> None:
    from haku.render import InvalidSpec

    old = tcp(controlPlane={"service": {"serviceType": "ClusterIP"}, "deployment": {
        "extraArgs": {"apiServer": ["--v=2", "--authorization-mode=Node,AlwaysAllow"]}}})
    with pytest.raises(InvalidSpec) as refused:
        controlplane.deployment(old, ETCD, "10.0.0.7", {}, "kine:x")
    assert refused.value.field == "spec.controlPlane.deployment.extraArgs.apiServer[1]"
    assert "AlwaysAllow" in str(refused.value)
    kine = tcp(controlPlane={"service": {"serviceType": "ClusterIP"}, "deployment": {
        "extraArgs": {"kine": ["--listen-address=0.0.0.0:2379"]}}})
    with pytest.raises(InvalidSpec, match=r"extraArgs\.kine"):
        controlplane.deployment(kine, KINE, "10.0.0.7", {}, "kine:x")


def test_kube_apiserver_listens_and_is_probed_on_its_secure_port() -> None:
    """A NodePort's allocated port (controlplane.secure_port): the flag, the named container
    port the NetworkPolicy admits, and the probes all use it."""
    api = _containers(controlplane.deployment(tcp(), ETCD, "10.0.0.7", {}, "kine:x",
                                              secure_port=31234))["kube-apiserver"]
    assert "--secure-port=31234" in api["args"]
    assert api["ports"] == [{"name": controlplane.API_PORT_NAME, "containerPort": 31234,
                             "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert api[probe]["httpGet"]["port"] == 31234
    default = _containers(controlplane.deployment(tcp(), ETCD, "10.0.0.7", {}, "kine:x"))
    assert "--secure-port=6443" in default["kube-apiserver"]["args"]
