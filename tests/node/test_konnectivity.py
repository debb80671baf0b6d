"""Konnectivity (issue 13) on the full local cluster: a NodePort tenant whose node port is
allocated (no networkProfile.port), with the addon, and a worker behind NAT (the admin side
cannot open a connection to it). Its agent connects out; through that tunnel the tenant's
kube-apiserver serves logs, exec, port-forward and attach of a pod on the worker, calls a
validating webhook served by a pod in the tenant, and aggregates metrics-server (APIService
Available, ``kubectl top nodes``). The tenant's ``kubernetes`` Service leads to its API from
a pod. The control-plane pod's NetworkPolicy allows egress to its datastore only. Removing the
addon removes both sides.

(Without Konnectivity the same NAT'ed worker's logs cannot be fetched:
tests/node/test_nat_worker.py.)"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.generic_resource import create_global_resource
from lightkube.resources.admissionregistration_v1 import ValidatingWebhookConfiguration
from lightkube.resources.apps_v1 import DaemonSet, Deployment
from lightkube.resources.core_v1 import ConfigMap, Pod, Secret, Service
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.types import PatchType

from haku.api.resources import TenantControlPlane
from haku.dev import images, operator_image, samples
from haku.dev import worker as workers
from haku.dev.cluster import DevCluster
from haku.dev.versions import BUSYBOX_IMAGE, metrics_server_image_name
from haku.dev.worker_config import worker_paths
from haku.render import pki
from haku.tenant.access import TenantAccess

from .helpers import (
    add_worker,
    client,
    ensure_addons,
    eventually,
    kubectl,
    pod_ready,
    wait_tenant_ready,
)

NS = "konnectivity"
TENANT = "konn"
VERSION = "v1.37.2"
APIService = create_global_resource("apiregistration.k8s.io", "v1", "APIService",
                                    "apiservices")


@dataclass
class Setup:
    cluster: DevCluster
    tenant: TenantAccess
    node: str
    worker_index: int
    kubeconfig: Path


def conditions(obj: Any) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.to_dict().get("status") or {}).get("conditions") or []}


@pytest.fixture(scope="module")
async def setup(running_operator: DevCluster, tmp_path_factory: pytest.TempPathFactory,
                ) -> AsyncIterator[Setup]:
    cluster = running_operator
    await ensure_addons(cluster)
    c = client(cluster)
    try:
        doc = samples.tenant_control_plane(TENANT, NS, "dev-etcd", VERSION,
                                           service_type="NodePort", port=None, addons=True)
        doc["spec"]["addons"]["konnectivity"] = {}
        await c.apply(from_dict(doc), force=True)
        tenant = await wait_tenant_ready(c, NS, TENANT)
        result = await add_worker(cluster, tenant, behind_nat=True)
        kubeconfig = tmp_path_factory.mktemp("konn") / "admin.conf"
        kubeconfig.write_text(yaml.safe_dump(tenant.kubeconfig))

        async def connected() -> bool:
            got = await c.get(TenantControlPlane, TENANT, namespace=NS)
            return conditions(got).get("KonnectivityConnected", {}).get("status") == "True"

        await eventually(connected, 180, "KonnectivityConnected=True")
        yield Setup(cluster, tenant, result.worker.node_name, result.worker.index, kubeconfig)
    finally:
        await c.close()
        await asyncio.to_thread(workers.remove_all, cluster.layout)


def tkubectl(s: Setup, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """kubectl as the tenant's admin."""
    return kubectl(s.cluster, *args, kubeconfig=s.kubeconfig, check=check)


async def run_pod(t: AsyncClient, s: Setup, name: str, script: str,
                  ports: list[int] | None = None, image: str = BUSYBOX_IMAGE,
                  command: list[str] | None = None, **extra: Any) -> None:
    container: dict[str, Any] = {"name": name, "image": image, "imagePullPolicy": "Never",
                                 "command": command or ["sh", "-c", script]}
    if ports:
        container["ports"] = [{"containerPort": p} for p in ports]
    container |= extra.pop("container", {})
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
           "spec": {"nodeName": s.node, "containers": [container], **extra}}
    await t.apply(from_dict(pod), force=True)

    async def running() -> bool:
        got = await t.get(Pod, name, namespace="default")
        return pod_ready(got)

    await eventually(running, 120, f"pod {name} running")


