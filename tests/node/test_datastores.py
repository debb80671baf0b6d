"""The datastores `haku dev up` starts for tenants, checked with their real clients."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from haku.dev import packages
from haku.dev.cluster import DevCluster
from haku.render import pki

from .helpers import kubectl


def _connections(cluster: DevCluster) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (cluster.layout.datastores_dir / "connections.json").read_text())
    return data


def _etcdctl(cluster: DevCluster, endpoint: str, *args: str, ca: str,
             cert: Path | str | None = None, key: Path | str | None = None
             ) -> subprocess.CompletedProcess[str]:
    argv = [str(cluster.layout.bin / "etcdctl"), f"--endpoints=https://{endpoint}",
            f"--cacert={ca}", "--command-timeout=5s", "--dial-timeout=3s"]
    if cert and key:
        argv += [f"--cert={cert}", f"--key={key}"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=30,
                          check=False)


def _write_pair(directory: Path, name: str, pair: pki.KeyPair) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    return cert, key


def test_etcd_identity_is_the_client_certificates_cn(
    node_cluster: DevCluster, tmp_path: Path
) -> None:
    conn = _connections(node_cluster)["etcd"]
    endpoint, ca = conn["local_endpoints"][0], conn["ca_cert"]

    def root(*args: str) -> subprocess.CompletedProcess[str]:
        return _etcdctl(node_cluster, endpoint, *args, ca=ca, cert=conn["client_cert"],
                        key=conn["client_key"])

    assert "Authentication Status: true" in root("auth", "status").stdout
    # A tenant user with no password, allowed on its own prefix only.
    for args in (("user", "add", "tenant-a", "--no-password"), ("role", "add", "tenant-a"),
                 ("role", "grant-permission", "tenant-a", "--prefix=true", "readwrite",
                  "/tenant-a/"),
                 ("user", "grant-role", "tenant-a", "tenant-a")):
        result = root(*args)
        assert result.returncode == 0, result.stderr
    try:
        datastore_ca = pki.KeyPair(Path(ca).read_bytes(), Path(conn["ca_key"]).read_bytes())
        alg = pki.KeyAlgorithm.ECDSA_P256
        tenant = _write_pair(tmp_path, "tenant-a",
                             pki.issue(datastore_ca, "tenant-a", pki.Usage.CLIENT, algorithm=alg))
        stranger = _write_pair(tmp_path, "nobody",
                               pki.issue(datastore_ca, "nobody", pki.Usage.CLIENT, algorithm=alg))
        other_ca = pki.new_ca("not-the-datastore-ca", alg)
        forged = _write_pair(tmp_path, "forged",
                             pki.issue(other_ca, "root", pki.Usage.CLIENT, algorithm=alg))

        def as_(pair: tuple[Path, Path], *args: str) -> subprocess.CompletedProcess[str]:
            return _etcdctl(node_cluster, endpoint, *args, ca=ca, cert=pair[0], key=pair[1])

        ok = as_(tenant, "put", "/tenant-a/registry/x", "1")
        assert ok.returncode == 0, ok.stderr
        assert as_(tenant, "get", "/tenant-a/registry/x", "--print-value-only").stdout == "1\n"
        for key in ("/tenant-b/registry/x", "/tenant-a0", "/tenant-aa/x", "/other"):
            denied = as_(tenant, "put", key, "1")
            assert denied.returncode != 0 and "permission denied" in denied.stderr, key
        # The CN names the user: a valid certificate for an unknown user gets nothing.
        unknown = as_(stranger, "get", "/tenant-a/registry/x")
        assert unknown.returncode != 0
        assert "user name not found" in unknown.stderr or "permission denied" in unknown.stderr
        # A certificate from another CA is refused at the TLS handshake, even with CN=root.
        forged_get = as_(forged, "get", "/tenant-a/registry/x", "--print-value-only")
        assert forged_get.returncode != 0 and forged_get.stdout == "", forged_get.stdout
        # No certificate at all: refused, nothing read.
        anonymous = _etcdctl(node_cluster, endpoint, "get", "/tenant-a/registry/x",
                             "--print-value-only", ca=ca)
        assert anonymous.returncode != 0 and anonymous.stdout == "", anonymous.stdout
    finally:
        root("del", "--prefix", "/tenant-a/")
        root("user", "delete", "tenant-a")
        root("role", "delete", "tenant-a")


def test_postgres_accepts_the_admin_over_verified_tls(node_cluster: DevCluster) -> None:
    conn = _connections(node_cluster)["postgres"]
    host, port = conn["local_endpoints"][0].split(":")
    password = Path(conn["password_file"]).read_text().strip()
    dsn = (f"host={host} port={port} user={conn['user']} dbname=postgres "
           f"sslmode=verify-full sslrootcert={conn['ca_cert']}")
    psql = str(packages.postgres_bin() / "psql")

    def query(sql: str, pw: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([psql, dsn, "-tAc", sql], capture_output=True, text=True,
                              env={"PGPASSWORD": pw, "PATH": "/usr/bin:/bin"}, timeout=30,
                              check=False)

    result = query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", password)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "t"
    wrong = query("SELECT 1", "not-the-password")
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr


def test_mariadb_accepts_the_admin_over_verified_tls(node_cluster: DevCluster) -> None:
    conn = _connections(node_cluster)["mariadb"]
    host, port = conn["local_endpoints"][0].split(":")
    password = Path(conn["password_file"]).read_text().strip()

    def query(sql: str, pw: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [packages.which("mariadb"), "--no-defaults", f"-h{host}", f"-P{port}",
             f"-u{conn['user']}", f"-p{pw}", f"--ssl-ca={conn['ca_cert']}",
             "--ssl-verify-server-cert", "--batch", "--skip-column-names", "-e", sql],
            capture_output=True, text=True, timeout=30, check=False)

    result = query("SHOW STATUS LIKE 'Ssl_version'", password)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1].startswith("TLSv1")
    grants = query("SHOW GRANTS", password).stdout
    assert "ALL PRIVILEGES" in grants and "WITH GRANT OPTION" in grants
    wrong = query("SELECT 1", "not-the-password")
    assert wrong.returncode != 0 and "Access denied" in wrong.stderr


def _connect_from_a_pod(cluster: DevCluster, name: str, host: str, port: str) -> bool:
    """Whether a pod's TCP connect to host:port succeeds (busybox nc exits 1 when refused)."""
    kubectl(cluster, "delete", "pod", name, "--ignore-not-found", "--wait=true")
    kubectl(cluster, "run", name, "--image=docker.io/library/busybox:haku",
            "--image-pull-policy=Never", "--restart=Never", "--", "sh", "-c",
            f"nc -w 3 {host} {port} </dev/null")
    try:
        for _ in range(120):
            phase = kubectl(cluster, "get", "pod", name, "-o",
                            "jsonpath={.status.phase}").stdout
            if phase in ("Succeeded", "Failed"):
                return phase == "Succeeded"
            time.sleep(0.5)
        raise AssertionError(f"pod {name} did not finish")
    finally:
        kubectl(cluster, "delete", "pod", name, "--ignore-not-found", "--wait=false")


@pytest.mark.parametrize("store", ["etcd", "postgres", "mariadb"])
def test_pods_reach_the_datastores_on_the_node_ip(node_cluster: DevCluster, store: str) -> None:
    host, port = _connections(node_cluster)[store]["endpoints"][0].split(":")
    assert host == node_cluster.layout.node_ip
    assert _connect_from_a_pod(node_cluster, f"reach-{store}", host, port)


def test_the_pod_reachability_check_fails_on_a_closed_port(node_cluster: DevCluster) -> None:
    assert not _connect_from_a_pod(node_cluster, "reach-closed", node_cluster.layout.node_ip, "9")
