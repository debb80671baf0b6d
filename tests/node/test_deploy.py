"""Haku installed in-cluster runs from the image Haku builds itself: a tenant becomes Ready
through it, its ServiceAccount can do what the pipeline needs and nothing dangerous, a killed
leader hands over to the standby, /metrics tells the truth. Every test runs twice: installed
with the Helm chart (``helm install charts/haku``, the real helm), then with ``kubectl apply
-k deploy/``, which stays installed for the rest of the suite."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Pod
from lightkube.resources.networking_v1 import Ingress

from haku.api import conditions
from haku.api.resources import TenantControlPlane
from haku.dev import images, operator_image, samples, toolchain
from haku.dev.cluster import DevCluster
from haku.dev.versions import operator_image_name

from .helpers import client, eventually, kubectl

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CHART = Path(__file__).resolve().parents[2] / "charts" / "haku"
NS = "in-cluster"
VERSION = "v1.37.2"
SA = "system:serviceaccount:haku-system:haku-operator"
SELECTOR = {"app.kubernetes.io/name": "haku", "app.kubernetes.io/component": "operator"}


async def operator_pods(c: AsyncClient) -> list[Pod]:
    return [p async for p in c.list(Pod, namespace="haku-system", labels=SELECTOR)
            if p.metadata and not p.metadata.deletionTimestamp]


def ready(pod: Pod) -> bool:
    return pod.status is not None and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


async def leader(c: AsyncClient) -> str:
    """The pod name of the Lease holder (its identity is ``<hostname>-<pid>``)."""
    lease = await c.get(Lease, "haku-operator", namespace="haku-system")
    holder = lease.spec.holderIdentity or ""
    return holder.rsplit("-", 1)[0]


async def wait_tcp_ready(c: AsyncClient, name: str, timeout: float = 180) -> None:
    async def is_ready() -> bool:
        obj = (await c.get(TenantControlPlane, name, namespace=NS)).to_dict()
        found = conditions.find((obj.get("status") or {}).get("conditions"), "Ready")
        return bool(found and found["status"] == "True")

    try:
        await eventually(is_ready, timeout, f"{name} Ready through the in-cluster operator")
    except AssertionError:
        obj = (await c.get(TenantControlPlane, name, namespace=NS)).to_dict()
        raise AssertionError(f"{name} not Ready: {obj.get('status')}") from None


async def apply_tcp(c: AsyncClient, name: str) -> None:
    await c.apply(from_dict(samples.tenant_control_plane(name, NS, "dev-etcd", VERSION)),
                  force=True)


def helm(cluster: DevCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """The real helm (built and cached like the other upstream binaries) on the dev cluster."""
    home = cluster.layout.state_dir / "helm"
    env = {**os.environ, "KUBECONFIG": str(cluster.layout.admin_kubeconfig),
           "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}
    binary = toolchain.ensure(["helm"])["helm"] / "helm"
    done = subprocess.run([str(binary), *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, f"helm {' '.join(args)}: {done.stderr[-2000:]}"
    return done


# Helm first: its uninstall takes the PriorityClass and the admission policy along, which
# `kubectl apply -k deploy/` then puts back for the rest of the suite.
@pytest.fixture(scope="module", params=["helm", "kustomize"])
async def deployed(request: pytest.FixtureRequest, node_handle: Any) -> AsyncIterator[DevCluster]:
    cluster: DevCluster = node_handle.ensure_up()
    archive, name = await asyncio.to_thread(operator_image.build_operator_image)
    await asyncio.to_thread(images.import_images, [operator_image.built_image(archive, name)],
                            cluster.layout.containerd_socket)
    with_helm = request.param == "helm"
    if with_helm:
        # The namespace and CRDs may be there already (the suite's own, not Helm's): adopted.
        helm(cluster, "install", "haku", str(CHART), "--namespace", "haku-system",
             "--create-namespace", "--take-ownership", "--force-conflicts")
        listed = json.loads(helm(cluster, "list", "--namespace", "haku-system",
                                 "--output", "json").stdout)
        assert [(r["name"], r["status"]) for r in listed] == [("haku", "deployed")]
    else:
        kubectl(cluster, "apply", "-k", str(DEPLOY))
    c = client(cluster)
    try:
        async def available() -> bool:
            d = await c.get(Deployment, "haku-operator", namespace="haku-system")
            return (d.status.readyReplicas or 0) == 2 if d.status else False

        try:
            await eventually(available, 180, "the operator Deployment to have 2 ready pods")
        except AssertionError:
            described = kubectl(cluster, "-n", "haku-system", "describe", "pods", check=False)
            raise AssertionError(described.stdout[-3000:]) from None
        async def led_by_a_pod_of_this_install() -> bool:
            return await leader(c) in {p.metadata.name for p in await operator_pods(c)
                                       if p.metadata}

        # A Lease left by the previous install's pods (their RBAC went with them, so they
        # could not release it) expires first: up to the 15 s lease duration.
        await eventually(led_by_a_pod_of_this_install, 60, "a pod of this install to lead")
        for obj in samples.datastore_objects(cluster.layout):
            await c.apply(from_dict(obj), force=True)
        await c.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": NS}}), force=True)
        yield cluster
    finally:
        # Tenants first, while an operator runs to finalize them; then the operator (not the
        # CRDs or the namespace, which the rest of the suite shares).
        async for tcp in c.list(TenantControlPlane, namespace=NS):
            await c.delete(TenantControlPlane, tcp.metadata.name, namespace=NS)

        async def tenants_gone() -> bool:
            return not [t async for t in c.list(TenantControlPlane, namespace=NS)]

        try:
            await eventually(tenants_gone, 90, "the in-cluster operator to finalize tenants")
        finally:
            if with_helm:
                helm(cluster, "uninstall", "haku", "--namespace", "haku-system", "--wait")
            else:
                kubectl(cluster, "delete", "--wait=true", "-f", str(DEPLOY / "operator.yaml"),
                        "-f", str(DEPLOY / "rbac.yaml"), check=False)
            with_pods = True
            for _ in range(120):
                with_pods = bool(await operator_pods(c))
                if not with_pods:
                    break
                await asyncio.sleep(0.5)
            await c.close()
            assert not with_pods, "operator pods still running after delete"


async def test_a_tenant_becomes_ready_through_the_in_cluster_operator(
        deployed: DevCluster) -> None:
    c = client(deployed)
    try:
        pods = await operator_pods(c)
        assert len(pods) == 2 and all(map(ready, pods))  # the standby is ready too
        assert await leader(c) in {p.metadata.name for p in pods}
        for pod in pods:  # from the image Haku built, as the non-root user
            (container,) = pod.spec.containers
            assert container.image == operator_image_name()
        # Every kind of write the pipeline makes: a NodePort tenant (its endpoint from a
        # Node's address) bootstrapped with both addons, and an Ingress.
        doc = samples.tenant_control_plane("one", NS, "dev-etcd", VERSION,
                                           service_type="NodePort", port=31460, addons=True)
        doc["spec"]["controlPlane"]["ingress"] = {"hostname": "one.tenants.example"}
        await c.apply(from_dict(doc), force=True)
        await wait_tcp_ready(c, "one")
        obj = (await c.get(TenantControlPlane, "one", namespace=NS)).to_dict()
        assert conditions.find(obj["status"]["conditions"],
                               "TenantBootstrapped")["status"] == "True"
        await c.get(Ingress, "one", namespace=NS)
        # The leader's log lines are JSON and carry the tenant they are about.
        logs = kubectl(deployed, "-n", "haku-system", "logs", await leader(c)).stdout
        lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        assert any(line.get("tenant") == f"{NS}/one" for line in lines), logs[-2000:]
    finally:
        await c.close()


# (verb, resource, namespace or "", expected answer) for `kubectl auth can-i --as <SA>`.
CAN_I = [
    ("patch", "tenantcontrolplanes.haku.dev", "any", "yes"),
    ("patch", "tenantcontrolplanes.haku.dev/status", "any", "yes"),
    ("watch", "datastores.haku.dev", "", "yes"),
    ("patch", "datastores.haku.dev/status", "", "yes"),
    ("create", "secrets", "any", "yes"),
    ("create", "deployments.apps", "any", "yes"),
    ("patch", "services", "any", "yes"),
    ("delete", "ingresses.networking.k8s.io", "any", "yes"),
    ("create", "events", "any", "yes"),
    ("patch", "events", "any", "no"),  # never updated
    ("list", "nodes", "", "yes"),
    ("patch", "networkpolicies.networking.k8s.io", "any", "yes"),
    ("list", "servicecidrs.networking.k8s.io", "", "yes"),
    ("create", "servicecidrs.networking.k8s.io", "", "no"),
    ("delete", "deployments.apps", "any", "yes"),  # stopped before the data is dropped
    ("list", "pods", "any", "yes"),  # ... and waited for
    ("patch", "datastores.haku.dev", "", "yes"),  # its finalizer while tenants use it
    ("update", "leases.coordination.k8s.io/haku-operator", "haku-system", "yes"),
    # not needed, so not granted
    ("*", "*", "any", "no"),
    ("create", "pods/exec", "any", "no"),
    ("get", "pods", "any", "no"),
    ("delete", "pods", "any", "no"),
    ("patch", "nodes", "", "no"),
    ("delete", "nodes", "", "no"),
    ("delete", "secrets", "any", "no"),
    ("delete", "tenantcontrolplanes.haku.dev", "any", "no"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", "", "no"),
    ("bind", "clusterroles.rbac.authorization.k8s.io", "", "no"),
    ("impersonate", "users", "", "no"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", "", "no"),
    ("update", "leases.coordination.k8s.io/kube-scheduler", "kube-system", "no"),
    ("update", "leases.coordination.k8s.io/other", "haku-system", "no"),
]


async def test_the_service_account_can_do_what_it_needs_and_nothing_dangerous(
        deployed: DevCluster) -> None:
    wrong = []
    for verb, resource, namespace, expected in CAN_I:
        where = (["--all-namespaces"] if namespace == "any" else
                 ["-n", namespace] if namespace else [])
        got = kubectl(deployed, "auth", "can-i", verb, resource, f"--as={SA}", *where,
                      check=False).stdout.strip()
        if got != expected:
            wrong.append(f"can-i {verb} {resource} {namespace}: {got!r}, expected {expected}")
    assert not wrong, "\n".join(wrong)


async def test_killing_the_leader_hands_over_and_a_tenant_created_meanwhile_is_ready(
        deployed: DevCluster) -> None:
    c = client(deployed)
    try:
        before = await leader(c)
        others = {p.metadata.name for p in await operator_pods(c)} - {before}
        assert len(others) == 1
        await c.delete(Pod, before, namespace="haku-system", grace_period=0)
        await apply_tcp(c, "handover")

        async def taken_over() -> bool:
            # The standby, or the pod replacing the killed one, whichever asks first once
            # the killed leader's Lease has run out.
            now = await leader(c)
            return now != before and now in {p.metadata.name for p in await operator_pods(c)}

        await eventually(taken_over, 45, "another pod to take the Lease (15 s duration)")
        await wait_tcp_ready(c, "handover")
    finally:
        await c.close()


async def test_a_rolling_update_of_the_operator_loses_nothing(deployed: DevCluster) -> None:
    c = client(deployed)
    try:
        before = {p.metadata.name for p in await operator_pods(c)}
        kubectl(deployed, "-n", "haku-system", "rollout", "restart", "deployment/haku-operator")
        await apply_tcp(c, "rolling")

        async def replaced() -> bool:
            pods = await operator_pods(c)
            return (len(pods) == 2 and not before & {p.metadata.name for p in pods}
                    and all(map(ready, pods)))

        await eventually(replaced, 180, "both operator pods replaced and ready")
        await wait_tcp_ready(c, "rolling")

        async def new_leader() -> bool:  # the last old pod released the Lease as it stopped
            return await leader(c) in {p.metadata.name for p in await operator_pods(c)}

        await eventually(new_leader, 30, "a new pod to lead")
    finally:
        await c.close()


def scrape(pod_ip: str) -> dict[str, float]:
    """Samples from the pod's /metrics: {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://{pod_ip}:8080/metrics", timeout=10) as response:
        text = response.read().decode()
    samples_: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples_[key] = float(value)
    return samples_


