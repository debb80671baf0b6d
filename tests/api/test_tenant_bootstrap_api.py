"""What Haku applies inside a tenant, on a real kube-apiserver standing in for the tenant: the
objects are accepted, a second apply changes nothing, a removed addon takes exactly its own
objects with it, drift is noticed by the tenant watches, and a join token is a real one."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.apps_v1 import DaemonSet, Deployment
from lightkube.resources.authentication_v1 import SelfSubjectReview
from lightkube.resources.core_v1 import ConfigMap, Namespace, Secret, Service
from lightkube.resources.rbac_authorization_v1 import ClusterRole, ClusterRoleBinding

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.controller.tenant_watches import TenantWatches
from haku.dev.cluster import DevCluster
from haku.dev.layout import Layout
from haku.render import pki
from haku.render.tenant_bootstrap import bootstrap_objects, object_key
from haku.tenant import bootstrap
from haku.tenant.access import TenantAccess, create_join_command
from haku.tenant.tokens import NODE_TOKEN_GROUP, JoinCommand, ca_cert_hash

ENDPOINT = "https://10.245.0.1:31443"
# The API-only cluster stands in for a tenant: its service range is the tenant's.
SERVICE_CIDR = Layout.api_only(Path("/unused")).service_cidr
DNS_IP = str(ipaddress.ip_network(SERVICE_CIDR).network_address + 10)


def spec(addons: dict[str, Any] | None) -> TenantControlPlaneSpec:
    body: dict[str, Any] = {"kubernetes": {"version": "v1.37.2"},
                            "networkProfile": {"serviceCidr": SERVICE_CIDR,
                                               "podCidr": "10.244.0.0/16"}}
    if addons is not None:
        body["addons"] = addons
    return TenantControlPlaneSpec.parse({"metadata": {"name": "t1", "namespace": "tenants",
                                                      "uid": "u1"}, "spec": body})


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.new_ca("kubernetes")


@pytest.fixture
async def tenant(api_cluster: DevCluster) -> AsyncIterator[AsyncClient]:
    """The API-only cluster, standing in for a tenant; Haku's objects removed afterwards."""
    client = AsyncClient(KubeConfig.from_file(api_cluster.layout.admin_kubeconfig),
                         field_manager="haku", trust_env=False)
    yield client
    for addon in (*bootstrap.ADDONS, "core"):
        await bootstrap.prune_addon(client, addon)
    await client.close()


async def _versions(client: AsyncClient, groups: dict[str, list[dict[str, Any]]]) -> dict:
    versions = {}
    for objects in groups.values():
        for obj in objects:
            got = await client.get(type(from_dict(obj)), obj["metadata"]["name"],
                                   namespace=obj["metadata"].get("namespace"))
            versions[object_key(obj)] = got.metadata.resourceVersion
    return versions


async def test_bootstrap_applies_all_and_a_second_apply_changes_nothing(
        tenant: AsyncClient, ca: pki.KeyPair) -> None:
    groups = bootstrap_objects(spec({"coreDNS": {}, "kubeProxy": {}, "konnectivity": {}}),
                               ca.cert_pem, ENDPOINT)
    installed: dict[str, bool] = {}
    pruned = await bootstrap.reconcile(tenant, groups, installed)
    assert installed == {"kube-proxy": True, "coredns": True, "konnectivity": True}
    assert pruned == []
    first = await _versions(tenant, groups)
    assert len(first) == sum(len(v) for v in groups.values())
    await bootstrap.reconcile(tenant, groups, installed)
    assert await _versions(tenant, groups) == first  # idempotent: no write happened

    dns = await tenant.get(Service, "kube-dns", namespace="kube-system")
    assert dns.spec.clusterIP == DNS_IP
    info = await tenant.get(ConfigMap, "cluster-info", namespace="kube-public")
    kubeconfig = yaml.safe_load(info.data["kubeconfig"])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == ENDPOINT
    kubeadm = yaml.safe_load((await tenant.get(ConfigMap, "kubeadm-config",
                                               namespace="kube-system")).data[
                                                   "ClusterConfiguration"])
    assert kubeadm["networking"]["podSubnet"] == "10.244.0.0/16"
    proxy = await tenant.get(DaemonSet, "kube-proxy", namespace="kube-system")
    assert proxy.spec.template.spec.containers[0].image == "registry.k8s.io/kube-proxy:v1.37.2"
    # The Konnectivity agents: the API server accepts them as rendered; none runs (no node).
    agents = await bootstrap.agents(tenant, "DaemonSet")
    assert agents == bootstrap.Agents("DaemonSet", 0, 0)
    # Switching to a Deployment removes the DaemonSet (Haku's only).
    assert await bootstrap.remove_agent_kind(tenant, "Deployment") is True
    assert await bootstrap.agents(tenant, "DaemonSet") is None
    assert await bootstrap.remove_agent_kind(tenant, "Deployment") is False


