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
            # kube-apiserver's own compaction, every 5 min (upstream's default, set here so no
            # extraArgs may change it: compaction is global to the etcd cluster, and a short
            # interval would cut every tenant's history). The tenants' API servers take turns
            # at it through the shared compact_rev_key (its role may write that one key),
            # which also tells each watch cache which revisions are gone. With it off (0), a
            # watch cache never learns of a compaction and list continuations never expire
            # (a Conformance test failed so).
            "--etcd-compaction-interval=5m0s",
        ]
    return [f"--etcd-servers=unix://{socket}"]