async def test_the_agent_connects_from_behind_nat_and_status_says_so(setup: Setup) -> None:
    c = client(setup.cluster)
    try:
        tcp = (await c.get(TenantControlPlane, TENANT, namespace=NS)).to_dict()
        konn = tcp["status"]["addons"]["konnectivity"]
        assert konn["enabled"] is True
        assert konn["agent"]["mode"] == "DaemonSet" and konn["agent"]["ready"] >= 1, konn
        found = conditions(await c.get(TenantControlPlane, TENANT, namespace=NS))
        assert found["KonnectivityConnected"]["reason"] == "Connected"
        assert found["Ready"]["status"] == "True"
        # The NAT is real: the admin host cannot open a connection to the worker's kubelet.
        net = workers.load(setup.cluster.layout, setup.worker_index)
        assert net is not None
        with pytest.raises(OSError):
            socket.create_connection((net.address, 10250), 3).close()
    finally:
        await c.close()


async def test_the_kubernetes_service_leads_to_the_allocated_node_port(setup: Setup) -> None:
    """A NodePort tenant without networkProfile.port: kube-apiserver listens on (and
    advertises) the allocated node port, so the in-tenant `kubernetes` Service works."""
    c = client(setup.cluster)
    t = setup.tenant.client()
    try:
        tcp = (await c.get(TenantControlPlane, TENANT, namespace=NS)).to_dict()
        svc_status = tcp["status"]["kubernetesResources"]["service"]
        node_port = svc_status["port"]
        assert 30000 <= node_port <= 32767 and svc_status["apiServerPort"] == node_port
        assert tcp["status"]["controlPlaneEndpoint"] == f"{svc_status['nodeAddress']}:{node_port}"
        slices = tkubectl(setup, "get", "endpointslices", "-n", "default", "-l",
                          "kubernetes.io/service-name=kubernetes", "-o", "yaml").stdout
        doc = yaml.safe_load(slices)["items"][0]
        assert doc["ports"][0]["port"] == node_port
        assert doc["endpoints"][0]["addresses"] == [svc_status["nodeAddress"]]
        script = ("printf 'GET /version HTTP/1.0\\r\\n\\r\\n' | nc -w 10 10.96.0.1 443; "
                  "echo; echo done; sleep 3600")
        await run_pod(t, setup, "svc-probe", script)

        async def answered() -> bool:
            logs = tkubectl(setup, "logs", "svc-probe", check=False).stdout
            return "done" in logs

        await eventually(answered, 60, "the probe's answer")
        logs = tkubectl(setup, "logs", "svc-probe").stdout
        assert "Client sent an HTTP request to an HTTPS server" in logs, logs
    finally:
        with contextlib.suppress(ApiError):
            await t.delete(Pod, "svc-probe", namespace="default", grace_period=0)
        await t.close()
        await c.close()


