"""``check()`` on real servers: a datastore Haku cannot safely provision on is never Ready.

Each case calls the driver's ``check()`` and asserts the exact reason, then runs the same
DataStore (inline credentials) through ``datastore_status.probe``, which writes the Ready
Condition. The SQL cases also try a real provisioning as the same user, so ``check()`` passing
means ``ensure_tenant`` works and ``check()`` refusing means it would not.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import pytest
from lightkube import AsyncClient
from psycopg import sql

from haku.controller.datastore_status import probe
from haku.datastore import Tenant, open_driver
from haku.datastore.base import DataStoreError
from haku.datastore.etcd import EtcdDriver
from haku.datastore.mysql import MySQLDriver
from haku.datastore.postgres import PostgresDriver
from haku.datastore.settings import Settings
from haku.dev import toolchain
from haku.dev.cluster import DevCluster
from haku.render import pki

from ..conftest import PORT_OFFSET
from .conftest import settings_for

# A throw-away etcd of this module's own: below the ephemeral range, unused by every tier.
ETCD_CLIENT_PORT = 26379 + PORT_OFFSET
ETCD_PEER_PORT = 26380 + PORT_OFFSET


def b64(data: bytes | str) -> dict[str, str]:
    return {"content": base64.b64encode(data.encode() if isinstance(data, str)
                                        else data).decode()}


def datastore_object(settings: Settings) -> dict[str, Any]:
    """The DataStore a user would apply for ``settings``, every value inline."""
    spec: dict[str, Any] = {"driver": settings.driver, "endpoints": list(settings.endpoints)}
    tls: dict[str, Any] = {}
    if settings.ca_cert:
        tls["certificateAuthority"] = {"certificate": b64(settings.ca_cert)}
        if settings.ca_key:
            tls["certificateAuthority"]["privateKey"] = b64(settings.ca_key)
    if settings.client_cert and settings.client_key:
        tls["clientCertificate"] = {"certificate": b64(settings.client_cert),
                                    "privateKey": b64(settings.client_key)}
    if tls:
        spec["tlsConfig"] = tls
    if settings.username is not None:
        spec["basicAuth"] = {"username": b64(settings.username),
                             "password": b64(settings.password or "")}
    return {"apiVersion": "haku.dev/v1alpha1", "kind": "DataStore",
            "metadata": {"name": settings.name, "generation": 1}, "spec": spec}


async def ready_condition(settings: Settings) -> tuple[str, str, str]:
    """(status, reason, message) of the Ready Condition the status writer would set. Inline
    values never reach for a Secret, so no API server is needed."""
    condition, _, _ = await probe(datastore_object(settings), cast(AsyncClient, None))
    return condition.status, condition.reason, condition.message


async def check_reason(settings: Settings) -> str:
    """The reason ``check()`` fails with, or "ok"."""
    driver = open_driver(settings)
    try:
        await driver.check()
    except DataStoreError as e:
        return e.reason
    finally:
        await driver.close()
    return "ok"


async def provisions(settings: Settings, name: str) -> bool:
    """Whether ``settings``' user can really ensure (and then delete) a tenant."""
    driver = open_driver(settings)
    tenant = Tenant(name, name, "healthpw" + secrets.token_hex(8))
    try:
        await driver.ensure_tenant(tenant)
        await driver.delete_tenant(tenant)
        return True
    except DataStoreError:
        return False
    finally:
        await driver.close()


# ---------------------------------------------------------------- PostgreSQL

PG_ROLE = "haku-health-pg"
PG_TENANT = "haku-health-pg-t"


async def pg_cleanup(admin: PostgresDriver) -> None:
    await admin._run("cleaning up", [
        (sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(PG_TENANT)),
         ()),
        (sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(PG_TENANT)), ()),
        (sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(PG_ROLE)), ()),
    ])


@pytest.mark.parametrize(("attributes", "expected"), [
    ("", "PermissionDenied"),  # a plain login role
    ("CREATEROLE", "PermissionDenied"),
    ("CREATEDB", "PermissionDenied"),
    # Not enough either: a tenant's role owns its database, which needs membership in it.
    ("CREATEROLE CREATEDB", "PermissionDenied"),
    ("SUPERUSER", "ok"),
])
async def test_postgres_user_without_the_privileges_to_provision_is_not_ready(
    datastores_cluster: DevCluster, attributes: str, expected: str
) -> None:
    admin_settings = settings_for(datastores_cluster, "postgres")
    admin = open_driver(admin_settings)
    assert isinstance(admin, PostgresDriver)
    password = "healthpw" + secrets.token_hex(8)
    try:
        await pg_cleanup(admin)
        await admin._run("creating a role", [(
            sql.SQL("CREATE ROLE {} WITH LOGIN " + attributes + " PASSWORD {}").format(
                sql.Identifier(PG_ROLE), sql.Literal(password)), ())])
        settings = replace(admin_settings, username=PG_ROLE, password=password)
        assert await check_reason(settings) == expected
        status, reason, message = await ready_condition(settings)
        if expected == "ok":
            assert (status, reason) == ("True", "Connected")
        else:
            assert (status, reason) == ("False", expected)
            assert f"{PG_ROLE!r} is not a superuser" in message
            assert "SUPERUSER" in message
        # check() tells the truth: provisioning as this user works exactly when it passes.
        assert await provisions(settings, PG_TENANT) == (expected == "ok")
    finally:
        await pg_cleanup(admin)
        await admin.close()


