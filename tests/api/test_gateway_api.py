"""spec.controlPlane.gateway on a real kube-apiserver: the CRD's rules, and the pipeline (its
datastore faked, as in test_pipeline_api) with the real Gateway API CRDs of
haku.dev.gateway_api installed: the TLSRoute it makes, the endpoint, kubeconfig and
certificate that follow the hostname, what a route's status does to the Conditions, and the
route gone when the spec drops the gateway. Without those CRDs: a Condition that says so.

No Gateway controller runs here: where a route's status is needed, the test writes it as a
controller would. Nothing here shows traffic flowing through a Gateway."""

from __future__ import annotations

import asyncio
import base64
import copy
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest
import yaml
from cryptography import x509
from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import Secret, Service
from lightkube.types import PatchType

from haku.api.resources import TenantControlPlane
from haku.controller.config import OperatorConfig
from haku.controller.events import EventRecorder
from haku.controller.operator import wait_established
from haku.controller.steps.gateway import TLSRoute
from haku.controller.tenant import TenantReconciler
from haku.dev import gateway_api
from haku.dev.cluster import DevCluster
from haku.render import controlplane
from haku.render.pki import KeyAlgorithm
from tests.fake_datastores import CountingDriver
from tests.kube import conditions_of

NS = "gateway"
DS = "fake-gateway"
HOST = "t1.gateway.example.invalid"  # resolves nowhere (the operator dials the Service)
PARENT = {"name": "shared", "namespace": "gateways", "sectionName": "kube-apiserver",
          "port": 6443}


def tcp(name: str, gateway: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    cp: dict[str, Any] = {"deployment": {"replicas": 1}, "service": {"serviceType": "ClusterIP"}}
    if gateway is not None:
        cp["gateway"] = gateway
    return {"apiVersion": "haku.dev/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"dataStore": DS, "kubernetes": {"version": "v1.37.2"},
                     "controlPlane": cp, **spec}}


def gw(hostname: str = HOST, parents: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"hostname": hostname, "parentRefs": [dict(PARENT)] if parents is None else parents,
            "additionalMetadata": {"labels": {"team": "blue"},
                                   "annotations": {"example.com/note": "hi"}}}


async def _served(client: AsyncClient) -> bool | None:
    """True: TLSRoute is served; False: unknown (a plain-text 404); None: not ready yet (the
    429 an API server answers while a CRD's storage (re)initializes)."""
    try:
        [_ async for _ in client.list(TLSRoute, namespace=NS)]
    except httpx2.HTTPStatusError as e:
        if e.response.status_code == 404:
            return False
        if e.response.status_code == 429:
            return None
        raise
    return True


async def _remove_gateway_api(client: AsyncClient) -> None:
    for kind in gateway_api.KINDS:
        try:
            await client.delete(CustomResourceDefinition, f"{kind}.gateway.networking.k8s.io")
        except ApiError as e:
            if e.status.code != 404:
                raise
    for _ in range(200):
        if await _served(client) is False:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("TLSRoute still served after its CRD was deleted")


@pytest.fixture
async def gateway_crds(client: AsyncClient) -> AsyncIterator[None]:
    """The real Gateway API CRDs (standard channel), removed again afterwards so that the
    other tests of the session see an admin cluster without them."""
    for crd in await asyncio.to_thread(gateway_api.crds):
        await client.apply(from_dict(crd), force=True)
        await wait_established(client, crd["metadata"]["name"])
    for _ in range(100):  # established, and the resource answering
        if await _served(client) is True:
            break
        await asyncio.sleep(0.1)
    yield
    await _remove_gateway_api(client)


def reconciler(client: AsyncClient) -> TenantReconciler:
    return TenantReconciler(client, OperatorConfig(key_algorithm=KeyAlgorithm.ECDSA_P256),
                            EventRecorder(client))


async def _refused(client: AsyncClient, manifest: dict[str, Any]) -> str:
    with pytest.raises(ApiError) as info:
        await client.apply(from_dict(manifest), force=True)
    assert info.value.status.code == 422, info.value.status.message
    return str(info.value.status.message)