async def test_logs_exec_port_forward_and_attach_go_through_the_tunnel(setup: Setup) -> None:
    t = setup.tenant.client()
    script = ("echo hello-from-behind-nat; mkdir -p /www; echo served-through-tunnel "
              "> /www/index.html; httpd -p 8080 -h /www; "
              "while true; do echo tick; sleep 1; done")
    try:
        await run_pod(t, setup, "natpod", script, ports=[8080])
        logs = tkubectl(setup, "logs", "natpod").stdout
        assert "hello-from-behind-nat" in logs
        out = tkubectl(setup, "exec", "natpod", "--", "sh", "-c", "echo exec-$((40+2))").stdout
        assert out.strip() == "exec-42"
        # port-forward: a local port leads to the pod's httpd.
        local = 18089
        forward = subprocess.Popen(
            [str(setup.cluster.layout.bin / "kubectl"), f"--kubeconfig={setup.kubeconfig}",
             "port-forward", "pod/natpod", f"{local}:8080"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            body = ""
            for _ in range(40):
                try:
                    with socket.create_connection(("127.0.0.1", local), 3) as conn:
                        conn.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                        # HTTP/1.0: the server closes after the body, which
                        # may come in a later segment than the headers.
                        chunks = []
                        while chunk := conn.recv(4096):
                            chunks.append(chunk)
                        body = b"".join(chunks).decode(errors="replace")
                    if "served-through-tunnel" in body:
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            assert "served-through-tunnel" in body, body
        finally:
            forward.terminate()
            forward.wait(10)
        # attach: the running container's output streams back.
        attach = subprocess.Popen(
            [str(setup.cluster.layout.bin / "kubectl"), f"--kubeconfig={setup.kubeconfig}",
             "attach", "natpod"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, _ = attach.communicate(timeout=6)
        except subprocess.TimeoutExpired:
            attach.kill()
            out, _ = attach.communicate()
        assert "tick" in out, out
    finally:
        with contextlib.suppress(ApiError):
            await t.delete(Pod, "natpod", namespace="default", grace_period=0)
        await t.close()


WEBHOOK = r"""
import http.server, json, ssl

class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request = review["request"]
        name = request["object"]["metadata"]["name"]
        allowed = not name.startswith("forbidden-")
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                           "response": {"uid": request["uid"], "allowed": allowed,
                                        "status": {"message": "konnectivity-webhook: no "
                                                   + name}}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain("/tls/tls.crt", "/tls/tls.key")
server = http.server.HTTPServer(("0.0.0.0", 8443), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


async def test_a_validating_webhook_served_in_the_tenant_is_called(setup: Setup) -> None:
    """kube-apiserver dials the webhook's Service through the tunnel (its agent, on the
    worker, reaches the ClusterIP): the webhook's answer refuses a ConfigMap."""
    archive, name = await asyncio.to_thread(operator_image.build_operator_image,
                                            printer=lambda line: print(line, flush=True))
    socket_path = worker_paths(setup.cluster.layout, setup.worker_index).containerd_socket
    await asyncio.to_thread(images.import_images,
                            [operator_image.built_image(archive, name)], socket_path)
    ca = pki.new_ca("webhook-ca")
    cert = pki.issue(ca, "webhook.default.svc", pki.Usage.SERVER,
                     dns_names=("webhook.default.svc",))
    t = setup.tenant.client()
    hook = {"apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "konnectivity-test"},
            "webhooks": [{"name": "konnectivity-test.haku.dev",
                          "clientConfig": {"service": {"namespace": "default", "name": "webhook",
                                                       "port": 443},
                                           "caBundle": base64.b64encode(ca.cert_pem).decode()},
                          "rules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                     "operations": ["CREATE"], "resources": ["configmaps"]}],
                          "namespaceSelector": {"matchLabels": {
                              "kubernetes.io/metadata.name": "default"}},
                          "failurePolicy": "Fail", "sideEffects": "None",
                          "admissionReviewVersions": ["v1"], "timeoutSeconds": 10}]}
    try:
        await t.apply(from_dict({"apiVersion": "v1", "kind": "Secret",
                                 "metadata": {"name": "webhook-tls", "namespace": "default"},
                                 "type": "kubernetes.io/tls",
                                 "data": {"tls.crt": base64.b64encode(cert.cert_pem).decode(),
                                          "tls.key": base64.b64encode(cert.key_pem).decode()}}),
                      force=True)
        await t.apply(from_dict({"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": "webhook-code", "namespace": "default"},
                                 "data": {"webhook.py": WEBHOOK}}), force=True)
        await t.apply(from_dict({"apiVersion": "v1", "kind": "Service",
                                 "metadata": {"name": "webhook", "namespace": "default"},
                                 "spec": {"selector": {"app": "webhook"},
                                          "ports": [{"port": 443, "targetPort": 8443}]}}),
                      force=True)
        await run_pod(t, setup, "webhook", "", ports=[8443], image=name,
                      command=["python3", "/code/webhook.py"],
                      container={"volumeMounts": [
                          {"name": "tls", "mountPath": "/tls"},
                          {"name": "code", "mountPath": "/code"}],
                          "readinessProbe": {"tcpSocket": {"port": 8443}, "periodSeconds": 1}},
                      volumes=[{"name": "tls", "secret": {"secretName": "webhook-tls"}},
                               {"name": "code", "configMap": {"name": "webhook-code"}}])
        await t.apply(from_dict(hook), force=True)
        allowed = {"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "allowed-by-hook", "namespace": "default"}}
        forbidden = {"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "forbidden-by-hook", "namespace": "default"}}
        errors: list[str] = []

        async def admitted() -> bool:
            # The Service's endpoints reach the worker's kube-proxy a moment after the pod is
            # Ready; until then the agent's dial is refused.
            try:
                await t.create(from_dict(allowed))
            except ApiError as e:
                errors[:] = [str(e.status.message)]
                return False
            return True

        try:
            await eventually(admitted, 60, "the webhook to admit a ConfigMap")
        except AssertionError as e:
            raise AssertionError(f"{e}; last refusal: {errors}") from None
        refusals: list[str] = []

        async def refused_by_the_hook() -> bool:
            # The webhook's own refusal; a dial refused on the way (kube-proxy on the worker
            # reprogramming its rules) is tried again.
            try:
                await t.create(from_dict(forbidden))
            except ApiError as e:
                refusals.append(str(e.status.message))
                return "konnectivity-webhook: no forbidden-by-hook" in refusals[-1]
            raise AssertionError("forbidden-by-hook was admitted")

        try:
            await eventually(refused_by_the_hook, 30, "the webhook to refuse a ConfigMap")
        except AssertionError as e:
            raise AssertionError(f"{e}; refusals: {refusals}") from None
    finally:
        with contextlib.suppress(ApiError):
            await t.delete(ValidatingWebhookConfiguration, "konnectivity-test")
        for kind, obj in ((Pod, "webhook"), (Service, "webhook"), (Secret, "webhook-tls"),
                          (ConfigMap, "webhook-code"), (ConfigMap, "allowed-by-hook")):
            with contextlib.suppress(ApiError):
                await t.delete(kind, obj, namespace="default")
        await t.close()


def metrics_server_objects() -> list[dict[str, Any]]:
    """metrics-server v0.8.0's components.yaml, as upstream ships it, but for
    --kubelet-insecure-tls (the dev kubelets serve self-signed certificates)."""
    labels = {"k8s-app": "metrics-server"}
    ns = "kube-system"
    rbac = "rbac.authorization.k8s.io"
    sa = {"kind": "ServiceAccount", "name": "metrics-server", "namespace": ns}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "metrics-server", "namespace": ns, "labels": labels}},
        {"apiVersion": f"{rbac}/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:metrics-server", "labels": labels},
         "rules": [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                   {"apiGroups": [""], "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": f"{rbac}/v1", "kind": "RoleBinding",
         "metadata": {"name": "metrics-server-auth-reader", "namespace": ns, "labels": labels},
         "roleRef": {"apiGroup": rbac, "kind": "Role",
                     "name": "extension-apiserver-authentication-reader"},
         "subjects": [sa]},
        {"apiVersion": f"{rbac}/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "metrics-server:system:auth-delegator", "labels": labels},
         "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "system:auth-delegator"},
         "subjects": [sa]},
        {"apiVersion": f"{rbac}/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:metrics-server", "labels": labels},
         "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "system:metrics-server"},
         "subjects": [sa]},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "metrics-server", "namespace": ns, "labels": labels},
         "spec": {"selector": labels, "ports": [{"name": "https", "port": 443,
                                                  "protocol": "TCP",
                                                  "targetPort": "https"}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "metrics-server", "namespace": ns, "labels": labels},
         "spec": {"selector": {"matchLabels": labels}, "template": {
             "metadata": {"labels": labels},
             "spec": {"serviceAccountName": "metrics-server",
                      "priorityClassName": "system-cluster-critical",
                      "containers": [{
                          "name": "metrics-server",
                          "image": metrics_server_image_name("v0.8.0"),
                          "imagePullPolicy": "IfNotPresent",
                          "args": ["--cert-dir=/tmp", "--secure-port=10250",
                                   "--kubelet-preferred-address-types=InternalIP",
                                   "--kubelet-use-node-status-port", "--metric-resolution=15s",
                                   "--kubelet-insecure-tls"],
                          "ports": [{"name": "https", "containerPort": 10250,
                                     "protocol": "TCP"}],
                          "readinessProbe": {"httpGet": {"path": "/readyz", "port": "https",
                                                         "scheme": "HTTPS"},
                                             "periodSeconds": 10, "failureThreshold": 3},
                          "securityContext": {"allowPrivilegeEscalation": False,
                                              "readOnlyRootFilesystem": True,
                                              "runAsNonRoot": True, "runAsUser": 1000,
                                              "capabilities": {"drop": ["ALL"]}},
                          "volumeMounts": [{"name": "tmp-dir", "mountPath": "/tmp"}]}],
                      "volumes": [{"name": "tmp-dir", "emptyDir": {}}]}}}},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
         "metadata": {"name": "v1beta1.metrics.k8s.io", "labels": labels},
         "spec": {"group": "metrics.k8s.io", "version": "v1beta1",
                  "groupPriorityMinimum": 100, "versionPriority": 100,
                  "insecureSkipTLSVerify": True,
                  "service": {"name": "metrics-server", "namespace": ns}}},
    ]