# ---------------------------------------------------------------- MariaDB

MY_USER = "haku-health-my"
MY_TENANT = "haku_health_t"  # with "_": ensure also reads mysql.db for a legacy grant
MINIMAL = "CREATE USER, CREATE, DROP, SELECT, INSERT, UPDATE, DELETE, ALTER, INDEX"


async def my_cleanup(admin: MySQLDriver) -> None:
    await admin._ensure_meta()
    await admin._run("cleaning up", [
        (f"DROP DATABASE IF EXISTS `{MY_TENANT}`", ()),
        ("DROP USER IF EXISTS %s@'%%'", (MY_TENANT,)),
        ("DELETE FROM haku_meta.tenants WHERE db = %s", (MY_TENANT,)),
        ("DROP USER IF EXISTS %s@'%%'", (MY_USER,)),
    ])


# (privileges ON level, WITH GRANT OPTION) granted to the DataStore's user
Grant = tuple[str, bool]


@pytest.mark.parametrize(("grants", "expected", "missing"), [
    ([], "PermissionDenied", "lacks CREATE USER, CREATE, DROP"),  # USAGE only
    ([("ALL PRIVILEGES ON *.*", False)], "PermissionDenied", "lacks GRANT OPTION on"),
    ([("CREATE USER ON *.*", True)], "PermissionDenied", "lacks CREATE, DROP, SELECT"),
    ([(f"{MINIMAL} ON *.*", False)], "PermissionDenied", "lacks GRANT OPTION on"),
    ([(f"{MINIMAL.replace('CREATE USER, ', '').replace(', UPDATE', '')} ON *.*", True)],
     "PermissionDenied", "lacks CREATE USER, UPDATE on"),
    # The server lets INSERT, UPDATE and DELETE on *.* (so on the mysql database) do what
    # CREATE USER does: so does check().
    ([(f"{MINIMAL.replace('CREATE USER, ', '')} ON *.*", True)], "ok", ""),
    ([(f"{MINIMAL.replace(', DROP', '')} ON *.*", True)], "PermissionDenied", "lacks DROP on"),
    # Everything, but on one database only: no use for creating tenants.
    ([("ALL PRIVILEGES ON `haku\\_health\\_t`.*", True)], "PermissionDenied",
     "lacks CREATE USER, CREATE"),
    ([(f"{MINIMAL} ON *.*", True)], "ok", ""),
    ([("ALL PRIVILEGES ON *.*", True)], "ok", ""),
])
async def test_mariadb_user_without_the_privileges_to_provision_is_not_ready(
    datastores_cluster: DevCluster, grants: list[Grant], expected: str, missing: str
) -> None:
    admin_settings = settings_for(datastores_cluster, "mariadb")
    admin = open_driver(admin_settings)
    assert isinstance(admin, MySQLDriver)
    password = "healthpw" + secrets.token_hex(8)
    try:
        await my_cleanup(admin)
        await admin._run("creating a user", [
            ("CREATE USER %s@'%%' IDENTIFIED BY %s", (MY_USER, password)),
            *((f"GRANT {what} TO %s@'%%'" + (" WITH GRANT OPTION" if option else ""),
               (MY_USER,)) for what, option in grants),
        ])
        settings = replace(admin_settings, username=MY_USER, password=password)
        assert await check_reason(settings) == expected
        status, reason, message = await ready_condition(settings)
        if expected == "ok":
            assert (status, reason) == ("True", "Connected")
        else:
            assert (status, reason) == ("False", expected)
            assert missing in message
        # check() tells the truth: provisioning as this user works exactly when it passes.
        assert await provisions(settings, MY_TENANT) == (expected == "ok")
    finally:
        await my_cleanup(admin)
        await admin.close()


def test_mysql_grant_parsing_ignores_quoted_names() -> None:
    """A user or host name that reads like a keyword cannot fake a privilege."""
    from haku.datastore.mysql import ADMIN_PRIVILEGES, missing_admin_privileges

    assert missing_admin_privileges([
        "GRANT USAGE ON *.* TO `x WITH GRANT OPTION`@`%` IDENTIFIED BY PASSWORD "
        "'*0123 WITH GRANT OPTION'",
        "GRANT ALL PRIVILEGES ON `a`.* TO `x WITH GRANT OPTION`@`%` WITH GRANT OPTION",
    ]) == list(ADMIN_PRIVILEGES)
    assert missing_admin_privileges([
        "GRANT ALL PRIVILEGES ON *.* TO `haku`@`%` IDENTIFIED BY PASSWORD '*AB' "
        "WITH GRANT OPTION"]) == []


# ---------------------------------------------------------------- wrong password

