"""A real kube-apiserver (and, for SQL, a real kine) serving one tenant's space, as processes.

kine runs with exactly the arguments and environment Haku renders for the sidecar
(:func:`haku.render.kine.kine_args`), with pod paths swapped for host paths.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from haku.datastore import TenantConnection
from haku.dev import https
from haku.dev.processes import ProcessSpec, Supervisor
from haku.render import kubeconfig, pki
from haku.render.kine import ENDPOINT_KEY, apiserver_storage_args, kine_args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class TenantAPIServer:
    def __init__(self, bins: dict[str, Path], connection: TenantConnection, name: str) -> None:
        self.bins, self.connection, self.name = bins, connection, name
        # Short: unix socket paths are limited to 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix=f"hk-{name[:8]}-", dir="/tmp"))
        self.supervisor = Supervisor(self.dir / "pids", self.dir / "logs")
        self.port = free_port()
        self.kubeconfig = self.dir / "admin.kubeconfig"

    def start(self) -> None:
        d, alg = self.dir, pki.KeyAlgorithm.ECDSA_P256
        tls = d / "tls"
        tls.mkdir()
        for fname, data in self.connection.files.items():
            (tls / fname).write_bytes(data)
            (tls / fname).chmod(0o600)
        socket_path = str(d / "kine.sock")
        if self.connection.driver != "etcd":
            self.supervisor.start(ProcessSpec(
                "kine", [str(self.bins["kine"] / "kine"),
                         *kine_args(self.connection, socket=socket_path, tls_dir=str(tls))],
                env={ENDPOINT_KEY: self.connection.kine_endpoint, "PATH": "/usr/bin:/bin"}))
            self.supervisor.wait_ready("kine", lambda: Path(socket_path).exists(), 30,
                                       "listening")
        ca = pki.new_ca(f"{self.name}-ca", alg)
        serving = pki.issue(ca, "kube-apiserver", pki.Usage.SERVER, ip_addresses=["127.0.0.1"],
                            algorithm=alg)
        admin = pki.issue(ca, "admin", pki.Usage.CLIENT, organizations=["system:masters"],
                          algorithm=alg)
        sa = pki.new_key(alg)
        files = {"ca.crt": ca.cert_pem, "apiserver.crt": serving.cert_pem,
                 "apiserver.key": serving.key_pem, "admin.crt": admin.cert_pem,
                 "admin.key": admin.key_pem, "sa.key": pki.key_pem(sa),
                 "sa.pub": pki.public_key_pem(sa)}
        for fname, data in files.items():
            (d / fname).write_bytes(data)
        argv = [
            str(self.bins["kubernetes"] / "kube-apiserver"),
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}", "--endpoint-reconciler-type=none",
            "--disable-admission-plugins=ServiceAccount",
            "--service-cluster-ip-range=10.32.0.0/24", "--authorization-mode=RBAC",
            f"--client-ca-file={d / 'ca.crt'}", f"--tls-cert-file={d / 'apiserver.crt'}",
            f"--tls-private-key-file={d / 'apiserver.key'}",
            f"--service-account-issuer=https://{self.name}.invalid",
            f"--service-account-key-file={d / 'sa.pub'}",
            f"--service-account-signing-key-file={d / 'sa.key'}",
            *apiserver_storage_args(self.connection, socket=socket_path, tls_dir=str(tls)),
        ]
        self.supervisor.start(ProcessSpec("kube-apiserver", argv))
        ctx = https.context(d / "ca.crt", d / "admin.crt", d / "admin.key")
        self.supervisor.wait_ready(
            "kube-apiserver", lambda: https.ok(f"https://127.0.0.1:{self.port}/readyz", ctx), 90,
            "ready")
        doc = kubeconfig.client_certificate_kubeconfig(
            self.name, f"https://127.0.0.1:{self.port}", ca.cert_pem, "admin", admin.cert_pem,
            admin.key_pem)
        self.kubeconfig.write_text(yaml.safe_dump(doc))

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bins["kubernetes"] / "kubectl"),
                               f"--kubeconfig={self.kubeconfig}", *args],
                              capture_output=True, text=True, timeout=60, check=False)

    def stop(self) -> None:
        self.supervisor.stop("kube-apiserver", timeout=10)
        self.supervisor.stop("kine", timeout=10)
        time.sleep(0.1)
