"""DataStore objects (and their Secrets) for the local cluster's datastores, and a sample
TenantControlPlane: what `make demo` and the tests apply."""

from __future__ import annotations

import base64
import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from haku.dev import config
from haku.dev.datastores import read_connections
from haku.dev.layout import Layout

SECRETS_NAMESPACE = "haku-system"
DATASTORE_NAMES = {"etcd": "dev-etcd", "postgres": "dev-postgres", "mariadb": "dev-mariadb"}


def _ref(secret: str, key: str) -> dict[str, Any]:
    return {"secretReference": {"name": secret, "namespace": SECRETS_NAMESPACE, "keyPath": key}}


def _secret(name: str, files: dict[str, bytes]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": SECRETS_NAMESPACE},
            "data": {k: base64.b64encode(v).decode() for k, v in files.items()}}


def datastore_objects(layout: Layout) -> list[dict[str, Any]]:
    """Namespace, Secrets and DataStores for each datastore in ``connections.json``."""
    conns = read_connections(layout)

    def read(path: str) -> bytes:
        return Path(path).read_bytes()

    objects: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": SECRETS_NAMESPACE}}]
    for store, c in conns.items():
        name = DATASTORE_NAMES[store]
        secret = f"{name}-credentials"
        spec: dict[str, Any] = {"driver": c["driver"], "endpoints": c["endpoints"]}
        if c["driver"] == "etcd":
            objects.append(_secret(secret, {
                "ca.crt": read(c["ca_cert"]), "ca.key": read(c["ca_key"]),
                "tls.crt": read(c["client_cert"]), "tls.key": read(c["client_key"])}))
            spec["tlsConfig"] = {
                "certificateAuthority": {"certificate": _ref(secret, "ca.crt"),
                                         "privateKey": _ref(secret, "ca.key")},
                "clientCertificate": {"certificate": _ref(secret, "tls.crt"),
                                      "privateKey": _ref(secret, "tls.key")}}
        else:
            objects.append(_secret(secret, {
                "username": c["user"].encode(),
                "password": read(c["password_file"]).strip(), "ca.crt": read(c["ca_cert"])}))
            spec["basicAuth"] = {"username": _ref(secret, "username"),
                                 "password": _ref(secret, "password")}
            spec["tlsConfig"] = {"certificateAuthority": {"certificate": _ref(secret, "ca.crt")}}
        objects.append({"apiVersion": "haku.dev/v1alpha1", "kind": "DataStore",
                        "metadata": {"name": name}, "spec": spec})
    return objects


def tenant_control_plane(name: str, namespace: str, datastore: str, version: str,
                         replicas: int = 1, service_type: str = "ClusterIP",
                         port: int | None = 6443, addons: bool = False,
                         kubelet_patches: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """A sample tenant; ``addons`` installs CoreDNS and kube-proxy for nodes to join; with
    ``port`` None, networkProfile.port is left out (a NodePort Service then allocates).
    Its kubelets get what this machine needs (``config.tenant_kubelet_settings()``: the
    cgroup driver and JSON patches), so a dev worker runs the configuration it serves;
    ``kubelet_patches`` come after those."""
    kubelet = config.tenant_kubelet_settings()
    kubelet["configurationJSONPatches"] += [copy.deepcopy(dict(p)) for p in kubelet_patches]
    tcp: dict[str, Any] = {
        "apiVersion": "haku.dev/v1alpha1", "kind": "TenantControlPlane",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "dataStore": datastore,
            "kubernetes": {"version": version, "kubelet": kubelet},
            "controlPlane": {"deployment": {"replicas": replicas},
                             "service": {"serviceType": service_type}},
        },
    }
    if port is not None:
        tcp["spec"]["networkProfile"] = {"port": port}
    if addons:
        tcp["spec"]["addons"] = {"coreDNS": {}, "kubeProxy": {}}
    return tcp