async def test_removing_an_addon_removes_its_objects_and_nothing_else(
        tenant: AsyncClient, ca: pki.KeyPair) -> None:
    both = bootstrap_objects(spec({"coreDNS": {}, "kubeProxy": {}}), ca.cert_pem, ENDPOINT)
    installed: dict[str, bool] = {}
    await bootstrap.reconcile(tenant, both, installed)
    # A user's own objects in kube-system, of the same kinds, unlabelled: must survive.
    mine = [from_dict({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "users-own", "namespace": "kube-system"},
                       "data": {"a": "b"}}),
            from_dict({"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": "users-dns", "namespace": "kube-system"},
                       "spec": {"replicas": 0, "selector": {"matchLabels": {"a": "b"}},
                                "template": {"metadata": {"labels": {"a": "b"}},
                                             "spec": {"containers": [
                                                 {"name": "c", "image": "x"}]}}}})]
    for obj in mine:
        await tenant.apply(obj, field_manager="user")

    without_dns = bootstrap_objects(spec({"kubeProxy": {}}), ca.cert_pem, ENDPOINT)
    pruned = await bootstrap.reconcile(tenant, without_dns, installed)
    assert installed == {"kube-proxy": True, "coredns": False, "konnectivity": False}
    assert "Deployment kube-system/coredns" in pruned
    assert "ClusterRole system:coredns" in pruned
    for kind, name, ns in ((Deployment, "coredns", "kube-system"),
                           (ConfigMap, "coredns", "kube-system"),
                           (Service, "kube-dns", "kube-system"),
                           (ClusterRole, "system:coredns", None)):
        with pytest.raises(ApiError) as gone:
            await tenant.get(kind, name, namespace=ns)
        assert gone.value.status.code == 404
    await tenant.get(ConfigMap, "users-own", namespace="kube-system")
    await tenant.get(Deployment, "users-dns", namespace="kube-system")
    await tenant.get(DaemonSet, "kube-proxy", namespace="kube-system")
    await tenant.get(ClusterRoleBinding, "kubeadm:node-proxier")
    await tenant.get(ConfigMap, "cluster-info", namespace="kube-public")
    # Absent and not installed: nothing to prune, nothing listed.
    again = await bootstrap.reconcile(tenant, without_dns, installed)
    assert again == []
    for obj in mine:
        await tenant.delete(type(obj), obj.metadata.name, namespace="kube-system")


async def test_drift_in_the_tenant_is_reported_for_repair(
        tenant: AsyncClient, ca: pki.KeyPair, api_cluster: DevCluster) -> None:
    groups = bootstrap_objects(spec({"coreDNS": {}}), ca.cert_pem, ENDPOINT)
    await bootstrap.reconcile(tenant, groups, {})
    drifted: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    watches = TenantWatches(drifted.put_nowait)
    doc = yaml.safe_load(api_cluster.layout.admin_kubeconfig.read_text())
    watches.ensure(("tenants", "t1"), doc)
    try:
        await asyncio.sleep(1.0)  # the initial listing is not drift
        assert drifted.empty()
        await tenant.delete(ConfigMap, "coredns", namespace="kube-system")
        assert await asyncio.wait_for(drifted.get(), 10) == ("tenants", "t1")
        await bootstrap.reconcile(tenant, groups, {"coredns": True})
        await tenant.get(ConfigMap, "coredns", namespace="kube-system")  # repaired
    finally:
        await watches.close()


async def test_a_join_token_authenticates_as_a_bootstrapper(
        tenant: AsyncClient, ca: pki.KeyPair, api_cluster: DevCluster) -> None:
    doc = yaml.safe_load(api_cluster.layout.admin_kubeconfig.read_text())
    server = doc["clusters"][0]["cluster"]["server"]
    access = TenantAccess("tenants", "t1", server.removeprefix("https://"), doc)
    line = await create_join_command(access, timedelta(minutes=5))
    assert line.ca_cert_hash == ca_cert_hash(access.ca_pem)
    assert JoinCommand.parse(str(line)) == line
    token_id = line.token.split(".")[0]
    secret = await tenant.get(Secret, f"bootstrap-token-{token_id}", namespace="kube-system")
    assert secret.type == "bootstrap.kubernetes.io/token"
    # The API server itself accepts the token: ask who we are with it.
    async with _as_token(doc, line.token) as bootstrapper:
        review = await bootstrapper.create(SelfSubjectReview())
        assert review.status.userInfo.username == f"system:bootstrap:{token_id}"
        assert NODE_TOKEN_GROUP in review.status.userInfo.groups
        with pytest.raises(ApiError) as denied:  # and it is no admin
            async for _ in bootstrapper.list(Namespace):
                break
        assert denied.value.status.code == 403
    await tenant.delete(Secret, f"bootstrap-token-{token_id}", namespace="kube-system")

    expired = await create_join_command(access, timedelta(minutes=5),
                                        now=datetime.now(UTC) - timedelta(hours=1))
    async with _as_token(doc, expired.token) as late:
        with pytest.raises(ApiError) as refused:
            await late.create(SelfSubjectReview())
        assert refused.value.status.code == 401


@contextlib.asynccontextmanager
async def _as_token(doc: dict[str, Any], token: str) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(KubeConfig.from_dict({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "t", "cluster": doc["clusters"][0]["cluster"]}],
        "users": [{"name": "b", "user": {"token": token}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "b"}}],
        "current-context": "t"}), trust_env=False)
    try:
        yield client
    finally:
        await client.close()