# ---------------------------------------------------------------------------- the CRD


async def test_a_kamaji_gateway_manifest_applies_with_upstreams_defaults(
        client: AsyncClient) -> None:
    kamaji = yaml.safe_load(f"""
apiVersion: haku.dev/v1alpha1
kind: TenantControlPlane
metadata: {{name: ported, namespace: {NS}}}
spec:
  dataStore: {DS}
  kubernetes: {{version: v1.37.2}}
  controlPlane:
    service: {{serviceType: ClusterIP}}
    gateway:
      hostname: ported.example.com
      parentRefs:
        - name: envoy-gw
          namespace: envoy-gateway-system
          sectionName: kube-apiserver
          port: 6443
      additionalMetadata:
        labels: {{tenant.clastix.io: ported}}
""")
    got = (await client.apply(from_dict(kamaji), force=True)).to_dict()
    parent = got["spec"]["controlPlane"]["gateway"]["parentRefs"][0]
    # Gateway API's ParentReference defaults, filled in by the schema.
    assert parent == {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                      "name": "envoy-gw", "namespace": "envoy-gateway-system",
                      "sectionName": "kube-apiserver", "port": 6443}
    assert got["spec"]["controlPlane"]["gateway"]["hostname"] == "ported.example.com"
    # With a port after the hostname too.
    withport = copy.deepcopy(kamaji)
    withport["metadata"]["name"] = "ported-port"
    withport["spec"]["controlPlane"]["gateway"]["hostname"] = "ported.example.com:8443"
    await client.apply(from_dict(withport), force=True)


@pytest.mark.parametrize(("change", "message"), [
    (lambda cp: cp.update(ingress={"hostname": "x.example.com"}),
     "spec.controlPlane.ingress and spec.controlPlane.gateway exclude each other"),
    (lambda cp: cp["gateway"].update(parentRefs=[]),
     "spec.controlPlane.gateway.parentRefs needs exactly one entry"),
    (lambda cp: cp["gateway"].pop("parentRefs"),
     "spec.controlPlane.gateway.parentRefs needs exactly one entry"),
    (lambda cp: cp["gateway"].update(parentRefs=[{"name": "a"}, {"name": "b"}]),
     "spec.controlPlane.gateway.parentRefs needs exactly one entry"),
    (lambda cp: cp["gateway"].pop("hostname"), "spec.controlPlane.gateway.hostname is required"),
    (lambda cp: cp["gateway"].update(hostname="192.0.2.1"), "must be a DNS name, not an IP"),
    (lambda cp: cp["gateway"].update(hostname="Upper.example.com"),
     "spec.controlPlane.gateway.hostname"),
    (lambda cp: cp["gateway"].update(hostname="*.example.com"),
     "spec.controlPlane.gateway.hostname"),
    (lambda cp: cp["gateway"].update(hostname="a.example.com:0"), "must be 1-65535"),
    (lambda cp: cp["gateway"].update(hostname="a.example.com:70000"), "must be 1-65535"),
    (lambda cp: cp["gateway"].update(parentRefs=[{"namespace": "x"}]),
     "spec.controlPlane.gateway.parentRefs[0].name: Required value"),
    (lambda cp: cp["gateway"].update(parentRefs=[{"name": "g", "port": 0}]),
     "spec.controlPlane.gateway.parentRefs[0].port"),
    (lambda cp: cp["gateway"].update(parentRefs=[{"name": "g", "sectionName": "Bad_Name"}]),
     "spec.controlPlane.gateway.parentRefs[0].sectionName"),
])
async def test_the_crd_refuses_a_gateway_kamaji_would_not_serve(
        client: AsyncClient, change: Any, message: str) -> None:
    manifest = tcp("refused", gw("ok.example.com"))
    change(manifest["spec"]["controlPlane"])
    assert message in await _refused(client, manifest)


# ---------------------------------------------------------------------------- the pipeline


