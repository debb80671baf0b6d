"""spec.controlPlane.ingress.hostname on a real kube-apiserver, through the pipeline (its
datastore faked, as in test_pipeline_api): the Ingress it makes, and the endpoint that
follows the host name (status, admin.conf, the certificate) while the operator's own
super-admin.conf keeps dialling the Service; back to the Service when the spec drops it.

No Ingress controller runs here (tests/node/test_exposure.py has Traefik carry the traffic)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml
from cryptography import x509
from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Secret, Service
from lightkube.resources.networking_v1 import Ingress

from haku.api.resources import TenantControlPlane
from tests.api.test_gateway_api import reconciler
from tests.fake_datastores import CountingDriver
from tests.kube import conditions_of

NS = "ingress-endpoint"
DS = "fake-ingress"
HOST = "t1.ingress.example.invalid"
PASSTHROUGH = {"nginx.ingress.kubernetes.io/ssl-passthrough": "true"}


def tcp(name: str, ingress: dict[str, Any] | None = None) -> dict[str, Any]:
    cp: dict[str, Any] = {"deployment": {"replicas": 1}, "service": {"serviceType": "ClusterIP"}}
    if ingress is not None:
        cp["ingress"] = ingress
    return {"apiVersion": "haku.dev/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"dataStore": DS, "kubernetes": {"version": "v1.37.2"},
                     "controlPlane": cp}}


def _server(secret: Any, key: str) -> str:
    doc = yaml.safe_load(base64.b64decode(secret.data[key]))
    return str(doc["clusters"][0]["cluster"]["server"])


async def test_the_ingress_hostname_is_the_endpoint_and_the_operator_dials_the_service(
        client: AsyncClient, fake: CountingDriver) -> None:
    ingress = {"hostname": f"{HOST}:8443", "ingressClassName": "nginx",
               "additionalMetadata": {"annotations": PASSTHROUGH}}
    await client.apply(from_dict(tcp("t1", ingress)), force=True)
    r = reconciler(client)
    await r.reconcile((NS, "t1"))

    ing = (await client.get(Ingress, "t1", namespace=NS)).to_dict()
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["metadata"]["annotations"] == PASSTHROUGH
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == HOST  # the Ingress's host carries no port
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": "t1",
                                                              "port": {"number": 6443}}

    cluster_ip = (await client.get(Service, "t1", namespace=NS)).spec.clusterIP
    status = (await client.get(TenantControlPlane, "t1", namespace=NS)).to_dict()["status"]
    assert status["controlPlaneEndpoint"] == f"{HOST}:8443"
    assert status["kubernetesResources"]["service"]["port"] == 6443
    admin = await client.get(Secret, status["kubeconfig"]["admin"]["secretName"], namespace=NS)
    assert _server(admin, "admin.conf") == f"https://{HOST}:8443"
    internal = await client.get(Secret, "t1-kubeconfigs", namespace=NS)
    assert _server(internal, "super-admin.conf") == f"https://{cluster_ip}:6443"
    pki = await client.get(Secret, "t1-pki", namespace=NS)
    cert = x509.load_pem_x509_certificate(base64.b64decode(pki.data["apiserver.crt"]))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert HOST in sans.get_values_for_type(x509.DNSName)
    assert cluster_ip in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    # No controller is asked about: the pipeline goes on to the pods (none run here).
    conds = await conditions_of(client, NS, "t1")
    assert conds["ControlPlaneAvailable"]["reason"] == "NoReadyPods"

    # The spec drops the ingress: the Ingress goes, the endpoint is the Service's again.
    await client.apply(from_dict(tcp("t1")), force=True)
    await r.reconcile((NS, "t1"))
    with pytest.raises(ApiError) as gone:
        await client.get(Ingress, "t1", namespace=NS)
    assert gone.value.status.code == 404
    status = (await client.get(TenantControlPlane, "t1", namespace=NS)).to_dict()["status"]
    assert status["controlPlaneEndpoint"] == f"{cluster_ip}:6443"
    admin = await client.get(Secret, status["kubeconfig"]["admin"]["secretName"], namespace=NS)
    assert _server(admin, "admin.conf") == f"https://{cluster_ip}:6443"
    internal = await client.get(Secret, "t1-kubeconfigs", namespace=NS)
    assert _server(internal, "super-admin.conf") == f"https://{cluster_ip}:6443"
    await r.events.flush()
    await r.close()