@pytest.mark.parametrize("store", ["postgres", "mariadb"])
async def test_a_wrong_password_is_authentication_failed(
    datastores_cluster: DevCluster, store: str
) -> None:
    right = settings_for(datastores_cluster, store)
    assert await check_reason(right) == "ok"  # the same settings but the password pass
    wrong = replace(right, password="wrong-" + secrets.token_hex(8))
    assert await check_reason(wrong) == "AuthenticationFailed"
    status, reason, message = await ready_condition(wrong)
    assert (status, reason) == ("False", "AuthenticationFailed")
    assert right.username and right.username in message


# ---------------------------------------------------------------- etcd without auth

@dataclass(frozen=True)
class ThrowAwayEtcd:
    settings: Settings  # Haku's view: the CA (with key) and the root client certificate
    etcdctl: list[str]  # etcdctl with the root certificate, for setup


@pytest.fixture
def throwaway_etcd(tmp_path: Path) -> Iterator[ThrowAwayEtcd]:
    """An etcd of its own, mutual TLS and ``--client-cert-auth`` like a real DataStore, but
    with auth not enabled yet. Always killed afterwards."""
    for port in (ETCD_CLIENT_PORT, ETCD_PEER_PORT):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"port {port} is taken; the throw-away etcd needs it")
    bin_dir = toolchain.ensure(["etcd"])["etcd"]
    alg = pki.KeyAlgorithm.ECDSA_P256
    ca = pki.new_ca("haku-health-etcd-ca", alg)
    server = pki.issue(ca, "haku-health-etcd", pki.Usage.SERVER_AND_CLIENT,
                       ip_addresses=["127.0.0.1"], algorithm=alg)
    root = pki.issue(ca, "root", pki.Usage.CLIENT, algorithm=alg)
    files = {"ca.crt": ca.cert_pem, "server.crt": server.cert_pem,
             "server.key": server.key_pem, "root.crt": root.cert_pem, "root.key": root.key_pem}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        (tmp_path / name).chmod(0o600)
    client = f"https://127.0.0.1:{ETCD_CLIENT_PORT}"
    peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
    log = (tmp_path / "etcd.log").open("wb")
    proc = subprocess.Popen(
        [str(bin_dir / "etcd"), "--name=haku-health", f"--data-dir={tmp_path / 'data'}",
         f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
         f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
         f"--initial-cluster=haku-health={peer}", "--client-cert-auth",
         f"--trusted-ca-file={tmp_path / 'ca.crt'}", f"--cert-file={tmp_path / 'server.crt'}",
         f"--key-file={tmp_path / 'server.key'}", "--listen-metrics-urls=",
         "--log-level=warn"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        etcdctl = [str(bin_dir / "etcdctl"), f"--endpoints={client}",
                   f"--cacert={tmp_path / 'ca.crt'}", f"--cert={tmp_path / 'root.crt'}",
                   f"--key={tmp_path / 'root.key'}", "--command-timeout=5s"]
        deadline = time.monotonic() + 30
        while subprocess.run([*etcdctl, "endpoint", "health"], capture_output=True,
                             check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the throw-away etcd did not start: "
                            + (tmp_path / "etcd.log").read_text()[-2000:])
            time.sleep(0.2)
        settings = Settings(name="health-etcd", driver="etcd",
                            endpoints=(f"127.0.0.1:{ETCD_CLIENT_PORT}",), ca_cert=ca.cert_pem,
                            ca_key=ca.key_pem, client_cert=root.cert_pem,
                            client_key=root.key_pem)
        yield ThrowAwayEtcd(settings, etcdctl)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


async def test_etcd_with_auth_disabled_is_insecure_not_ready(
    throwaway_etcd: ThrowAwayEtcd
) -> None:
    settings = throwaway_etcd.settings
    assert await check_reason(settings) == "InsecureConfiguration"
    status, reason, message = await ready_condition(settings)
    assert (status, reason) == ("False", "InsecureConfiguration")
    assert "authentication is disabled" in message
    driver = open_driver(settings)
    assert isinstance(driver, EtcdDriver)
    try:
        assert await driver.auth_enabled() is False
        assert await driver.auth_enabled_by_login() is False  # the etcd 3.4 path
    finally:
        await driver.close()

    # The same server once `auth enable`d, as the datastores tier sets its etcd up: Ready.
    for args in (("user", "add", "root", "--no-password"),
                 ("user", "grant-role", "root", "root"), ("auth", "enable")):
        done = subprocess.run([*throwaway_etcd.etcdctl, *args], capture_output=True,
                              text=True, check=False)
        assert done.returncode == 0, done.stderr
    assert await check_reason(settings) == "ok"
    status, reason, message = await ready_condition(settings)
    assert (status, reason) == ("True", "Connected")
    assert message.startswith("etcd 3.")
    driver = open_driver(settings)
    assert isinstance(driver, EtcdDriver)
    try:
        assert await driver.auth_enabled() is True
        assert await driver.auth_enabled_by_login() is True
    finally:
        await driver.close()
