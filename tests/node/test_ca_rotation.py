"""A staged CA rotation (issue 14): a 2-replica tenant with a joined worker and its addons
rotates its cluster CA while a client sends 5 requests a second, re-reading its kubeconfig
from the admin Secret every second. No request fails; the worker stays Ready before and
after its documented step (``haku dev worker renew-ca``); once the rotation completes every
request verifies against the new CA alone, the old CA and the old credentials open nothing,
and each phase was an Event."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from lightkube.codecs import from_dict
from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.core_v1 import ConfigMap, Event, Node, Pod

from haku.api.resources import TenantControlPlane
from haku.dev import samples
from haku.dev import worker as workers
from haku.dev.client_loop import ClientLoop
from haku.dev.cluster import DevCluster
from haku.dev.versions import KUBERNETES_VERSION
from haku.render import ca_rotation as cr
from haku.render.tenant_bootstrap import TRUST_ANNOTATION
from haku.tenant import access, rotate

from .helpers import add_worker, client, eventually, kubectl, pod_ready, wait_tenant_ready

NS = "rotations"
TENANT = "rotate"


@dataclass
class Setup:
    cluster: DevCluster
    node: str
    worker: str


async def node_ready(t: Any, name: str) -> bool:
    node = await t.get(Node, name)
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


async def proxy_pod_on(t: Any, node: str) -> Pod | None:
    pods = [p async for p in t.list(Pod, namespace="kube-system",
                                    labels={"k8s-app": "kube-proxy"},
                                    fields={"spec.nodeName": node})]
    return pods[0] if len(pods) == 1 else None


def kubeconfig_file(cluster: DevCluster, doc: dict[str, Any], name: str) -> Path:
    path = cluster.layout.state_dir / "tenants" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
async def setup(running_operator: DevCluster) -> AsyncIterator[Setup]:
    cluster = running_operator
    c = client(cluster)
    try:
        doc = samples.tenant_control_plane(TENANT, NS, "dev-etcd", KUBERNETES_VERSION,
                                           replicas=2, service_type="NodePort", port=None,
                                           addons=True)
        await c.apply(from_dict(doc), force=True)
        tenant = await wait_tenant_ready(c, NS, TENANT)
        result = await add_worker(cluster, tenant)
        t = tenant.client()
        try:
            async def proxy_running() -> bool:
                pod = await proxy_pod_on(t, result.worker.node_name)
                return pod is not None and pod_ready(pod)

            await eventually(proxy_running, 180, "kube-proxy Ready on the worker")
        finally:
            await t.close()
        yield Setup(cluster, result.worker.node_name, result.worker.name)
    finally:
        await c.close()
        await asyncio.to_thread(workers.remove_all, cluster.layout)


async def test_a_staged_ca_rotation_drops_no_request_and_keeps_the_node(setup: Setup) -> None:
    c = client(setup.cluster)
    old = await access.load(c, NS, TENANT)
    old_ca = old.ca_pem
    assert len(cr.certificates(old_ca)) == 1

    async def admin_kubeconfig() -> dict[str, Any]:
        return (await access.load(c, NS, TENANT)).kubeconfig

    loop = ClientLoop(admin_kubeconfig, rate=5.0, reread=1.0, prefix="rotation-loop")
    stop = asyncio.Event()
    running = asyncio.create_task(loop.run(stop))
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    try:
        await asyncio.sleep(3)
        value = await rotate.request(c, NS, TENANT)
        waiting = await rotate.follow(c, NS, TENANT, value, say, 300, until=cr.NODES_PENDING)
        assert waiting["phase"] == cr.NODES_PENDING and waiting["pendingNodes"] == [setup.node]
        obj = (await c.get(TenantControlPlane, TENANT, namespace=NS)).to_dict()
        assert obj["status"]["kubernetesResources"]["version"]["status"] == \
            "CertificateAuthorityRotating"
        assert any("haku join-command" in line for line in lines)  # what node owners do
        during = await access.load(c, NS, TENANT)
        bundle = during.ca_pem
        new_ca = cr.certificates(bundle)[0]
        assert cr.certificates(bundle) == [new_ca, old_ca]
        t = during.client()
        try:
            # The worker, still on the old CA alone, keeps working: Ready, and the API
            # server's new kubelet-client certificate (cross-signed chain) reaches its kubelet.
            assert await node_ready(t, setup.node)
            pod = await proxy_pod_on(t, setup.node)
            assert pod is not None
            kc = kubeconfig_file(setup.cluster, during.kubeconfig, f"{TENANT}-during.kubeconfig")
            kubectl(setup.cluster, "logs", "-n", "kube-system", pod.metadata.name,
                    "--tail=1", kubeconfig=kc)
            # cluster-info offers both CAs to joining nodes meanwhile.
            info = await t.get(ConfigMap, "cluster-info", namespace="kube-public")
            data = yaml.safe_load(info.data["kubeconfig"])
            assert base64.b64decode(
                data["clusters"][0]["cluster"]["certificate-authority-data"]) == bundle
        finally:
            await t.close()
        # The documented node step.
        join = await access.create_join_command(during, timedelta(minutes=30))
        await asyncio.to_thread(workers.renew_ca, setup.cluster.layout, setup.worker, join,
                                printer=say)
        done = await rotate.follow(c, NS, TENANT, value, say, 300)
        completed_at = time.monotonic() - (loop.started_at or time.monotonic())
        assert done["phase"] == cr.COMPLETED and setup.node in done["renewedNodes"]
        await asyncio.sleep(5)  # requests go on after it
    finally:
        stop.set()
        await running
    summary = loop.summary()
    print(json.dumps(summary), flush=True)
    assert summary["failed"] == 0, summary["failures"]
    new_fp = cr.fingerprint(new_ca)
    after = [r for r in loop.requests if r.at > completed_at + 2]
    assert after and all(r.ca == new_fp for r in after), {r.ca for r in after}

    try:
        now = await access.load(c, NS, TENANT)
        assert now.ca_pem == new_ca
        t = now.client()
        try:
            assert await node_ready(t, setup.node)
            # The in-tenant objects trust the new CA alone, and the addons restarted onto it.
            info = await t.get(ConfigMap, "cluster-info", namespace="kube-public")
            data = yaml.safe_load(info.data["kubeconfig"])
            assert base64.b64decode(
                data["clusters"][0]["cluster"]["certificate-authority-data"]) == new_ca
            ds = await t.get(DaemonSet, "kube-proxy", namespace="kube-system")
            annotations = ds.spec.template.metadata.annotations or {}
            assert annotations[TRUST_ANNOTATION] == hashlib.sha256(new_ca).hexdigest()[:16]

            async def proxy_restarted() -> bool:
                pod = await proxy_pod_on(t, setup.node)
                return pod is not None and pod_ready(pod) and (
                    pod.metadata.annotations or {}).get(TRUST_ANNOTATION) == \
                    annotations[TRUST_ANNOTATION]

            await eventually(proxy_restarted, 120, "kube-proxy restarted onto the new CA")
            pod = await proxy_pod_on(t, setup.node)
            assert pod is not None
            kc = kubeconfig_file(setup.cluster, now.kubeconfig, f"{TENANT}-after.kubeconfig")
            kubectl(setup.cluster, "logs", "-n", "kube-system", pod.metadata.name,
                    "--tail=1", kubeconfig=kc)
        finally:
            await t.close()
        # The old CA opens nothing: a client trusting it alone cannot verify the server, and
        # the old admin certificate is refused even by a client that verifies the server.
        server = now.kubeconfig["clusters"][0]["cluster"]["server"]
        user = old.kubeconfig["users"][0]["user"]
        tmp = setup.cluster.layout.state_dir / "tenants"
        (tmp / "old.crt").write_bytes(base64.b64decode(user["client-certificate-data"]))
        (tmp / "old.key").write_bytes(base64.b64decode(user["client-key-data"]))
        trusting_old = ssl.create_default_context(cadata=old_ca.decode())
        with pytest.raises(httpx2.ConnectError):
            async with httpx2.AsyncClient(verify=trusting_old, trust_env=False) as http:
                await http.get(f"{server}/version")
        trusting_new = ssl.create_default_context(cadata=new_ca.decode())
        trusting_new.load_cert_chain(tmp / "old.crt", tmp / "old.key")
        async with httpx2.AsyncClient(verify=trusting_new, trust_env=False) as http:
            answer = await http.get(f"{server}/api/v1/namespaces")
        assert answer.status_code == 401
        # Each phase is an Event, once.
        reasons = [e.reason async for e in c.list(
            Event, namespace=NS, fields={"involvedObject.name": TENANT})]
        for reason in ("CertificateAuthorityRotating", "CertificateAuthorityReissuing",
                       "CertificateAuthorityNodesPending", "CertificateAuthorityDropping",
                       "CertificateAuthorityRotated"):
            assert reasons.count(reason) == 1, reasons
        obj = (await c.get(TenantControlPlane, TENANT, namespace=NS)).to_dict()
        assert obj["status"]["kubernetesResources"]["version"]["status"] == "Ready"
    finally:
        await c.close()
