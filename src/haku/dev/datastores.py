"""The shared datastores the local cluster offers tenants: etcd, PostgreSQL and MariaDB.

- etcd: TLS on the node IP and loopback, client-certificate auth, ``auth enable`` with a
  ``root`` user identified by its certificate's CN (no password). Its CA key is kept so that
  Haku can sign a per-tenant client certificate whose CN is the tenant's etcd user.
- PostgreSQL and MariaDB: TLS on, an administrator with a random password, listening on the
  node IP (reachable from pods) and loopback only.

Each server is a background process recorded by the :class:`~haku.dev.processes.Supervisor`;
``connections.json`` tells clients (tests, the demo, DataStore objects) how to reach them:
``endpoints`` (the node IP) are for pods, ``local_endpoints`` (loopback) for the host. Host-side
clients never use the node IP: it disappears with the cluster, and a client aimed at it then
would be routed off the machine.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haku.datastore.settings import Settings
from haku.dev import packages
from haku.dev.layout import Layout
from haku.dev.processes import ComponentFailed, ProcessSpec, Supervisor
from haku.render import pki

ETCD = "datastore-etcd"
POSTGRES = "datastore-postgres"
MARIADB = "datastore-mariadb"
ADMIN_USER_SQL = "haku"


def _write(path: Path, data: bytes | str, mode: int = 0o600, owner: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    if owner:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _chown_tree(path: Path, owner: str) -> None:
    entry = pwd.getpwnam(owner)
    for p in [path, *path.rglob("*")]:
        os.chown(p, entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def _empty_data_dir(path: Path, owner: str) -> None:
    """A fresh data directory for a server's first start (clearing a half-done one)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    _chown_tree(path, owner)


@dataclass(frozen=True)
class EtcdDatastore:
    layout: Layout
    etcd_bin: Path

    @property
    def dir(self) -> Path:
        return self.layout.datastores_dir / "etcd"

    @property
    def endpoint(self) -> str:
        """For pods (tenant control planes): the node IP."""
        return f"{self.layout.datastore_address}:{self.layout.ports.datastore_etcd_client}"

    @property
    def local_endpoint(self) -> str:
        """For clients on the host: loopback, which outlives the node bridge."""
        return f"127.0.0.1:{self.layout.ports.datastore_etcd_client}"

    def prepare(self) -> None:
        d = self.dir
        if (d / "ca.key").exists():
            return
        alg = pki.KeyAlgorithm.ECDSA_P256
        ca = pki.new_ca("haku-dev-datastore-etcd-ca", alg)
        server = pki.issue(
            ca, "haku-datastore-etcd", pki.Usage.SERVER_AND_CLIENT,
            dns_names=["localhost"], ip_addresses=["127.0.0.1", self.layout.node_ip],
            algorithm=alg,
        )
        root = pki.issue(ca, "root", pki.Usage.CLIENT, algorithm=alg)
        for name, pair in (("server", server), ("root", root)):
            _write(d / f"{name}.crt", pair.cert_pem, 0o644)
            _write(d / f"{name}.key", pair.key_pem)
        _write(d / "ca.crt", ca.cert_pem, 0o644)
        _write(d / "ca.key", ca.key_pem)  # written last: marks the directory complete

    def spec(self) -> ProcessSpec:
        d, p = self.dir, self.layout.ports
        port = p.datastore_etcd_client
        listen = ",".join(f"https://{a}:{port}" for a in self.layout.datastore_listen_addresses)
        peer = f"http://127.0.0.1:{p.datastore_etcd_peer}"
        return ProcessSpec(
            ETCD,
            [
                str(self.etcd_bin / "etcd"),
                "--name=haku-datastore",
                f"--data-dir={d / 'data'}",
                f"--listen-client-urls={listen}",
                f"--advertise-client-urls=https://{self.endpoint}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=haku-datastore={peer}",
                "--client-cert-auth",
                f"--trusted-ca-file={d / 'ca.crt'}",
                f"--cert-file={d / 'server.crt'}",
                f"--key-file={d / 'server.key'}",
                "--listen-metrics-urls=",
                "--log-level=warn",
                # No auto-compaction: the operator compacts (every 5 min) and writes
                # compact_rev_key, from which the tenants' watch caches learn what is gone.
            ],
        )

    def etcdctl(self, *args: str, user: str = "root") -> subprocess.CompletedProcess[str]:
        d = self.dir
        return subprocess.run(
            [
                str(self.etcd_bin / "etcdctl"),
                f"--endpoints=https://{self.local_endpoint}",
                f"--cacert={d / 'ca.crt'}",
                f"--cert={d / f'{user}.crt'}",
                f"--key={d / f'{user}.key'}",
                "--command-timeout=5s",
                *args,
            ],
            capture_output=True, text=True, check=False,
        )

    def ready(self) -> bool:
        return self.etcdctl("endpoint", "health").returncode == 0

    def configure(self) -> None:
        """Root user by certificate, then ``auth enable``; a no-op once auth is on."""
        status = self.etcdctl("auth", "status")
        if "Authentication Status: true" in status.stdout:
            return
        for args in (
            ("user", "add", "root", "--no-password"),
            ("user", "grant-role", "root", "root"),
            ("auth", "enable"),
        ):
            result = self.etcdctl(*args)
            if result.returncode != 0 and "already" not in result.stderr:
                raise ComponentFailed(
                    ETCD, f"setup `etcdctl {' '.join(args)}` failed: {result.stderr.strip()}", None
                )

    def connection(self) -> dict[str, Any]:
        d = self.dir
        return {
            "driver": "etcd",
            "endpoints": [self.endpoint],
            "local_endpoints": [self.local_endpoint],
            "ca_cert": str(d / "ca.crt"),
            "ca_key": str(d / "ca.key"),
            "client_cert": str(d / "root.crt"),
            "client_key": str(d / "root.key"),
            "user": "root",
        }