async def test_metrics_server_is_aggregated_and_kubectl_top_answers(setup: Setup) -> None:
    t = setup.tenant.client()
    try:
        for obj in metrics_server_objects():
            await t.apply(from_dict(obj), force=True)

        async def available() -> bool:
            svc = await t.get(APIService, "v1beta1.metrics.k8s.io")
            found = {c["type"]: c for c in (svc.to_dict().get("status") or {}).get(
                "conditions") or []}
            return found.get("Available", {}).get("status") == "True"

        await eventually(available, 180, "APIService v1beta1.metrics.k8s.io Available")
        top: list[str] = []

        async def answers() -> bool:
            got = tkubectl(setup, "top", "nodes", check=False)
            top[:] = [got.stdout + got.stderr]
            return got.returncode == 0 and setup.node in got.stdout

        await eventually(answers, 120, "kubectl top nodes")
        assert "CPU" in top[0], top
    finally:
        for obj in reversed(metrics_server_objects()):
            with contextlib.suppress(ApiError):
                kind = from_dict(obj)
                ns = obj["metadata"].get("namespace")
                if ns:
                    await t.delete(type(kind), obj["metadata"]["name"], namespace=ns)
                else:
                    await t.delete(type(kind), obj["metadata"]["name"])
        await t.close()