async def test_without_the_gateway_api_the_tenant_says_so(
        client: AsyncClient, fake: CountingDriver) -> None:
    from haku.controller import operator

    await _remove_gateway_api(client)
    assert not await operator._gateway_api_served(client)  # the operator would not watch
    await client.apply(from_dict(tcp("nogw", gw())), force=True)
    r = reconciler(client)
    result = await r.reconcile((NS, "nogw"))
    assert result.requeue_after is not None  # looked at again later, not a crash loop
    conds = await conditions_of(client, NS, "nogw")
    available = conds["ControlPlaneAvailable"]
    assert (available["status"], available["reason"]) == ("False", "GatewayAPINotInstalled")
    assert "gateway.networking.k8s.io/v1" in available["message"]
    assert conds["Ready"]["status"] == "False"
    # A second pass says the same, and a tenant without a gateway is not bothered.
    await r.reconcile((NS, "nogw"))
    conds = await conditions_of(client, NS, "nogw")
    assert conds["ControlPlaneAvailable"]["reason"] == "GatewayAPINotInstalled"
    await client.apply(from_dict(tcp("plain")), force=True)
    await r.reconcile((NS, "plain"))
    plain = await conditions_of(client, NS, "plain")
    assert plain["ControlPlaneAvailable"]["reason"] == "NoReadyPods"
    await r.events.flush()
    await r.close()


def _secret_file(secret: Any, key: str) -> bytes:
    return base64.b64decode(secret.data[key])


async def _route(client: AsyncClient, name: str) -> dict[str, Any]:
    got: dict[str, Any] = (await client.get(TLSRoute, name, namespace=NS)).to_dict()
    return got


