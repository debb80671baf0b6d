"""The kine sidecar and kube-apiserver's storage flags, as Haku renders them (pure).

For SQL drivers kube-apiserver does not talk to the database: kine, in the same pod, serves
the etcd API on a unix socket and stores in the tenant's database. The endpoint (it holds the
tenant's password) reaches kine through the environment from a Secret, never through argv.
kine reads ``KINE_ENDPOINT`` itself; ``--ca-file`` makes it verify the server (for PostgreSQL
that adds ``sslmode=verify-full``).
"""

from __future__ import annotations

from typing import Any

from haku.render.storage import TenantConnection

SOCKET_DIR = "/var/run/kine"
SOCKET = f"{SOCKET_DIR}/kine.sock"
TLS_DIR = "/etc/kine/tls"
ETCD_TLS_DIR = "/etc/kubernetes/pki/datastore"
ENDPOINT_KEY = "KINE_ENDPOINT"


def kine_args(connection: TenantConnection, socket: str = SOCKET,
              tls_dir: str = TLS_DIR) -> list[str]:
    args = [f"--listen-address=unix://{socket}", "--metrics-bind-address=0"]
    if "ca.crt" in connection.files:
        args.append(f"--ca-file={tls_dir}/ca.crt")
    return args


def kine_container(connection: TenantConnection, image: str, secret_name: str) -> dict[str, Any]:
    """The sidecar container; volumes ``kine-socket`` (emptyDir) and ``kine-tls`` (the Secret
    holding ca.crt) are the caller's to add to the pod."""
    if not connection.kine_endpoint:
        raise ValueError(f"a {connection.driver} tenant connection has no kine endpoint")
    mounts: list[dict[str, Any]] = [{"name": "kine-socket", "mountPath": SOCKET_DIR}]
    if "ca.crt" in connection.files:
        mounts.append({"name": "kine-tls", "mountPath": TLS_DIR, "readOnly": True})
    return {
        "name": "kine",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/kine"],
        "args": kine_args(connection),
        "env": [{"name": ENDPOINT_KEY,
                 "valueFrom": {"secretKeyRef": {"name": secret_name, "key": ENDPOINT_KEY}}}],
        "volumeMounts": mounts,
    }


# kube-apiserver's --etcd-compaction-interval for etcd tenants (see apiserver_storage_args).
TENANT_COMPACTION_INTERVAL = "8760h0m0s"


def apiserver_storage_args(connection: TenantConnection, socket: str = SOCKET,
                           tls_dir: str = ETCD_TLS_DIR) -> list[str]:
    """kube-apiserver flags for the tenant's storage."""
    if connection.driver == "etcd":
        return [
            f"--etcd-servers={','.join(connection.etcd_servers)}",
            f"--etcd-prefix={connection.etcd_prefix}",
            f"--etcd-cafile={tls_dir}/ca.crt",
            f"--etcd-certfile={tls_dir}/tls.crt",
            f"--etcd-keyfile={tls_dir}/tls.key",
            # The API server does not compact: compaction is global to the etcd cluster and
            # etcd allows it to its administrator only; the operator compacts etcd DataStores
            # (haku.controller.compaction) and writes compact_rev_key, which the API server
            # watches (its role may read that one key) to learn what its watch cache must
            # drop. That watch starts only with a non-zero interval (0 starts no compactor
            # at all: k8s.io/apiserver storagebackend/factory startCompactorOnce), so the
            # interval is a year: the watch runs, a compaction of its own never comes (and
            # would be refused). Set here so no extraArgs may change it (the CRD refuses it).
            f"--etcd-compaction-interval={TENANT_COMPACTION_INTERVAL}",
        ]
    return [f"--etcd-servers=unix://{socket}"]
