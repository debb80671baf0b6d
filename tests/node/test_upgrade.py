"""A version upgrade without downtime (issue 14): a 2-replica tenant on the previous minor,
with a worker joined on that minor's kubelet and CoreDNS and kube-proxy running, is moved
one minor up while a client sends 5 requests a second through its endpoint. No request fails,
the worker stays Ready throughout, the API reports the new version, the in-tenant objects
follow only once the control plane runs it, and each phase is an Event."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from lightkube.codecs import from_dict
from lightkube.resources.apps_v1 import DaemonSet, Deployment
from lightkube.resources.core_v1 import ConfigMap, Event, Node, Pod
from lightkube.types import PatchType

from haku.api.resources import TenantControlPlane
from haku.dev import samples
from haku.dev import worker as workers
from haku.dev.client_loop import ClientLoop
from haku.dev.cluster import DevCluster
from haku.dev.versions import KUBERNETES_VERSION, PREVIOUS_KUBERNETES_VERSION
from haku.tenant import access

from .helpers import (
    add_worker,
    client,
    ensure_kubernetes_images,
    eventually,
    kubectl,
    pod_ready,
    wait_tenant_ready,
)

NS = "upgrades"
TENANT = "upgrade"
OLD, NEW = PREVIOUS_KUBERNETES_VERSION, KUBERNETES_VERSION


@dataclass
class Setup:
    cluster: DevCluster
    tenant: access.TenantAccess
    node: str


def version_of(obj: dict[str, Any]) -> dict[str, Any]:
    return ((obj.get("status") or {}).get("kubernetesResources") or {}).get("version") or {}


async def node_is_ready(t: Any, name: str) -> bool:
    node = await t.get(Node, name)
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


async def addons_ready_on(t: Any, node: str, kube_proxy_tag: str) -> bool:
    pods = [p async for p in t.list(Pod, namespace="kube-system",
                                    fields={"spec.nodeName": node})]
    proxies = [p for p in pods if (p.metadata.labels or {}).get("k8s-app") == "kube-proxy"]
    dns = [p for p in pods if (p.metadata.labels or {}).get("k8s-app") == "kube-dns"]
    return (len(proxies) == 1 and proxies[0].spec.containers[0].image.endswith(
        f":{kube_proxy_tag}") and pod_ready(proxies[0])
        and len(dns) >= 1 and all(map(pod_ready, dns)))


@pytest.fixture(scope="module")
async def setup(running_operator: DevCluster) -> AsyncIterator[Setup]:
    cluster = running_operator
    await ensure_kubernetes_images(cluster, OLD, NEW)
    c = client(cluster)
    try:
        doc = samples.tenant_control_plane(TENANT, NS, "dev-etcd", OLD, replicas=2,
                                           service_type="NodePort", port=None, addons=True)
        await c.apply(from_dict(doc), force=True)
        tenant = await wait_tenant_ready(c, NS, TENANT)
        result = await add_worker(cluster, tenant)
        node = result.worker.node_name
        t = tenant.client()
        try:
            await eventually(lambda: addons_ready_on(t, node, OLD), 240,
                             f"kube-proxy {OLD} and CoreDNS Ready on {node}")
        finally:
            await t.close()
        yield Setup(cluster, tenant, node)
    finally:
        await c.close()
        await asyncio.to_thread(workers.remove_all, cluster.layout)


async def test_an_upgrade_one_minor_up_drops_no_request(setup: Setup) -> None:
    c = client(setup.cluster)
    t = setup.tenant.client()

    async def kubeconfig() -> dict[str, Any]:
        return setup.tenant.kubeconfig

    loop = ClientLoop(kubeconfig, rate=5.0, prefix="upgrade-loop")
    stop = asyncio.Event()
    node_not_ready: list[float] = []
    seen_status: set[str] = set()
    seen_phases: list[str] = []

    async def watch_node() -> None:
        while not stop.is_set():
            try:
                if not await node_is_ready(t, setup.node):
                    node_not_ready.append(time.monotonic())
            except Exception as e:  # an unanswered check is not a NotReady
                print(f"node check: {e}", flush=True)
            await asyncio.sleep(1.0)

    running = asyncio.create_task(loop.run(stop))
    watching = asyncio.create_task(watch_node())
    try:
        await asyncio.sleep(5)  # requests flow before anything changes
        before = version_of((await c.get(TenantControlPlane, TENANT, namespace=NS)).to_dict())
        assert before["status"] == "Ready" and before["version"] == OLD
        started = time.monotonic()
        await c.patch(TenantControlPlane, TENANT,
                      {"spec": {"kubernetes": {"version": NEW}}},
                      namespace=NS, patch_type=PatchType.MERGE)

        async def upgraded() -> bool:
            obj = (await c.get(TenantControlPlane, TENANT, namespace=NS)).to_dict()
            version = version_of(obj)
            seen_status.add(version.get("status", ""))
            phase = (version.get("upgrade") or {}).get("phase")
            if phase and (not seen_phases or seen_phases[-1] != phase):
                seen_phases.append(phase)
                print(f"{time.monotonic() - started:.1f}s: {version}", flush=True)
            return (version.get("status") == "Ready" and version.get("version") == NEW
                    and phase == "Completed")

        await eventually(upgraded, 400, f"the tenant upgraded to {NEW}")
        duration = time.monotonic() - started
        await asyncio.sleep(5)  # and requests still flow after it
    finally:
        stop.set()
        await asyncio.gather(running, watching)
    summary = loop.summary()
    print(json.dumps({"upgrade_seconds": round(duration, 1), **summary}), flush=True)
    assert summary["requests"] >= 5 * duration * 0.8, summary  # the loop kept its rate
    assert summary["failed"] == 0, summary["failures"]
    assert not node_not_ready, f"{setup.node} was NotReady during the upgrade"
    assert "Upgrading" in seen_status
    assert seen_phases[-1] == "Completed" and "ControlPlane" in seen_phases

    try:
        # The API reports the new version (kubectl, through the tenant's endpoint).
        kc = setup.cluster.layout.state_dir / "tenants" / f"{TENANT}-upgrade.kubeconfig"
        kc.parent.mkdir(parents=True, exist_ok=True)
        kc.write_text(yaml.safe_dump(setup.tenant.kubeconfig))
        out = kubectl(setup.cluster, "version", "-o", "json", kubeconfig=kc).stdout
        assert json.loads(out)["serverVersion"]["gitVersion"] == NEW
        # Every control-plane pod runs the new images.
        dep = await c.get(Deployment, TENANT, namespace=NS)
        images = {ct.image for ct in dep.spec.template.spec.containers}
        assert {f"registry.k8s.io/{n}:{NEW}" for n in (
            "kube-apiserver", "kube-controller-manager", "kube-scheduler")} <= images
        # The in-tenant objects followed: kubeadm-config and kube-proxy.
        cm = await t.get(ConfigMap, "kubeadm-config", namespace="kube-system")
        cluster_config = yaml.safe_load((cm.data or {})["ClusterConfiguration"])
        assert cluster_config["kubernetesVersion"] == NEW
        ds = await t.get(DaemonSet, "kube-proxy", namespace="kube-system")
        assert ds.spec.template.spec.containers[0].image == f"registry.k8s.io/kube-proxy:{NEW}"
        await eventually(lambda: addons_ready_on(t, setup.node, NEW), 180,
                         f"kube-proxy {NEW} and CoreDNS Ready on {setup.node}")
        # The kubelet keeps its version (three minors of skew are allowed) and its node works.
        node = await t.get(Node, setup.node)
        assert node.status.nodeInfo.kubeletVersion == OLD
        assert await node_is_ready(t, setup.node)
        # Each phase is an Event on the TenantControlPlane.
        reasons = [e.reason async for e in c.list(
            Event, namespace=NS, fields={"involvedObject.name": TENANT})]
        for reason in ("UpgradeStarted", "ControlPlaneUpgraded", "Upgraded"):
            assert reasons.count(reason) == 1, reasons
    finally:
        await t.close()
        await c.close()
