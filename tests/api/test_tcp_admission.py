"""The TenantControlPlane API on a real kube-apiserver: a Kamaji manifest ports by changing
apiVersion, defaults are filled in, and malformed or unsupported specs are refused with a
message that says why."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.generic_resource import create_namespaced_resource

from haku.controller.operator import install_crds, wait_established
from haku.dev.cluster import DevCluster

TCP = create_namespaced_resource("haku.dev", "v1alpha1", "TenantControlPlane",
                                 "tenantcontrolplanes")

# Kamaji's getting-started manifest, with only apiVersion changed.
KAMAJI_SAMPLE = yaml.safe_load("""
apiVersion: haku.dev/v1alpha1
kind: TenantControlPlane
metadata:
  name: tenant-00
  namespace: default
  labels:
    tenant.clastix.io: tenant-00
spec:
  dataStore: default
  controlPlane:
    deployment:
      replicas: 3
      additionalMetadata:
        labels:
          tenant.clastix.io: tenant-00
      extraArgs:
        apiServer: []
        controllerManager: []
        scheduler: []
      resources:
        apiServer:
          requests: {cpu: 250m, memory: 512Mi}
          limits: {}
    service:
      additionalMetadata:
        labels:
          tenant.clastix.io: tenant-00
      serviceType: LoadBalancer
  kubernetes:
    version: v1.37.2
    kubelet:
      cgroupfs: systemd
    admissionControllers:
      - ResourceQuota
      - LimitRanger
  networkProfile:
    port: 6443
  addons:
    coreDNS: {}
    kubeProxy: {}
    konnectivity:
      server:
        port: 8132
        resources:
          requests:
            cpu: 100m
            memory: 128Mi
          limits:
            cpu: 100m
            memory: 128Mi