def _password(path: Path, owner: str | None = None) -> str:
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_hex(16)
    _write(path, value + "\n", 0o600, owner)
    return value


_SQL_TLS_LOCK = threading.Lock()


def _sql_tls(layout: Layout) -> pki.KeyPair:
    """The server certificate shared by PostgreSQL and MariaDB, with its CA in the same dir.

    Both servers prepare in parallel, so this is made once under a lock; a pair whose key does
    not match its certificate (an interrupted write) is made afresh.
    """
    with _SQL_TLS_LOCK:
        return _sql_tls_locked(layout)


def _sql_tls_locked(layout: Layout) -> pki.KeyPair:
    d = layout.datastores_dir / "sql-tls"
    if (d / "server.key").exists() and (d / "server.crt").exists():
        pair = pki.KeyPair((d / "server.crt").read_bytes(), (d / "server.key").read_bytes())
        if pki.matches(pair):
            return pair
    alg = pki.KeyAlgorithm.ECDSA_P256
    ca = pki.new_ca("haku-dev-datastore-sql-ca", alg)
    server = pki.issue(
        ca, "haku-datastore-sql", pki.Usage.SERVER,
        dns_names=["localhost"], ip_addresses=["127.0.0.1", layout.node_ip], algorithm=alg,
    )
    _write(d / "ca.crt", ca.cert_pem, 0o644)
    _write(d / "server.crt", server.cert_pem, 0o644)
    _write(d / "server.key", server.key_pem)
    return server


def _place_sql_tls(layout: Layout, directory: Path, owner: str) -> None:
    """The shared server pair (and its CA) in ``directory``, readable by the server's user."""
    tls = _sql_tls(layout)
    ca = (layout.datastores_dir / "sql-tls" / "ca.crt").read_bytes()
    _write(directory / "ca.crt", ca, 0o644, owner)
    _write(directory / "server.crt", tls.cert_pem, 0o644, owner)
    _write(directory / "server.key", tls.key_pem, 0o600, owner)
    directory.chmod(0o700)
    _chown_tree(directory, owner)


def _sql_connection(layout: Layout, driver: str, port: int, user: str, directory: Path
                    ) -> dict[str, Any]:
    return {
        "driver": driver,
        "endpoints": [f"{layout.datastore_address}:{port}"],
        "local_endpoints": [f"127.0.0.1:{port}"],
        "user": user,
        "password_file": str(directory / "password"),
        "ca_cert": str(layout.datastores_dir / "sql-tls" / "ca.crt"),
    }


