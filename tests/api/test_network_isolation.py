"""A tenant's place in the admin cluster's network, against a real API server: its
NetworkPolicy (made before its Deployment, owned by it, lifted by the operator's switch) and
the refusal of ranges that overlap the admin cluster's, before anything is provisioned.
Whether a NetworkPolicy really drops traffic is tests/node's business."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import pytest
from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Secret
from lightkube.resources.networking_v1 import NetworkPolicy, ServiceCIDR

from haku.api.resources import TenantControlPlane
from haku.dev.cluster import DevCluster
from tests.api.test_pipeline_api import reconciler
from tests.fake_datastores import CountingDriver, use_fake_datastores
from tests.kube import conditions_of, namespace_client

NS = "netiso"
DS = "fake-netiso"


def tcp(name: str, **net: Any) -> dict[str, Any]:
    return {"apiVersion": "haku.dev/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"dataStore": DS, "kubernetes": {"version": "v1.37.2"},
                     "networkProfile": net,
                     "controlPlane": {"deployment": {"replicas": 1},
                                      "service": {"serviceType": "ClusterIP"}}}}


@pytest.fixture
async def client(api_cluster: DevCluster) -> AsyncIterator[AsyncClient]:
    async with namespace_client(api_cluster, NS) as c:
        yield c
        async for p in c.list(NetworkPolicy, namespace=NS):
            await c.delete(NetworkPolicy, p.metadata.name, namespace=NS)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> CountingDriver:
    driver = CountingDriver()
    driver.endpoints = ("10.245.0.1:15432",)  # type: ignore[attr-defined]
    use_fake_datastores(monkeypatch, {DS: driver})
    return driver


async def service_ranges(client: AsyncClient) -> list[str]:
    return [c async for sc in client.list(ServiceCIDR) for c in sc.spec.cidrs]


async def test_a_tenant_is_fenced_in_by_a_network_policy_it_owns(
        client: AsyncClient, fake: CountingDriver) -> None:
    await client.apply(from_dict(tcp("fenced")), force=True)
    await reconciler(client).reconcile((NS, "fenced"))
    owner = await client.get(TenantControlPlane, "fenced", namespace=NS)
    policy = (await client.get(NetworkPolicy, "fenced", namespace=NS)).to_dict()
    assert [o["uid"] for o in policy["metadata"]["ownerReferences"]] == [owner.metadata.uid]
    dep = await client.get(Deployment, "fenced", namespace=NS)
    assert policy["spec"]["podSelector"]["matchLabels"].items() \
        <= dep.spec.template.metadata.labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    # The API port by its container port's name (render/netpol.py).
    assert policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP",
                                                     "port": "kube-apiserver"}]}]
    egress = policy["spec"]["egress"]
    assert {"to": [{"ipBlock": {"cidr": "10.245.0.1/32"}}],
            "ports": [{"protocol": "TCP", "port": 15432}]} in egress
    # Everything else the pods may reach excludes what the API tells of the admin cluster.
    blocks = [p["ipBlock"] for rule in egress if "ports" not in rule for p in rule["to"]]
    v4 = next(b for b in blocks if b["cidr"] == "0.0.0.0/0")
    admin = await service_ranges(client)
    assert admin and all(str(ipaddress.ip_network(c)) in v4["except"] for c in admin
                         if ipaddress.ip_network(c).version == 4)
    conds = await conditions_of(client, NS, "fenced")
    assert conds["NetworkIsolated"]["status"] == "True"
    assert conds["NetworkIsolated"]["reason"] == "PolicyApplied"


async def test_ranges_that_overlap_the_admin_clusters_are_refused_before_anything_is_made(
        client: AsyncClient, fake: CountingDriver) -> None:
    admin = (await service_ranges(client))[0]
    await client.apply(from_dict(tcp("overlap", serviceCidr=admin)), force=True)
    await reconciler(client).reconcile((NS, "overlap"))
    conds = await conditions_of(client, NS, "overlap")
    got = conds["NetworkIsolated"]
    assert (got["status"], got["reason"]) == ("False", "RangesOverlap")
    assert f"spec.networkProfile.serviceCidr {admin} overlaps the admin cluster's service " \
        f"range {admin} (ServiceCIDR kubernetes)" in got["message"]
    assert conds["Ready"]["status"] == "False"
    assert fake.ensured == []  # no space in the datastore
    for kind in (Deployment, NetworkPolicy, Secret):
        names = [o.metadata.name async for o in client.list(kind, namespace=NS)]
        assert not [n for n in names if n.startswith("overlap")], (kind, names)


async def test_ranges_the_operator_is_told_count_too(client: AsyncClient,
                                                     fake: CountingDriver) -> None:
    await client.apply(from_dict(tcp("told")), force=True)  # podCidr 10.244.0.0/16
    await reconciler(client, admin_pod_cidrs=("10.244.0.0/14",)).reconcile((NS, "told"))
    got = (await conditions_of(client, NS, "told"))["NetworkIsolated"]
    assert got["reason"] == "RangesOverlap"
    assert "spec.networkProfile.podCidr 10.244.0.0/16 overlaps the admin cluster's pod range " \
        "10.244.0.0/14 (--admin-pod-cidr)" in got["message"]


async def test_the_switch_lifts_the_policy_and_says_so(client: AsyncClient,
                                                       fake: CountingDriver) -> None:
    await client.apply(from_dict(tcp("lifted")), force=True)
    await reconciler(client).reconcile((NS, "lifted"))
    await client.get(NetworkPolicy, "lifted", namespace=NS)
    await reconciler(client, tenant_network_policy=False).reconcile((NS, "lifted"))
    with pytest.raises(ApiError) as e:
        await client.get(NetworkPolicy, "lifted", namespace=NS)
    assert e.value.status.code == 404
    got = (await conditions_of(client, NS, "lifted"))["NetworkIsolated"]
    assert (got["status"], got["reason"]) == ("True", "PolicyOff")


async def test_a_foreign_network_policy_of_that_name_is_left_alone(
        client: AsyncClient, fake: CountingDriver) -> None:
    foreign = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "squat", "namespace": NS},
               "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    await client.create(from_dict(foreign))
    await client.apply(from_dict(tcp("squat")), force=True)
    await reconciler(client).reconcile((NS, "squat"))
    got = (await conditions_of(client, NS, "squat"))["NetworkIsolated"]
    assert got["reason"] == "NameConflict"
    kept = await client.get(NetworkPolicy, "squat", namespace=NS)
    assert not kept.metadata.ownerReferences and kept.spec.policyTypes == ["Ingress"]
    assert fake.ensured == []
