"""The TenantControlPlane API on a real kube-apiserver: a Kamaji manifest ports by changing
apiVersion, defaults are filled in, and malformed or unsupported specs are refused with a
message that says why."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.generic_resource import create_namespaced_resource

from haku.controller.operator import install_crds
from haku.dev.cluster import DevCluster

TCP = create_namespaced_resource("haku.dev", "v1alpha1", "TenantControlPlane",
                                 "tenantcontrolplanes")

# Kamaji's getting-started manifest, minus its konnectivity addon, with only apiVersion changed.
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
    assert spec["addons"] == {"coreDNS": {}, "kubeProxy": {}}
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
    ({"spec__addons__konnectivity": {"server": {"port": 8132}}},
     "spec.addons.konnectivity is not supported by Haku yet"),
    ({"spec__addons__kubeProxy": {"imageTag": "v1.37.2; rm -rf /"}},
     "spec.addons.kubeProxy.imageTag"),
    ({"spec__addons__coreDNS": {"imageRepository": "Registry.example/UPPER"}},
     "spec.addons.coreDNS.imageRepository"),
    ({"spec__controlPlane__gateway": {"hostname": "x"}},
     "spec.controlPlane.gateway is not supported by Haku yet"),
    ({"spec__controlPlane__deployment__additionalContainers": [{"name": "x"}]},
     "additionalContainers, additionalInitContainers"),
    ({"spec__writePermissions": {"blockCreation": True}}, "spec.writePermissions is not"),
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
    ({"spec__kubernetes__kubelet__configurationJSONPatches": [{"op": "add"}]},
     "configurationJSONPatches is not supported"),
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


@pytest.mark.parametrize(("field", "first", "second", "message"), [
    ("dataStore", "one", "two", "spec.dataStore is immutable"),
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


@pytest.mark.parametrize(("field", "value", "message"), [
    ("dataStore", "late", "spec.dataStore cannot be added after creation"),
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

    async def driver(self: TenantReconciler, spec: Any) -> tuple[Any, str]:
        return _FakeDriver(), "fake-ds"

    monkeypatch.setattr(TenantReconciler, "_driver", driver)
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
    assert result.requeue_after is not None and result.requeue_after >= 10
    assert again.requeue_after is not None and again.requeue_after > result.requeue_after
    got = (await client.get(TCP, "bad-nodeport", namespace="default")).to_dict()["status"]
    conds = {c["type"]: c for c in got["conditions"]}
    assert conds["ControlPlaneAvailable"]["status"] == "False"
    assert conds["ControlPlaneAvailable"]["reason"] == "InvalidSpec"
    assert "nodePort" in conds["ControlPlaneAvailable"]["message"]
    assert conds["Ready"]["reason"] == "InvalidSpec"
    # The DataStore step ran and pinned where the tenant lives.
    assert got["storage"]["dataStoreName"] == "fake-ds"
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

    async def driver(self: TenantReconciler, spec: Any) -> tuple[Any, str]:
        return _UnreachableOnDelete(), "fake-ds"

    monkeypatch.setattr(TenantReconciler, "_driver", driver)
    name = "cleanup-fails"
    obj = manifest(spec__controlPlane__service__serviceType="ClusterIP")
    obj["metadata"]["name"] = name
    await client.apply(from_dict(obj), force=True)
    recorder = EventRecorder(client)
    r = TenantReconciler(client, OperatorConfig(), recorder)
    try:
        await r.reconcile(("default", name))  # sets the finalizer, provisions (fake)
        await client.delete(TCP, name, namespace="default")
        with pytest.raises(Exception, match="connection refused"):
            await r.reconcile(("default", name))
        await recorder.flush()
        still = (await client.get(TCP, name, namespace="default")).to_dict()
        assert FINALIZER in still["metadata"]["finalizers"]
        events = [e async for e in client.list(Event, namespace="default",
                                               fields={"involvedObject.name": name})]
        warned = [e for e in events if e.reason == "Unreachable" and e.type == "Warning"]
        assert warned and "cleaning up before deletion failed" in (warned[0].message or "")
    finally:
        await client.patch(TCP, name, {"metadata": {"finalizers": []}}, namespace="default",
                           patch_type=PatchType.MERGE)
        await recorder.flush()