async def test_the_control_plane_reaches_only_its_datastore(setup: Setup) -> None:
    c = client(setup.cluster)
    try:
        policy = (await c.get(NetworkPolicy, TENANT, namespace=NS)).to_dict()
        ingress_ports = [p["port"] for p in policy["spec"]["ingress"][0]["ports"]]
        assert ingress_ports == ["kube-apiserver", "konnectivity"]
        egress = policy["spec"]["egress"]
        assert len(egress) == 1 and egress[0]["ports"] == [{"protocol": "TCP", "port": 12379}], \
            egress
        assert egress[0]["to"] == [{"ipBlock": {"cidr": "10.245.0.1/32"}}], egress
    finally:
        await c.close()


async def test_removing_the_addon_removes_both_sides(setup: Setup) -> None:
    """Last in the module: the agents, their ServiceAccount and RBAC leave the tenant, the
    proxy-server its pod, the port the Service, and the Condition, the port and the agents
    the status."""
    c = client(setup.cluster)
    t = setup.tenant.client()
    try:
        await c.patch(TenantControlPlane, TENANT, [
            {"op": "remove", "path": "/spec/addons/konnectivity"}], namespace=NS,
            patch_type=PatchType.JSON)

        async def gone() -> bool:
            tcp = await c.get(TenantControlPlane, TENANT, namespace=NS)
            status = tcp.to_dict().get("status") or {}
            if "KonnectivityConnected" in conditions(tcp):
                return False
            if (status.get("addons") or {}).get("konnectivity", {}).get("enabled"):
                return False
            dep = await c.get(Deployment, TENANT, namespace=NS)
            names = [x.name for x in dep.spec.template.spec.containers]
            svc = await c.get(Service, TENANT, namespace=NS)
            return "konnectivity-server" not in names and \
                [p.name for p in svc.spec.ports] == ["kube-apiserver"]

        await eventually(gone, 180, "the addon removed from the admin side")
        with pytest.raises(ApiError):
            await t.get(DaemonSet, "konnectivity-agent", namespace="kube-system")
        rbac = tkubectl(setup, "get", "clusterrolebinding", "system:konnectivity-server",
                        check=False)
        assert rbac.returncode != 0 and "NotFound" in rbac.stderr
        sa = tkubectl(setup, "get", "sa", "-n", "kube-system", "konnectivity-agent", check=False)
        assert sa.returncode != 0
        await wait_tenant_ready(c, NS, TENANT)
        # Nothing of the addon is left in the status either.
        status = (await c.get(TenantControlPlane, TENANT, namespace=NS)).to_dict()["status"]
        assert "konnectivityPort" not in status["kubernetesResources"]["service"], status
        assert status["addons"]["konnectivity"] == {"enabled": False}, status["addons"]
    finally:
        await t.close()
        await c.close()