""")


@pytest.fixture
async def client(api_cluster: DevCluster) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(KubeConfig.from_file(api_cluster.layout.admin_kubeconfig),
                    field_manager="haku-test")
    await install_crds(c, "haku-system")
    yield c
    async for tcp in c.list(TCP, namespace="default"):
        await c.delete(TCP, tcp.metadata.name, namespace="default")
    await c.close()


def manifest(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(KAMAJI_SAMPLE)
    for path, value in changes.items():
        node = doc
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return doc


async def test_a_kamaji_manifest_is_accepted_with_defaults(client: AsyncClient) -> None:
    created = (await client.apply(from_dict(manifest()), force=True)).to_dict()
    spec = created["spec"]
    assert spec["controlPlane"]["deployment"]["replicas"] == 3
    assert spec["controlPlane"]["deployment"]["registrySettings"] == {
        "registry": "registry.k8s.io", "apiServerImage": "kube-apiserver",
        "controllerManagerImage": "kube-controller-manager", "schedulerImage": "kube-scheduler"}
    assert spec["networkProfile"]["clusterDomain"] == "cluster.local"
    assert spec["addons"] == KAMAJI_SAMPLE["spec"]["addons"]
    assert spec["networkProfile"]["serviceCidr"] == "10.96.0.0/16"
    assert spec["kubernetes"]["kubelet"]["preferredAddressTypes"] == [
        "InternalIP", "ExternalIP", "Hostname"]
    minimal = {"apiVersion": "haku.dev/v1alpha1", "kind": "TenantControlPlane",
               "metadata": {"name": "minimal", "namespace": "default"},
               "spec": {"kubernetes": {"version": "v1.37.2"},
                        "controlPlane": {"service": {"serviceType": "ClusterIP"}}}}
    made = (await client.apply(from_dict(minimal), force=True)).to_dict()
    assert made["spec"]["controlPlane"]["deployment"]["replicas"] == 2
    # No default port: unset, a NodePort Service gets an allocated node port (6443 is outside
    # the node-port range); kube-apiserver and the Service port still use 6443.
    assert "port" not in made["spec"]["networkProfile"]


@pytest.mark.parametrize(("changes", "message"), [
    ({"spec__addons__konnectivity": {"agent": {"mode": "DaemonSet", "replicas": 2}}},
     "replicas must be 0 or unset when mode is DaemonSet"),
    ({"spec__addons__konnectivity": {"agent": {"mode": "Deployment", "replicas": 0}}},
     "replicas must be more than 0 when mode is Deployment"),
    ({"spec__addons__konnectivity": {"agent": {"mode": "Sidecar"}}}, "Unsupported value"),
    ({"spec__addons__konnectivity": {"server": {"securityContext": {"privileged": True}}}},
     "server.securityContext is not supported"),
    ({"spec__addons__konnectivity": {"server": {"extraArgs": ["--uds-name=/tmp/x"]}}},
     "server.extraArgs must not set a flag Haku manages"),
    ({"spec__addons__konnectivity": {"server": {"extraArgs": ["--admin-bind-address=0.0.0.0"]}}},
     "server.extraArgs must not set a flag Haku manages"),
    ({"spec__addons__konnectivity": {"agent": {"extraArgs": ["--proxy-server-host=evil"]}}},
     "agent.extraArgs must not set a flag Haku manages"),
    ({"spec__addons__konnectivity": {"server": {"port": 0}}},
     "spec.addons.konnectivity.server.port"),
    ({"spec__addons__konnectivity": {"server": {"image": "Registry.example/UPPER"}}},
     "spec.addons.konnectivity.server.image"),
    ({"spec__addons__kubeProxy": {"imageTag": "v1.37.2; rm -rf /"}},
     "spec.addons.kubeProxy.imageTag"),
    ({"spec__addons__coreDNS": {"imageRepository": "Registry.example/UPPER"}},
     "spec.addons.coreDNS.imageRepository"),
    ({"spec__controlPlane__gateway": {"hostname": "x"}},
     "spec.controlPlane.gateway.parentRefs needs exactly one entry"),
    ({"spec__controlPlane__deployment__additionalContainers": [{"name": "x"}]},
     "additionalContainers, additionalInitContainers"),
    ({"spec__kubernetes__version": "1.37"}, "spec.kubernetes.version"),
    ({"spec__kubernetes__version": None}, "spec.kubernetes.version: Required value"),
    ({"spec__controlPlane__service__serviceType": "ExternalName"}, "Unsupported value"),
    ({"spec__controlPlane__deployment__replicas": -1}, "spec.controlPlane.deployment.replicas"),
    ({"spec__controlPlane__deployment__extraArgs": {"apiServer": ["audit-log-path=/x"]}},
     "spec.controlPlane.deployment.extraArgs.apiServer[0]"),
    ({"spec__networkProfile__address": "not-an-ip"}, "networkProfile.address must be an IP"),
    ({"spec__networkProfile__port": 70000}, "spec.networkProfile.port"),
    ({"spec__networkProfile__serviceCidr": "10.96.0.0"}, "serviceCidr must be a CIDR"),
    ({"spec__networkProfile__dnsServiceIPs": ["10.96.0.300"]}, "must be an IP"),
    ({"spec__controlPlane__deployment__extraArgs": {"apiServer": ["--etcd-servers=http://x"]}},
     "extraArgs.apiServer must not set a flag Haku manages"),
    ({"spec__controlPlane__deployment__extraArgs": {"apiServer": ["--secure-port=7443"]}},
     "extraArgs.apiServer must not set a flag Haku manages"),
    ({"spec__controlPlane__deployment__extraArgs": {"controllerManager": ["--cluster-cidr"]}},
     "extraArgs.controllerManager must not set a flag Haku manages"),
    ({"spec__controlPlane__deployment__extraArgs": {"scheduler": ["--kubeconfig=/x"]}},
     "extraArgs.scheduler must not set a flag Haku manages"),
    ({"spec__controlPlane__deployment__tolerations": [{"operator": "Maybe"}]},
     "spec.controlPlane.deployment.tolerations[0].operator"),
    ({"spec__controlPlane__deployment__resources": {"apiServer": {
        "requests": {"cpu": "lots"}}}}, "spec.controlPlane.deployment.resources.apiServer"),
    ({"spec__networkProfile__advertiseAddress": "host.example"},
     "networkProfile.advertiseAddress must be an IP"),
    ({"spec__controlPlane__service__serviceType": "ClusterIP",
      "spec__networkProfile__loadBalancerSourceRanges": ["192.0.2.0/24"]},
     "loadBalancerSourceRanges is only for serviceType LoadBalancer"),
    ({"spec__networkProfile__loadBalancerSourceRanges": ["192.0.2.0"]}, "must be a CIDR"),
    ({"spec__controlPlane__service__serviceType": "NodePort",
      "spec__networkProfile__loadBalancerClass": "example.com/lb"},
     "loadBalancerClass is only for serviceType LoadBalancer"),
    ({"spec__controlPlane__service__serviceType": "ClusterIP",
      "spec__controlPlane__service__allocateLoadBalancerNodePorts": False},
     "allocateLoadBalancerNodePorts is only for serviceType LoadBalancer"),
    ({"spec__networkProfile__allowAddressAsExternalIP": True},
     "allowAddressAsExternalIP is only for serviceType ClusterIP or NodePort"),
    ({"spec__controlPlane__service__additionalPorts": [{"name": "kube-apiserver",
                                                        "port": 1}]},
     "are reserved"),
])
async def test_malformed_or_unsupported_specs_are_refused(
    client: AsyncClient, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiError) as info:
        await client.apply(from_dict(manifest(**changes)), force=True)
    assert info.value.status.code == 422, info.value.status.message
    assert message in info.value.status.message


PATCHES = "spec.kubernetes.kubelet.configurationJSONPatches"
IS_KUBELET_CONFIG = "the result must stay a kubelet.config.k8s.io/v1beta1 KubeletConfiguration"
POINTER = "must be a JSON pointer: '' or starting with '/', with '~' only as ~0 or ~1"


@pytest.mark.parametrize(("patches", "field", "message"), [
    ([{"op": "merge", "path": "/maxPods", "value": 1}], f"{PATCHES}[0].op",
     'Unsupported value: "merge"'),
    ([{"op": "remove"}], f"{PATCHES}[0].path", "Required value"),
    ([{"path": "/maxPods"}], f"{PATCHES}[0].op", "Required value"),
    ([{"op": "add", "path": "maxPods", "value": 1}], f"{PATCHES}[0].path", POINTER),
    ([{"op": "remove", "path": "/a~2b"}], f"{PATCHES}[0].path", POINTER),
    ([{"op": "remove", "path": "/a~"}], f"{PATCHES}[0].path", POINTER),
    ([{"op": "copy", "from": "maxPods", "path": "/x"}], f"{PATCHES}[0].from", POINTER),
    ([{"op": "add", "path": "/" + "x" * 1024, "value": 1}], f"{PATCHES}[0].path", "Too long"),
    ([{"op": "move", "path": "/a"}], f"{PATCHES}[0]", "from is required for op move and copy"),
    ([{"op": "remove", "path": "/a"}, {"op": "copy", "path": "/a"}], f"{PATCHES}[1]",
     "from is required for op move and copy"),
    ([{"op": "add", "path": "/maxPods"}], f"{PATCHES}[0].value", "Required value"),
    ([{"op": "replace", "path": "/maxPods"}], f"{PATCHES}[0].value", "Required value"),
    ([{"op": "test", "path": "/maxPods"}], f"{PATCHES}[0].value", "Required value"),
    ([{"op": "replace", "path": "/kind", "value": "Pod"}], f"{PATCHES}[0]",
     f"only test may use path '', /apiVersion or /kind: {IS_KUBELET_CONFIG}"),
    ([{"op": "remove", "path": "/apiVersion"}], f"{PATCHES}[0]",
     f"only test may use path '', /apiVersion or /kind: {IS_KUBELET_CONFIG}"),
    ([{"op": "add", "path": "/kind/x", "value": 1}], f"{PATCHES}[0]",
     f"only test may use path '', /apiVersion or /kind: {IS_KUBELET_CONFIG}"),
    ([{"op": "add", "path": "", "value": {}}], f"{PATCHES}[0]",
     f"only test may use path '', /apiVersion or /kind: {IS_KUBELET_CONFIG}"),
    ([{"op": "copy", "from": "/clusterDomain", "path": "/apiVersion"}], f"{PATCHES}[0]",
     f"only test may use path '', /apiVersion or /kind: {IS_KUBELET_CONFIG}"),
    ([{"op": "move", "from": "/kind", "path": "/oldKind"}], f"{PATCHES}[0]",
     f"move must not take from '', /apiVersion or /kind: {IS_KUBELET_CONFIG}"),
    ([{"op": "remove", "path": f"/k{i}"} for i in range(65)], PATCHES,
     "must have at most 64 items"),
    ([{"op": "add", "path": "/maxPods", "value": 1}], "spec.kubernetes.kubelet.cgroupfs",
     'Unsupported value: "cgroupv2"'),
])
async def test_kubelet_patches_that_cannot_be_right_are_refused(
    client: AsyncClient, patches: list[dict[str, Any]], field: str, message: str
) -> None:
    kubelet = {"configurationJSONPatches": patches}
    if field.endswith("cgroupfs"):
        kubelet["cgroupfs"] = "cgroupv2"
    with pytest.raises(ApiError) as info:
        await client.apply(from_dict(manifest(spec__kubernetes__kubelet=kubelet)), force=True)
    said = info.value.status.message or ""
    assert info.value.status.code == 422, said
    assert f"{field}: " in said and message in said, said


async def test_kubelet_patches_of_every_kind_are_kept_as_given(client: AsyncClient) -> None:
    patches = [
        {"op": "add", "path": "/maxPods", "value": 77},
        {"op": "add", "path": "/evictionHard", "value": {"memory.available": "100Mi"}},
        {"op": "add", "path": "/clusterDNS/-", "value": "10.96.0.11"},
        {"op": "replace", "path": "/rotateCertificates", "value": False},
        {"op": "add", "path": "/featureGates", "value": {}},
        {"op": "add", "path": "/featureGates/a~1b", "value": True},
        {"op": "remove", "path": "/featureGates/a~1b"},
        {"op": "copy", "from": "/clusterDomain", "path": "/x"},
        {"op": "move", "from": "/x", "path": "/y"},
        {"op": "test", "path": "/y", "value": "cluster.local"},
        {"op": "test", "path": "/kind", "value": "KubeletConfiguration"},
        {"op": "test", "path": "", "value": {"any": ["JSON", 1, None, True]}},
        {"op": "add", "path": "/providerID", "value": None},
        {"op": "copy", "from": "/kind", "path": "/z"},
    ]
    made = (await client.apply(from_dict(manifest(spec__kubernetes__kubelet={
        "cgroupfs": "cgroupfs", "configurationJSONPatches": patches})),
        force=True)).to_dict()
    kubelet = made["spec"]["kubernetes"]["kubelet"]
    assert kubelet["cgroupfs"] == "cgroupfs"
    assert kubelet["configurationJSONPatches"] == patches  # nothing pruned, null kept


@pytest.mark.parametrize(("field", "first", "second", "message"), [
    ("dataStore", "one", None, "spec.dataStore cannot be unset once set"),
    ("dataStoreSchema", "s1", "s2", "spec.dataStoreSchema is immutable"),
    ("dataStoreUsername", "u1", "u2", "spec.dataStoreUsername is immutable"),
    ("dataStoreSchema", "s1", None, "spec.dataStoreSchema cannot be unset once set"),
])
async def test_datastore_placement_is_immutable(
    client: AsyncClient, field: str, first: str, second: str | None, message: str
) -> None:
    await client.apply(from_dict(manifest(**{f"spec__{field}": first})), force=True)
    with pytest.raises(ApiError) as info:
        await client.apply(from_dict(manifest(**{f"spec__{field}": second})), force=True)
    assert message in info.value.status.message


async def test_datastore_can_change_or_be_set_later_which_moves_the_data(
        client: AsyncClient) -> None:
    await client.apply(from_dict(manifest(spec__dataStore=None)), force=True)
    for value in ("set-later", "moved-again"):  # each a migration (haku.render.migration)
        made = await client.apply(from_dict(manifest(spec__dataStore=value)), force=True)
        assert made.to_dict()["spec"]["dataStore"] == value


@pytest.mark.parametrize(("field", "value", "message"), [
    ("dataStoreSchema", "late", "spec.dataStoreSchema cannot be added after creation; this "
     "tenant uses status.storage.setup.schema"),
    ("dataStoreUsername", "late", "spec.dataStoreUsername cannot be added after creation"),
])
async def test_datastore_placement_cannot_be_added_after_creation(
    client: AsyncClient, field: str, value: str, message: str
) -> None:
    await client.apply(from_dict(manifest(**{f"spec__{field}": None})), force=True)
    with pytest.raises(ApiError) as info:
        await client.apply(from_dict(manifest(**{f"spec__{field}": value})), force=True)
    assert message in info.value.status.message


async def test_kamaji_fields_haku_maps_are_kept(client: AsyncClient) -> None:
    made = (await client.apply(from_dict(manifest(
        spec__networkProfile={"port": 6443, "advertiseAddress": "192.0.2.50",
                              "loadBalancerSourceRanges": ["192.0.2.0/24"],
                              "loadBalancerClass": "example.com/lb"},
        spec__controlPlane__service__allocateLoadBalancerNodePorts=False,
        spec__controlPlane__service__additionalPorts=[{"name": "metrics", "port": 9090}],
        spec__controlPlane__deployment__podSecurityContext={"runAsNonRoot": True},
        spec__controlPlane__deployment__containerSecurityContexts={
            "apiServer": {"readOnlyRootFilesystem": True}},
        spec__controlPlane__deployment__automountServiceAccountToken=False,
        spec__controlPlane__deployment__tolerations=[
            {"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
    )), force=True)).to_dict()["spec"]
    assert made["networkProfile"]["advertiseAddress"] == "192.0.2.50"
    assert made["networkProfile"]["loadBalancerClass"] == "example.com/lb"
    assert made["controlPlane"]["service"]["additionalPorts"] == [
        {"name": "metrics", "port": 9090, "protocol": "TCP"}]
    dep = made["controlPlane"]["deployment"]
    assert dep["containerSecurityContexts"] == {"apiServer": {"readOnlyRootFilesystem": True}}
    assert dep["podSecurityContext"] == {"runAsNonRoot": True}
    assert dep["tolerations"] == [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]
    with pytest.raises(ApiError) as info:  # loadBalancerClass is immutable
        await client.apply(from_dict(manifest(
            spec__networkProfile={"port": 6443, "loadBalancerClass": "other"})), force=True)
    assert "loadBalancerClass cannot be set, changed or unset" in info.value.status.message


class _FakeDriver:
    """Stands in for a SQL DataStore (the only thing faked; the API server is real)."""

    driver = "fake"

    async def ensure_tenant(self, tenant: Any) -> None:
        return None

    def physical_names(self, tenant: Any) -> tuple[str, str]:
        return tenant.schema, tenant.user

    def tenant_connection(self, tenant: Any) -> Any:
        from haku.datastore import TenantConnection
        return TenantConnection("fake", kine_endpoint="postgres://fake/x",
                                files={"ca.crt": b"not a CA"})


async def test_a_service_the_api_server_refuses_shows_invalid_spec(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from haku.controller.events import EventRecorder
    from haku.controller.tenant import OperatorConfig, TenantReconciler
    from tests.fake_datastores import use_fake_datastores

    use_fake_datastores(monkeypatch, {"default": _FakeDriver()})
    # 6443 given explicitly as a NodePort: valid for the CRD, outside the node-port range.
    obj = manifest(spec__controlPlane__service__serviceType="NodePort",
                   spec__networkProfile={"port": 6443})
    obj["metadata"]["name"] = "bad-nodeport"
    await client.apply(from_dict(obj), force=True)
    recorder = EventRecorder(client)
    r = TenantReconciler(client, OperatorConfig(), recorder)
    try:
        result = await r.reconcile(("default", "bad-nodeport"))
        again = await r.reconcile(("default", "bad-nodeport"))
    finally:
        await recorder.flush()
    assert result.requeue_after is not None and result.requeue_after >= 9  # 10 s ± jitter
    assert again.requeue_after is not None and again.requeue_after > result.requeue_after
    got = (await client.get(TCP, "bad-nodeport", namespace="default")).to_dict()["status"]
    conds = {c["type"]: c for c in got["conditions"]}
    assert conds["ControlPlaneAvailable"]["status"] == "False"
    assert conds["ControlPlaneAvailable"]["reason"] == "InvalidSpec"
    assert "nodePort" in conds["ControlPlaneAvailable"]["message"]
    assert conds["Ready"]["reason"] == "InvalidSpec"
    # The DataStore step ran and pinned where the tenant lives.
    assert got["storage"]["dataStoreName"] == "default"
    assert got["kubernetesResources"]["version"]["status"] == "Provisioning"


async def test_explain_describes_the_fields(api_cluster: DevCluster,
                                            client: AsyncClient) -> None:
    import subprocess

    lay = api_cluster.layout
    out = ""
    for _ in range(60):  # the OpenAPI document is republished a moment after the CRD
        result = subprocess.run(
            [str(lay.bin / "kubectl"), f"--kubeconfig={lay.admin_kubeconfig}",
             "explain", "tcp.spec.dataStoreSchema"], capture_output=True, text=True, check=False)
        out = result.stdout
        if result.returncode == 0:
            break
        await asyncio.sleep(0.5)
    assert "etcd key prefix, or SQL database" in out


class _UnreachableOnDelete(_FakeDriver):
    async def delete_tenant(self, tenant: Any) -> None:
        from haku.datastore.base import Unreachable
        raise Unreachable("connecting to fake:5432: connection refused")


async def test_a_failing_cleanup_keeps_the_finalizer_and_says_why(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightkube.resources.core_v1 import Event
    from lightkube.types import PatchType

    from haku.controller.events import EventRecorder
    from haku.controller.tenant import FINALIZER, OperatorConfig, TenantReconciler
    from tests.fake_datastores import use_fake_datastores

    use_fake_datastores(monkeypatch, {"default": _UnreachableOnDelete()})
    name = "cleanup-fails"
    obj = manifest(spec__controlPlane__service__serviceType="ClusterIP")
    obj["metadata"]["name"] = name
    await client.apply(from_dict(obj), force=True)
    recorder = EventRecorder(client)
    r = TenantReconciler(client, OperatorConfig(), recorder)
    try:
        await r.reconcile(("default", name))  # sets the finalizer, provisions (fake)
        await client.delete(TCP, name, namespace="default")
        result = await r.reconcile(("default", name))
        again = await r.reconcile(("default", name))
        await recorder.flush()
        # Retried, later each time, with the reason on the object.
        assert result.requeue_after is not None and again.requeue_after is not None
        assert again.requeue_after > result.requeue_after
        still = (await client.get(TCP, name, namespace="default")).to_dict()
        assert FINALIZER in still["metadata"]["finalizers"]
        conds = {c["type"]: c for c in still["status"]["conditions"]}
        assert conds["DataStoreReady"]["reason"] == "Unreachable"
        assert "connection refused" in conds["DataStoreReady"]["message"]
        assert "haku.dev/abandon-datastore-data" in conds["DataStoreReady"]["message"]
        assert conds["Ready"]["reason"] == "Deleting"
        events = [e async for e in client.list(Event, namespace="default",
                                               fields={"involvedObject.name": name})]
        warned = [e for e in events if e.reason == "Unreachable" and e.type == "Warning"]
        assert warned and "cleaning up before deletion failed" in (warned[0].message or "")
    finally:
        await client.patch(TCP, name, {"metadata": {"finalizers": []}}, namespace="default",
                           patch_type=PatchType.MERGE)
        await recorder.flush()


# Inputs a hostile tester tried: each is refused at admission, the message naming the field
# (the API server prefixes schema errors with the field's path; CEL messages name it).
LONG = "t" + "x" * 62  # 63 characters: the longest name a tenant's Service can carry
AFFINITY = "spec__controlPlane__deployment__affinity"
SPREAD = "spec__controlPlane__deployment__topologySpreadConstraints"
PORTS = "spec__controlPlane__service__additionalPorts"


@pytest.mark.parametrize(("changes", "wanted"), [
    # 1. a service CIDR too small to hold the kubernetes Service's address (or kube-apiserver's 8)
    ({"spec__networkProfile__serviceCidr": "10.96.0.0/32"},
     ["spec.networkProfile.serviceCidr", "serviceCidr must hold at least 8 addresses"]),
    ({"spec__networkProfile__serviceCidr": "10.96.0.0/30"},
     ["spec.networkProfile.serviceCidr", "serviceCidr must hold at least 8 addresses"]),
    ({"spec__networkProfile__serviceCidrs": ["fd00::/128"]},
     ["spec.networkProfile.serviceCidrs[0]", "each serviceCidrs entry must hold at least 8"]),
    ({"spec__networkProfile__serviceCidrs": ["10.96.0.0/16", "fd00::/48"]},
     ["spec.networkProfile.serviceCidrs[1]", "wider than /64"]),
    ({"spec__networkProfile__serviceCidr": "10.96.0.0/29"},
     ["networkProfile.dnsServiceIPs is unset, so it defaults"]),
    ({"spec__networkProfile__dnsServiceIPs": ["10.97.0.10"]},
     ["each networkProfile.dnsServiceIPs entry must lie in a service CIDR"]),
    # 2. certSANs a certificate cannot hold, or kubeadm would refuse
    ({"spec__networkProfile__certSANs": ["bücher.example"]},
     ["spec.networkProfile.certSANs[0]", "each networkProfile.certSANs entry must be"]),
    ({"spec__networkProfile__certSANs": ["api.example.com", "API.Example.com"]},
     ["spec.networkProfile.certSANs[1]", "each networkProfile.certSANs entry must be"]),
    ({"spec__networkProfile__certSANs": ["a b"]}, ["spec.networkProfile.certSANs[0]"]),
    ({"spec__networkProfile__certSANs": ["*.*.example.com"]},
     ["spec.networkProfile.certSANs[0]"]),
    # 3. additional ports clashing with the API port or with each other
    ({PORTS: [{"name": "extra", "port": 6443}]},
     ["spec.controlPlane.service.additionalPorts must not use the API port"]),
    ({"spec__networkProfile__port": 7443, PORTS: [{"name": "extra", "port": 7443}]},
     ["spec.controlPlane.service.additionalPorts must not use the API port"]),
    ({PORTS: [{"name": "a", "port": 1000}, {"name": "a", "port": 1001}]},
     ["spec.controlPlane.service.additionalPorts names must be unique"]),
    ({PORTS: [{"name": "a", "port": 1000}, {"name": "b", "port": 1000, "protocol": "TCP"}]},
     ["spec.controlPlane.service.additionalPorts must not repeat a port"]),
    ({PORTS: [{"name": "Metrics", "port": 9090}]},
     ["spec.controlPlane.service.additionalPorts[0].name"]),
    ({PORTS: [{"name": "m", "port": 9090, "targetPort": "bad--name"}]},
     ["spec.controlPlane.service.additionalPorts[0].targetPort",
      "additionalPorts targetPort must be a port number"]),
    ({PORTS: [{"name": "m", "port": 9090, "targetPort": 0}]},
     ["spec.controlPlane.service.additionalPorts[0].targetPort"]),
    # 4. pod fields of the wrong shape (upstream's structural schemas)
    ({AFFINITY: {"nodeAffinity": "yes"}},
     ["spec.controlPlane.deployment.affinity.nodeAffinity", "must be of type object"]),
    ({AFFINITY: {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "x"}}}]}}},
     ["spec.controlPlane.deployment.affinity.podAntiAffinity"
      ".requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey", "Required value"]),
    ({AFFINITY: {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In",
                                                     "values": "a"}]}]}}}},
     ["spec.controlPlane.deployment.affinity.nodeAffinity.requiredDuringScheduling"
      "IgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values",
      "must be of type array"]),
    ({SPREAD: [{"maxSkew": "one", "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]},
     ["spec.controlPlane.deployment.topologySpreadConstraints[0].maxSkew",
      "must be of type integer"]),
    ({SPREAD: [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "Sometimes"}]},
     ["spec.controlPlane.deployment.topologySpreadConstraints[0].whenUnsatisfiable",
      "Unsupported value"]),
    ({SPREAD: {"maxSkew": 1}},
     ["spec.controlPlane.deployment.topologySpreadConstraints", "must be of type array"]),
    ({"spec__controlPlane__deployment__podSecurityContext": {"runAsUser": "root"}},
     ["spec.controlPlane.deployment.podSecurityContext.runAsUser", "must be of type integer"]),
    ({"spec__controlPlane__deployment__containerSecurityContexts": {
        "apiServer": {"capabilities": {"drop": "ALL"}}}},
     ["spec.controlPlane.deployment.containerSecurityContexts.apiServer.capabilities.drop",
      "must be of type array"]),
    ({"spec__controlPlane__deployment__strategy": {"type": "Sometimes"}},
     ["spec.controlPlane.deployment.strategy.type", "Unsupported value"]),
    ({"spec__controlPlane__deployment__strategy": {"rollingUpdate": {"maxSurge": [1]}}},
     ["spec.controlPlane.deployment.strategy.rollingUpdate.maxSurge"]),
    ({"spec__controlPlane__deployment__nodeSelector": {"zone": 1}},
     ["spec.controlPlane.deployment.nodeSelector.zone", "must be of type string"]),
    ({"spec__controlPlane__deployment__tolerations": [{"tolerationSeconds": "soon"}]},
     ["spec.controlPlane.deployment.tolerations[0].tolerationSeconds"]),
    # 5. names longer than the tenant's Service name may be, or not DNS-1035 labels
    ({"metadata__name": LONG + "x"}, ["metadata.name must be at most 63 characters"]),
    ({"metadata__name": "1tenant"}, ["metadata.name must be a DNS-1035 label"]),
    ({"metadata__name": "tenant.one"}, ["metadata.name must be a DNS-1035 label"]),
    # 6. datastore names outside the one charset every driver stores alike
    ({"spec__dataStoreSchema": "."}, ["spec.dataStoreSchema", "should match"]),
    ({"spec__dataStoreSchema": ".."}, ["spec.dataStoreSchema", "should match"]),
    ({"spec__dataStoreSchema": "Tenant"}, ["spec.dataStoreSchema", "should match"]),
    ({"spec__dataStoreSchema": "tenant.one"}, ["spec.dataStoreSchema", "should match"]),
    ({"spec__dataStoreSchema": "a/b"}, ["spec.dataStoreSchema", "should match"]),
    ({"spec__dataStoreSchema": "müller"}, ["spec.dataStoreSchema", "should match"]),
    ({"spec__dataStoreSchema": "-a"}, ["spec.dataStoreSchema", "should match"]),
    ({"spec__dataStoreSchema": "s" * 64}, ["spec.dataStoreSchema", "63"]),
    ({"spec__dataStoreUsername": "."}, ["spec.dataStoreUsername", "should match"]),
    ({"spec__dataStoreUsername": "Admin"}, ["spec.dataStoreUsername", "should match"]),
    ({"spec__dataStoreUsername": "ü"}, ["spec.dataStoreUsername", "should match"]),
])
async def test_hostile_inputs_are_refused_naming_the_field(
    client: AsyncClient, changes: dict[str, Any], wanted: list[str]
) -> None:
    with pytest.raises(ApiError) as info:  # kubectl create / client-side apply
        await client.create(from_dict(manifest(**changes)))
    message = info.value.status.message
    assert info.value.status.code == 422, message
    for part in wanted:
        assert part in message, message
    # Server-side apply refuses it too, naming the field; a value of the wrong type fails
    # earlier there, while building the typed patch (upstream answers 500 for that).
    with pytest.raises(ApiError) as info:
        await client.apply(from_dict(manifest(**changes)), force=True)
    assert info.value.status.code in (422, 500)
    assert wanted[0] in info.value.status.message, info.value.status.message


async def test_the_values_next_to_the_limits_are_accepted_and_kept(client: AsyncClient) -> None:
    affinity = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]}]}},
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100, "podAffinityTerm": {
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {"haku.dev/tenant-control-plane": LONG}},
                "matchLabelKeys": ["pod-template-hash"]}}]}}
    spread = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
               "whenUnsatisfiable": "ScheduleAnyway", "minDomains": 2,
               "labelSelector": {"matchExpressions": [
                   {"key": "app", "operator": "Exists"}]}}]
    security = {"runAsNonRoot": True, "runAsUser": 65532, "supplementalGroups": [1, 2],
                "seccompProfile": {"type": "RuntimeDefault"},
                "sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65000"}]}
    container = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                 "readOnlyRootFilesystem": True}
    strategy = {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "50%", "maxUnavailable": 0}}
    ports = [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"},
             {"name": "api-udp", "port": 6443, "protocol": "UDP"},
             {"name": "h2c", "port": 8080, "appProtocol": "kubernetes.io/h2c",
              "protocol": "TCP"}]
    obj = manifest(
        metadata__name=LONG,
        spec__dataStoreSchema="tenant_01-db",
        spec__dataStoreUsername="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",  # a UID's shape
        spec__networkProfile={"port": 6443, "serviceCidrs": ["10.96.0.0/28", "fd00:10:96::/123"],
                              "certSANs": ["api.example.com", "*.tenants.example.com",
                                           "192.0.2.10", "2001:db8::1", "xn--bcher-kva.example"]},
        spec__controlPlane__service__additionalPorts=ports,
        spec__controlPlane__deployment__affinity=affinity,
        spec__controlPlane__deployment__topologySpreadConstraints=spread,
        spec__controlPlane__deployment__podSecurityContext=security,
        spec__controlPlane__deployment__containerSecurityContexts={
            "apiServer": container, "scheduler": container},
        spec__controlPlane__deployment__strategy=strategy,
    )
    made = (await client.apply(from_dict(obj), force=True)).to_dict()
    assert made["metadata"]["name"] == LONG
    spec = made["spec"]
    dep = spec["controlPlane"]["deployment"]
    assert dep["affinity"] == affinity
    assert dep["topologySpreadConstraints"] == spread
    assert dep["podSecurityContext"] == security
    assert dep["containerSecurityContexts"] == {"apiServer": container, "scheduler": container}
    assert dep["strategy"] == strategy
    assert spec["controlPlane"]["service"]["additionalPorts"] == ports
    assert spec["networkProfile"]["certSANs"][-1] == "xn--bcher-kva.example"
    small = manifest(spec__networkProfile={"serviceCidr": "10.96.0.0/29",
                                           "dnsServiceIPs": ["10.96.0.6"]})
    small["metadata"]["name"] = "small-range"
    await client.apply(from_dict(small), force=True)


async def test_an_older_object_with_a_long_name_stays_updatable(client: AsyncClient) -> None:
    """The name rules run at creation only (optionalOldSelf): an object admitted before them
    can still be changed, and its finalizer removed, so it can be deleted."""
    from lightkube.resources.apiextensions_v1 import CustomResourceDefinition

    from haku.api import crds

    crd = crds.load("tenantcontrolplanes.haku.dev.yaml")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = schema.pop("x-kubernetes-validations")
    assert any("metadata.name" in r["rule"] for r in rules)
    old = "o" * 70
    await client.apply(from_dict(crd), force=True)
    try:
        for _ in range(100):  # the API server picks the changed schema up a moment later
            try:
                await client.apply(from_dict(manifest(metadata__name=old)), force=True)
                break
            except ApiError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the CRD without the name rules never took effect")
    finally:
        await install_crds(client, "haku-system")
    got = await client.get(CustomResourceDefinition, "tenantcontrolplanes.haku.dev")
    assert got.to_dict()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "x-kubernetes-validations"]
    newer = manifest(metadata__name="n" * 70)
    for _ in range(100):  # and the rules back
        try:
            await client.apply(from_dict(newer), force=True)
        except ApiError as e:
            assert "metadata.name must be at most 63 characters" in e.status.message
            break
        await client.delete(TCP, "n" * 70, namespace="default")
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the name rules never came back")
    updated = manifest(metadata__name=old, spec__controlPlane__deployment__replicas=1)
    updated["metadata"]["finalizers"] = ["haku.dev/test"]
    await client.apply(from_dict(updated), force=True)
    updated["metadata"]["finalizers"] = []
    done = (await client.apply(from_dict(updated), force=True)).to_dict()
    assert done["spec"]["controlPlane"]["deployment"]["replicas"] == 1
    assert not done["metadata"].get("finalizers")


@pytest.mark.parametrize(("version", "message"), [
    ("v1.99.0", "spec.kubernetes.version v1.99.0 is not a version this Haku runs (supported: "
                "v1.36.x, v1.37.x)"),
    ("v1.35.4", "v1.35.4 is not a version this Haku runs"),
    ("v2.37.2", "v2.37.2 is not a version this Haku runs"),
])
async def test_only_versions_this_haku_runs_are_accepted(
    client: AsyncClient, version: str, message: str
) -> None:
    with pytest.raises(ApiError) as info:
        await client.apply(from_dict(manifest(spec__kubernetes__version=version)), force=True)
    assert message in info.value.status.message


async def test_the_version_moves_up_only(client: AsyncClient) -> None:
    await client.apply(from_dict(manifest(spec__kubernetes__version="v1.36.3")), force=True)
    up = await client.apply(from_dict(manifest(spec__kubernetes__version="v1.37.2")),
                            force=True)
    assert up.spec["kubernetes"]["version"] == "v1.37.2"
    for down in ("v1.36.3", "v1.37.1"):
        with pytest.raises(ApiError) as info:
            await client.apply(from_dict(manifest(spec__kubernetes__version=down)), force=True)
        assert (f"spec.kubernetes.version cannot go down (v1.37.2 to {down}): a control "
                "plane is never downgraded") in info.value.status.message
    # Unrelated edits of an object go through (the rules compare the version with itself).
    again = await client.apply(from_dict(manifest(
        spec__kubernetes__version="v1.37.2", spec__controlPlane__deployment__replicas=2)),
        force=True)
    assert again.spec["controlPlane"]["deployment"]["replicas"] == 2


# The version's transition rules, on a CRD of their own without the supported-minor rule, so
# that a skipped minor and a major change (both outside the supported list today) are shown
# to be refused by their own rule.
def _guard_crd() -> dict[str, Any]:
    with open(Path(__file__).parents[2] / "src/haku/api/crds/"
              "tenantcontrolplanes.haku.dev.yaml") as f:
        tcp_crd = yaml.safe_load(f)
    version = copy.deepcopy(tcp_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["spec"]["properties"]["kubernetes"]["properties"]["version"])
    version["x-kubernetes-validations"] = [r for r in version["x-kubernetes-validations"]
                                           if "oldSelf" in r["rule"]]
    assert len(version["x-kubernetes-validations"]) == 3
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "versionguards.test.haku.dev"},
            "spec": {"group": "test.haku.dev", "scope": "Namespaced",
                     "names": {"plural": "versionguards", "singular": "versionguard",
                               "kind": "VersionGuard"},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": {
                                       "type": "object", "properties": {"spec": {
                                           "type": "object",
                                           "properties": {"version": version}}}}}}]}}


VersionGuard = create_namespaced_resource("test.haku.dev", "v1", "VersionGuard",
                                          "versionguards")


@pytest.mark.parametrize(("old", "new", "message"), [
    ("v1.36.3", "v1.38.0", "spec.kubernetes.version cannot skip a minor version (v1.36.3 to "
                           "v1.38.0): upgrade one minor at a time"),
    ("v1.37.2", "v2.37.2", "spec.kubernetes.version cannot change its major version (v1.37.2 "
                           "to v2.37.2)"),
    ("v1.37.2", "v1.36.9", "spec.kubernetes.version cannot go down (v1.37.2 to v1.36.9)"),
    ("v1.36.3", "v1.37.0", None),
    ("v1.37.2", "v1.37.3", None),
])
async def test_the_version_transition_rules(client: AsyncClient, old: str, new: str,
                                            message: str | None) -> None:
    await client.apply(from_dict(_guard_crd()), force=True)
    await wait_established(client, "versionguards.test.haku.dev")
    name = f"g-{old}-{new}".replace(".", "-")

    def guard(version: str) -> Any:
        return VersionGuard(metadata={"name": name, "namespace": "default"},  # type: ignore[call-arg]
                            spec={"version": version})

    try:
        await client.apply(guard(old), force=True)
        if message is None:
            assert (await client.apply(guard(new), force=True)).spec["version"] == new
            return
        with pytest.raises(ApiError) as info:
            await client.apply(guard(new), force=True)
        assert message in info.value.status.message
    finally:
        await client.delete(VersionGuard, name, namespace="default")