async def test_metrics_count_tenants_after_two_are_created_and_one_deleted(
        deployed: DevCluster) -> None:
    c = client(deployed)
    try:
        for name in ("m-one", "m-two"):
            await apply_tcp(c, name)
        for name in ("m-one", "m-two"):
            await wait_tcp_ready(c, name)
        await c.delete(TenantControlPlane, "m-two", namespace=NS)

        async def gone() -> bool:
            try:
                await c.get(TenantControlPlane, "m-two", namespace=NS)
            except ApiError as e:
                return e.status.code == 404
            return False

        await eventually(gone, 60, "m-two finalized")
        expected = len([t async for t in c.list(TenantControlPlane, namespace="*")])
        pod = await c.get(Pod, await leader(c), namespace="haku-system")
        key = 'haku_tenant_control_planes{datastore="dev-etcd",status="Ready"}'

        async def counted() -> bool:
            return (await asyncio.to_thread(scrape, pod.status.podIP)).get(key) == expected

        try:
            await eventually(counted, 30, f"{key} == {expected}")
        except AssertionError:
            got = await asyncio.to_thread(scrape, pod.status.podIP)
            raise AssertionError({k: v for k, v in got.items()
                                  if k.startswith("haku_tenant")}) from None
        got = await asyncio.to_thread(scrape, pod.status.podIP)
        assert any(k.startswith("haku_reconcile_duration_seconds_count") and v > 0
                   for k, v in got.items())
        assert any(k.startswith("haku_workqueue_depth") for k in got)
        assert any(k.startswith("haku_certificate_expiry_timestamp_seconds") and
                   'name="m-one"' in k for k in got)
        assert not any('name="m-two"' in k for k in got)  # the deleted tenant left the series
    finally:
        await c.close()