@dataclass(frozen=True)
class PostgresDatastore:
    layout: Layout
    user: str = "postgres"

    @property
    def dir(self) -> Path:
        return self.layout.datastores_dir / "postgres"

    def prepare(self) -> None:
        d = self.dir
        password = _password(d / "password")
        (d / "run").mkdir(parents=True, exist_ok=True)
        _chown_tree(d / "run", self.user)
        _place_sql_tls(self.layout, d / "tls", self.user)
        if (d / "data" / "PG_VERSION").exists():
            return
        _empty_data_dir(d / "data", self.user)
        pwfile = d / "run" / "initdb-password"
        _write(pwfile, password + "\n", 0o600, self.user)
        try:
            result = subprocess.run(
                [
                    str(packages.postgres_bin() / "initdb"),
                    f"--pgdata={d / 'data'}",
                    "--username=postgres",
                    f"--pwfile={pwfile}",
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                user=self.user, capture_output=True, text=True, check=False,
                cwd=d / "run",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise ComponentFailed(POSTGRES, f"initdb failed: {result.stderr.strip()}", None)
        with (d / "data" / "pg_hba.conf").open("a") as hba:
            hba.write("# haku: pods reach the server on the node IP; TLS or not, scram only\n")
            hba.write("host all all 0.0.0.0/0 scram-sha-256\n")

    def spec(self) -> ProcessSpec:
        d, tls = self.dir, self.dir / "tls"
        return ProcessSpec(
            POSTGRES,
            [
                str(packages.postgres_bin() / "postgres"),
                f"-D{d / 'data'}",
                f"-p{self.layout.ports.postgres}",
                f"-k{d / 'run'}",
                "-c", f"listen_addresses={','.join(self.layout.datastore_listen_addresses)}",
                "-c", "ssl=on",
                "-c", f"ssl_cert_file={tls / 'server.crt'}",
                "-c", f"ssl_key_file={tls / 'server.key'}",
                "-c", "max_connections=500",
                "-c", "shared_buffers=64MB",
                "-c", "logging_collector=off",
                "-c", "unix_socket_permissions=0700",
            ],
            user=self.user,
            cwd=d,
        )

    def ready(self) -> bool:
        result = subprocess.run(
            [str(packages.postgres_bin() / "pg_isready"), "-q", "-h", "127.0.0.1",
             "-p", str(self.layout.ports.postgres)],
            check=False,
        )
        return result.returncode == 0

    def configure(self) -> None:
        return None

    def connection(self) -> dict[str, Any]:
        return _sql_connection(self.layout, "PostgreSQL", self.layout.ports.postgres,
                               "postgres", self.dir)


@dataclass(frozen=True)
class MariaDBDatastore:
    layout: Layout
    user: str = "mysql"

    @property
    def dir(self) -> Path:
        return self.layout.datastores_dir / "mariadb"

    @property
    def socket(self) -> Path:
        return self.dir / "run" / "mysqld.sock"

    def prepare(self) -> None:
        d = self.dir
        _password(d / "password")
        (d / "run").mkdir(parents=True, exist_ok=True)
        _chown_tree(d / "run", self.user)
        _place_sql_tls(self.layout, d / "tls", self.user)
        if (d / "data" / "mysql").is_dir():
            return
        _empty_data_dir(d / "data", self.user)
        result = subprocess.run(
            [
                packages.which("mariadb-install-db"),
                "--no-defaults",
                f"--datadir={d / 'data'}",
                f"--user={self.user}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            capture_output=True, text=True, check=False, cwd=d,
        )
        if result.returncode != 0:
            shutil.rmtree(d / "data", ignore_errors=True)
            raise ComponentFailed(
                MARIADB, f"mariadb-install-db failed: {result.stderr.strip()[-2000:]}", None
            )

    def spec(self) -> ProcessSpec:
        d, tls = self.dir, self.dir / "tls"
        return ProcessSpec(
            MARIADB,
            [
                packages.which("mariadbd"),
                "--no-defaults",
                f"--datadir={d / 'data'}",
                f"--socket={self.socket}",
                f"--pid-file={d / 'run' / 'mysqld.pid'}",
                f"--port={self.layout.ports.mariadb}",
                f"--bind-address={','.join(self.layout.datastore_listen_addresses)}",
                f"--user={self.user}",
                "--skip-name-resolve",
                f"--ssl-ca={tls / 'ca.crt'}",
                f"--ssl-cert={tls / 'server.crt'}",
                f"--ssl-key={tls / 'server.key'}",
                "--max-connections=500",
                "--innodb-buffer-pool-size=64M",
                "--performance-schema=OFF",
            ],
            cwd=d,
        )

    def sql(self, statement: str) -> subprocess.CompletedProcess[str]:
        """Run SQL as the server's root user over the unix socket (socket auth)."""
        return subprocess.run(
            [packages.which("mariadb"), "--no-defaults", f"--socket={self.socket}", "-uroot",
             "--batch", "--skip-column-names", "-e", statement],
            capture_output=True, text=True, check=False,
        )

    def ready(self) -> bool:
        return self.socket.exists() and self.sql("SELECT 1").returncode == 0

    def configure(self) -> None:
        password = (self.dir / "password").read_text().strip()
        if not password.isalnum():
            raise ComponentFailed(MARIADB, "the stored admin password is not alphanumeric", None)
        statement = (
            f"CREATE USER IF NOT EXISTS '{ADMIN_USER_SQL}'@'%' IDENTIFIED BY '{password}';"
            f"ALTER USER '{ADMIN_USER_SQL}'@'%' IDENTIFIED BY '{password}';"
            f"GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER_SQL}'@'%' WITH GRANT OPTION;"
        )
        result = self.sql(statement)
        if result.returncode != 0:
            raise ComponentFailed(MARIADB, f"admin user setup failed: {result.stderr}", None)

    def connection(self) -> dict[str, Any]:
        return _sql_connection(self.layout, "MySQL", self.layout.ports.mariadb, ADMIN_USER_SQL,
                               self.dir)


Datastore = EtcdDatastore | PostgresDatastore | MariaDBDatastore

STOP_SIGNALS = {
    # PostgreSQL's SIGTERM waits for clients to leave; SIGINT is its "fast" shutdown.
    POSTGRES: signal.SIGINT,
}


def all_datastores(layout: Layout, etcd_bin: Path) -> list[Datastore]:
    return [EtcdDatastore(layout, etcd_bin), PostgresDatastore(layout), MariaDBDatastore(layout)]


def start(store: Datastore, supervisor: Supervisor, timeout: float = 60.0) -> bool:
    store.prepare()
    spec = store.spec()
    _, started = supervisor.start(spec)
    supervisor.wait_ready(spec.name, store.ready, timeout, "accepting connections")
    store.configure()
    return started


def read_connections(layout: Layout) -> dict[str, Any]:
    """``connections.json``: store name (etcd, postgres, mariadb) -> how to reach it."""
    data: dict[str, Any] = json.loads((layout.datastores_dir / "connections.json").read_text())
    return data


def driver_settings(layout: Layout, store: str, **override: Any) -> Settings:
    """Driver settings for one of these datastores, as Haku itself reaches it (loopback).
    ``override`` replaces fields, e.g. ``endpoints`` or ``password`` to test failures."""
    c = read_connections(layout)[store]

    def read(key: str) -> bytes:
        return Path(c[key]).read_bytes()

    fields: dict[str, Any] = {"endpoints": tuple(c["local_endpoints"])}
    if c["driver"] == "etcd":
        fields |= {"ca_cert": read("ca_cert"), "ca_key": read("ca_key"),
                   "client_cert": read("client_cert"), "client_key": read("client_key")}
    else:
        fields |= {"username": c["user"], "password": read("password_file").decode().strip(),
                   "ca_cert": read("ca_cert")}
    return Settings(name=f"dev-{store}", driver=c["driver"], **(fields | override))


def write_connections(layout: Layout, stores: list[Datastore]) -> Path:
    path = layout.datastores_dir / "connections.json"
    data = {s.spec().name.removeprefix("datastore-"): s.connection() for s in stores}
    _write(path, json.dumps(data, indent=2) + "\n", 0o600)
    return path