async def _accept(client: AsyncClient, name: str, accepted: str = "True",
                  reason: str = "Accepted") -> None:
    """Write the route's status as a Gateway controller would (none runs here)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    route = await _route(client, name)
    generation = route["metadata"]["generation"]
    conditions = [
        {"type": "Accepted", "status": accepted, "reason": reason,
         "message": "listener kube-apiserver", "lastTransitionTime": now,
         "observedGeneration": generation},
        {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs",
         "message": "", "lastTransitionTime": now, "observedGeneration": generation}]
    await client.patch(TLSRoute.Status, name, {"status": {"parents": [{  # type: ignore[attr-defined]
        "parentRef": route["spec"]["parentRefs"][0],
        "controllerName": "example.com/test-gateway-controller",
        "conditions": conditions}]}}, namespace=NS, patch_type=PatchType.MERGE)


async def test_the_pipeline_makes_the_tls_route_and_the_endpoint_follows_the_hostname(
        client: AsyncClient, fake: CountingDriver, gateway_crds: None) -> None:
    await client.apply(from_dict(tcp("t1", gw())), force=True)
    owner_uid = (await client.get(TenantControlPlane, "t1", namespace=NS)).metadata.uid
    r = reconciler(client)
    await r.reconcile((NS, "t1"))

    route = await _route(client, "t1")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", **PARENT}]
    assert route["spec"]["hostnames"] == [HOST]
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "t1", "port": 6443, "weight": 1}]
    meta = route["metadata"]
    assert meta["labels"]["team"] == "blue"
    assert meta["labels"][controlplane.TENANT_LABEL] == "t1"
    assert meta["annotations"]["example.com/note"] == "hi"
    assert [(o["kind"], o["uid"], o.get("controller")) for o in meta["ownerReferences"]] == \
        [("TenantControlPlane", owner_uid, True)]
    with pytest.raises(ApiError) as none:  # no Konnectivity, no second route
        await client.get(TLSRoute, "t1-konnectivity", namespace=NS)
    assert none.value.status.code == 404

    status = (await client.get(TenantControlPlane, "t1", namespace=NS)).to_dict()["status"]
    assert status["controlPlaneEndpoint"] == f"{HOST}:6443"
    gateway_status = status["kubernetesResources"]["gateway"]
    assert gateway_status["routeRef"] == {"name": "t1", "namespace": NS}
    assert gateway_status["accessPoints"] == [{"type": "Hostname", "value": HOST, "port": 6443,
                                               "urls": [f"https://{HOST}:6443"]}]
    conds = await conditions_of(client, NS, "t1")
    assert conds["ControlPlaneAvailable"]["reason"] == "WaitingForGateway"
    assert "Gateway gateways/shared listener kube-apiserver" in \
        conds["ControlPlaneAvailable"]["message"]
    assert conds["Ready"]["status"] == "False"

    # The admin kubeconfig dials the hostname; the API server certificate holds it.
    admin = yaml.safe_load(_secret_file(
        await client.get(Secret, status["kubeconfig"]["admin"]["secretName"], namespace=NS),
        "admin.conf"))
    assert admin["clusters"][0]["cluster"]["server"] == f"https://{HOST}:6443"
    # The operator's own super-admin.conf dials the Service (haku.render.endpoint).
    cluster_ip = (await client.get(Service, "t1", namespace=NS)).spec.clusterIP
    internal = yaml.safe_load(_secret_file(
        await client.get(Secret, "t1-kubeconfigs", namespace=NS), "super-admin.conf"))
    assert internal["clusters"][0]["cluster"]["server"] == f"https://{cluster_ip}:6443"
    pki = await client.get(Secret, "t1-pki", namespace=NS)
    cert = x509.load_pem_x509_certificate(_secret_file(pki, "apiserver.crt"))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert HOST in sans.get_values_for_type(x509.DNSName)
    assert status["kubernetesResources"]["service"]["name"] == "t1"  # the Service stays

    # A controller refuses the route: the reason and its words reach the Condition.
    await _accept(client, "t1", "False", "NotAllowedByListeners")
    await r.reconcile((NS, "t1"))
    available = (await conditions_of(client, NS, "t1"))["ControlPlaneAvailable"]
    assert available["reason"] == "RouteNotAccepted"
    assert "Accepted=False (NotAllowedByListeners: listener kube-apiserver)" in \
        available["message"]
    # Then accepts it: the route no longer holds the pipeline back (no pods run here, so
    # the API server step is the one that waits now).
    await _accept(client, "t1")
    await r.reconcile((NS, "t1"))
    conds = await conditions_of(client, NS, "t1")
    assert conds["ControlPlaneAvailable"]["reason"] == "NoReadyPods"
    assert conds["APIServerReady"]["status"] == "False"
    status = (await client.get(TenantControlPlane, "t1", namespace=NS)).to_dict()["status"]
    parents = status["kubernetesResources"]["gateway"]["parents"]
    assert parents[0]["controllerName"] == "example.com/test-gateway-controller"
    assert {c["type"]: c["status"] for c in parents[0]["conditions"]} == {
        "Accepted": "True", "ResolvedRefs": "True"}

    # Konnectivity on: a second route, on the listener konnectivity-server.
    await client.apply(from_dict(tcp("t1", gw(), addons={"konnectivity": {}})), force=True)
    await r.reconcile((NS, "t1"))
    konn = await _route(client, "t1-konnectivity")
    assert konn["spec"]["hostnames"] == [HOST]
    assert konn["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", **PARENT,
         "sectionName": "konnectivity-server", "port": 8132}]
    assert konn["spec"]["rules"][0]["backendRefs"][0]["port"] == 8132
    # ... and gone with the addon.
    await client.apply(from_dict(tcp("t1", gw())), force=True)
    await r.reconcile((NS, "t1"))
    with pytest.raises(ApiError) as gone:
        await client.get(TLSRoute, "t1-konnectivity", namespace=NS)
    assert gone.value.status.code == 404

    # The spec drops the gateway: the routes go, the endpoint is the Service's again.
    await client.apply(from_dict(tcp("t1")), force=True)
    await r.reconcile((NS, "t1"))
    with pytest.raises(ApiError) as dropped:
        await client.get(TLSRoute, "t1", namespace=NS)
    assert dropped.value.status.code == 404
    status = (await client.get(TenantControlPlane, "t1", namespace=NS)).to_dict()["status"]
    assert "gateway" not in status["kubernetesResources"]
    service_ip = status["controlPlaneEndpoint"].rpartition(":")[0]
    assert service_ip and service_ip != HOST
    admin = yaml.safe_load(_secret_file(
        await client.get(Secret, status["kubeconfig"]["admin"]["secretName"], namespace=NS),
        "admin.conf"))
    assert admin["clusters"][0]["cluster"]["server"] == f"https://{service_ip}:6443"
    await r.events.flush()
    await r.close()


async def test_a_foreign_route_of_the_tenants_name_is_left_alone(
        client: AsyncClient, fake: CountingDriver, gateway_crds: None) -> None:
    theirs = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "TLSRoute",
              "metadata": {"name": "squat", "namespace": NS},
              "spec": {"parentRefs": [{"name": "theirs"}], "hostnames": ["theirs.example.com"],
                       "rules": [{"backendRefs": [{"name": "theirs", "port": 443}]}]}}
    await client.apply(from_dict(theirs), force=True)
    await client.apply(from_dict(tcp("squat", gw("squat.example.com"))), force=True)
    r = reconciler(client)
    await r.reconcile((NS, "squat"))
    conds = await conditions_of(client, NS, "squat")
    assert conds["ControlPlaneAvailable"]["reason"] == "NameConflict"
    kept = await _route(client, "squat")
    assert kept["spec"]["hostnames"] == ["theirs.example.com"]
    assert not kept["metadata"].get("ownerReferences")
    # Removing the gateway from the spec does not delete it either (not labelled Haku's).
    await client.apply(from_dict(tcp("squat")), force=True)
    await r.reconcile((NS, "squat"))
    assert (await _route(client, "squat"))["spec"]["hostnames"] == ["theirs.example.com"]
    await r.events.flush()
    await r.close()


# ---------------------------------------------------------------------------- the operator


async def test_the_running_operator_watches_its_routes(
        api_cluster: DevCluster, client: AsyncClient, fake: CountingDriver,
        gateway_crds: None) -> None:
    """With the Gateway API installed the operator watches the tenants' TLSRoutes: a Gateway
    controller's verdict reaches the Condition at once, not at the next requeue (15 s and
    more after a Wait)."""
    from haku.controller import operator
    from haku.controller.telemetry import Telemetry

    assert await operator._gateway_api_served(client)
    telemetry, stop = Telemetry(), asyncio.Event()
    options = operator.RunOptions(kubeconfig=api_cluster.layout.admin_kubeconfig, workers=2,
                                  resync=300.0, leader_elect=False, install_crds=False,
                                  identity="gateway-test", metrics_bind_address="127.0.0.1:0",
                                  health_probe_bind_address="127.0.0.1:0")
    task = asyncio.create_task(operator.run(
        options, OperatorConfig(key_algorithm=KeyAlgorithm.ECDSA_P256), stop, telemetry))

    async def until(check: Any, timeout: float) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            conds = await conditions_of(client, NS, "watched")
            if check(conds):
                return conds
            assert not task.done(), task
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"Conditions never matched: {conds}")
            await asyncio.sleep(0.1)

    try:
        await client.apply(from_dict(tcp("watched", gw("watched.example.invalid"))),
                           force=True)
        await until(lambda c: c.get("ControlPlaneAvailable", {}).get("reason")
                    == "WaitingForGateway", 30.0)
        await _accept(client, "watched", "False", "NotAllowedByListeners")
        started = asyncio.get_running_loop().time()
        await until(lambda c: c["ControlPlaneAvailable"]["reason"] == "RouteNotAccepted", 8.0)
        assert asyncio.get_running_loop().time() - started < 8.0
        await client.delete(TenantControlPlane, "watched", namespace=NS)
        for _ in range(100):  # finalized by the operator
            try:
                await client.get(TenantControlPlane, "watched", namespace=NS)
            except ApiError as e:
                assert e.status.code == 404
                break
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
