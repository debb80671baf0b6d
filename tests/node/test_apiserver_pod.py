"""A Deployment running the locally built registry.k8s.io/kube-apiserver image serves its API."""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import yaml
from lightkube import ApiError
from lightkube.codecs import from_dict
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Namespace, Pod

from haku.dev.cluster import DevCluster
from haku.dev.versions import Versions, etcd_image_tag
from haku.render import kubeconfig, pki

from .helpers import client, eventually, kubectl

NS = "apiserver-pod-test"
SERVER_NAME = "tenant-apiserver.haku.test"


def _secret(ca: pki.KeyPair) -> dict[str, object]:
    alg = pki.KeyAlgorithm.ECDSA_P256
    serving = pki.issue(ca, "kube-apiserver", pki.Usage.SERVER, dns_names=[SERVER_NAME],
                        algorithm=alg)
    sa = pki.new_key(alg)
    data = {"ca.crt": ca.cert_pem, "tls.crt": serving.cert_pem, "tls.key": serving.key_pem,
            "sa.key": pki.key_pem(sa), "sa.pub": pki.public_key_pem(sa)}
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "tenant-pki", "namespace": NS},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def _deployment(versions: Versions) -> dict[str, object]:
    apiserver = [
        "kube-apiserver", "--advertise-address=$(POD_IP)",
        "--etcd-servers=http://127.0.0.1:2379", "--secure-port=6443",
        "--service-cluster-ip-range=10.32.0.0/24", "--authorization-mode=RBAC",
        "--client-ca-file=/pki/ca.crt", "--tls-cert-file=/pki/tls.crt",
        "--tls-private-key-file=/pki/tls.key",
        "--service-account-issuer=https://tenant.haku.test",
        "--service-account-key-file=/pki/sa.pub",
        "--service-account-signing-key-file=/pki/sa.key",
    ]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "tenant-cp", "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "tenant-cp"}},
            "template": {
                "metadata": {"labels": {"app": "tenant-cp"}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "volumes": [{"name": "pki", "secret": {"secretName": "tenant-pki"}},
                                {"name": "data", "emptyDir": {}}],
                    "containers": [
                        {"name": "etcd",
                         "image": f"registry.k8s.io/etcd:{etcd_image_tag(versions.etcd)}",
                         "command": ["etcd", "--data-dir=/data",
                                     "--listen-client-urls=http://127.0.0.1:2379",
                                     "--advertise-client-urls=http://127.0.0.1:2379",
                                     "--listen-peer-urls=http://127.0.0.1:2380"],
                         "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                        {"name": "kube-apiserver",
                         "image": f"registry.k8s.io/kube-apiserver:{versions.kubernetes}",
                         "imagePullPolicy": "IfNotPresent",
                         "env": [{"name": "POD_IP",
                                  "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                         "command": apiserver,
                         "volumeMounts": [{"name": "pki", "mountPath": "/pki",
                                           "readOnly": True}],
                         "readinessProbe": {"httpGet": {"path": "/readyz", "port": 6443,
                                                        "scheme": "HTTPS"},
                                            "periodSeconds": 1}},
                    ],
                },
            },
        },
    }


async def test_kube_apiserver_image_runs_as_a_pod_and_serves(
    node_cluster: DevCluster, tmp_path: Path
) -> None:
    c = client(node_cluster)
    ca = pki.new_ca("tenant-ca", pki.KeyAlgorithm.ECDSA_P256)
    try:
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
        await c.apply(from_dict(namespace))
        await c.apply(from_dict(_secret(ca)), force=True)
        await c.apply(from_dict(_deployment(node_cluster.versions)), force=True)

        async def available() -> bool:
            d = await c.get(Deployment, "tenant-cp", namespace=NS)
            return bool(d.status and d.status.readyReplicas == 1)

        await eventually(available, 90, "the kube-apiserver Deployment to be Ready")
        pods = [p async for p in c.list(Pod, namespace=NS, labels={"app": "tenant-cp"})]
        assert len(pods) == 1
        pod = pods[0]
        assert pod.status.podIP.startswith("10.240.")
        images = {s.name: s.image for s in pod.status.containerStatuses}
        assert images["kube-apiserver"] == (
            f"registry.k8s.io/kube-apiserver:{node_cluster.versions.kubernetes}")

        admin = pki.issue(ca, "tenant-admin", pki.Usage.CLIENT,
                          organizations=["system:masters"], algorithm=pki.KeyAlgorithm.ECDSA_P256)
        doc = kubeconfig.client_certificate_kubeconfig(
            "tenant", f"https://{pod.status.podIP}:6443", ca.cert_pem, "tenant-admin",
            admin.cert_pem, admin.key_pem)
        doc["clusters"][0]["cluster"]["tls-server-name"] = SERVER_NAME
        path = tmp_path / "tenant.kubeconfig"
        path.write_text(yaml.safe_dump(doc))

        kubectl(node_cluster, "create", "namespace", "made-in-the-pod", kubeconfig=path)
        names = kubectl(node_cluster, "get", "ns", "-o", "name", kubeconfig=path).stdout.split()
        assert {"namespace/default", "namespace/kube-system", "namespace/made-in-the-pod"} <= \
            set(names)
        version = kubectl(node_cluster, "version", "-o", "yaml", kubeconfig=path).stdout
        assert yaml.safe_load(version)["serverVersion"]["gitVersion"] == \
            node_cluster.versions.kubernetes
        # The pod's API is its own: the admin cluster has no such namespace.
        admin_names = kubectl(node_cluster, "get", "ns", "-o", "name").stdout.split()
        assert "namespace/made-in-the-pod" not in admin_names
    finally:
        with contextlib.suppress(ApiError):
            await c.delete(Namespace, NS)
        await c.close()
