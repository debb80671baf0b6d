"""The DataStore API on a real kube-apiserver: admission rules, and a Ready condition that
reflects a real connection check."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict

from haku.controller.datastore_status import check_datastore
from haku.controller.operator import install_crds
from haku.controller.resources import DataStore
from haku.dev.cluster import DevCluster

from .conftest import connections

NS = "haku-system"


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


@pytest.fixture
async def client(api_cluster: DevCluster) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(KubeConfig.from_file(api_cluster.layout.admin_kubeconfig),
                    field_manager="haku-test")
    await install_crds(c, NS)  # the CRDs, and NS for the Secrets
    yield c
    async for ds in c.list(DataStore):
        await c.delete(DataStore, ds.metadata.name)
    await c.close()


def ref(secret: str, key: str) -> dict[str, Any]:
    return {"secretReference": {"name": secret, "namespace": NS, "keyPath": key}}


async def secret(c: AsyncClient, name: str, data: dict[str, bytes]) -> None:
    await c.apply(from_dict({"apiVersion": "v1", "kind": "Secret",
                             "metadata": {"name": name, "namespace": NS},
                             "data": {k: b64(v) for k, v in data.items()}}), force=True)


def etcd_spec(cluster: DevCluster, endpoint: str | None = None) -> dict[str, Any]:
    c = connections(cluster)["etcd"]
    return {
        "driver": "etcd",
        "endpoints": [endpoint or c["local_endpoints"][0]],
        "tlsConfig": {
            "certificateAuthority": {"certificate": ref("etcd-ds", "ca.crt"),
                                     "privateKey": ref("etcd-ds", "ca.key")},
            "clientCertificate": {"certificate": ref("etcd-ds", "tls.crt"),
                                  "privateKey": ref("etcd-ds", "tls.key")},
        },
    }


def sql_spec(cluster: DevCluster, store: str) -> dict[str, Any]:
    c = connections(cluster)[store]
    return {
        "driver": c["driver"],
        "endpoints": c["local_endpoints"],
        "basicAuth": {"username": {"content": b64(c["user"])},
                      "password": ref(f"{store}-ds", "password")},
        "tlsConfig": {"certificateAuthority": {
            "certificate": {"content": b64(Path(c["ca_cert"]).read_bytes())}}},
    }


def every_spec(cluster: DevCluster, prefix: str) -> dict[str, dict[str, Any]]:
    """A spec for each dev datastore, named ``<prefix>-etcd``, ``-postgres``, ``-mariadb``."""
    return {f"{prefix}-etcd": etcd_spec(cluster),
            f"{prefix}-postgres": sql_spec(cluster, "postgres"),
            f"{prefix}-mariadb": sql_spec(cluster, "mariadb")}


async def put_secrets(c: AsyncClient, cluster: DevCluster) -> None:
    e = connections(cluster)["etcd"]
    await secret(c, "etcd-ds", {
        "ca.crt": Path(e["ca_cert"]).read_bytes(), "ca.key": Path(e["ca_key"]).read_bytes(),
        "tls.crt": Path(e["client_cert"]).read_bytes(),
        "tls.key": Path(e["client_key"]).read_bytes()})
    for store in ("postgres", "mariadb"):
        password = Path(connections(cluster)[store]["password_file"]).read_bytes().strip()
        await secret(c, f"{store}-ds", {"password": password})


def datastore(name: str, spec: dict[str, Any]) -> Any:
    return DataStore(metadata={"name": name}, spec=spec)


async def test_working_datastores_become_ready_after_a_real_check(
    client: AsyncClient, datastores_cluster: DevCluster
) -> None:
    await put_secrets(client, datastores_cluster)
    specs = every_spec(datastores_cluster, "ds")
    for name, spec in specs.items():
        await client.apply(datastore(name, spec), force=True)
        status = await check_datastore(client, name)
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", ready
        assert ready["reason"] == "Connected"
        stored = (await client.get(DataStore, name)).to_dict()["status"]
        assert stored["ready"] is True
        assert stored["observedGeneration"] == 1
        assert stored["serverVersion"].split()[0] in ("etcd", "PostgreSQL", "MySQL")
        assert isinstance(stored["tenantCount"], int)


async def test_an_unreachable_datastore_is_not_ready_and_recovers_when_fixed(
    client: AsyncClient, datastores_cluster: DevCluster
) -> None:
    await put_secrets(client, datastores_cluster)
    await client.apply(datastore("ds-moved", etcd_spec(datastores_cluster, "127.0.0.1:9")),
                       force=True)
    status = await check_datastore(client, "ds-moved")
    ready = status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "Unreachable")
    assert "127.0.0.1:9" in ready["message"] or "connect" in ready["message"].lower()
    assert status["ready"] is False
    await client.apply(datastore("ds-moved", etcd_spec(datastores_cluster)), force=True)
    status = await check_datastore(client, "ds-moved")
    assert status["conditions"][0]["status"] == "True"
    assert status["observedGeneration"] == 2


async def test_a_missing_secret_is_named(client: AsyncClient,
                                         datastores_cluster: DevCluster) -> None:
    spec = sql_spec(datastores_cluster, "postgres")
    spec["basicAuth"]["password"] = ref("no-such-secret", "password")
    await client.apply(datastore("ds-nosecret", spec), force=True)
    ready = (await check_datastore(client, "ds-nosecret"))["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "SecretNotFound")
    assert f"Secret {NS}/no-such-secret does not exist" in ready["message"]


@pytest.mark.parametrize(("spec", "message"), [
    ({"driver": "etcd", "endpoints": ["127.0.0.1:2379"],
      "tlsConfig": {"certificateAuthority": {"certificate": {"content": b64("x")}}}},
     "an etcd DataStore needs tlsConfig.certificateAuthority.privateKey"),
    ({"driver": "etcd", "endpoints": ["127.0.0.1:2379"],
      "tlsConfig": {"certificateAuthority": {"certificate": {"content": b64("x")},
                                             "privateKey": {"content": b64("k")}}}},
     "an etcd DataStore needs tlsConfig.clientCertificate"),
    ({"driver": "etcd", "endpoints": ["127.0.0.1:2379"],
      "tlsConfig": {"certificateAuthority": {"certificate": {"content": b64("x")}},
                    "clientCertificate": {"certificate": {"content": b64("c")},
                                          "privateKey": {"content": b64("k")}}}},
     "an etcd DataStore needs tlsConfig.certificateAuthority.privateKey"),
    ({"driver": "PostgreSQL", "endpoints": ["127.0.0.1:5432"]},
     "MySQL and PostgreSQL DataStores need basicAuth (TLS client-certificate login"),
    ({"driver": "MySQL", "endpoints": ["127.0.0.1:3306"],
      "tlsConfig": {"certificateAuthority": {"certificate": {"content": b64("x")}},
                    "clientCertificate": {"certificate": {"content": b64("c")},
                                          "privateKey": {"content": b64("k")}}}},
     "MySQL and PostgreSQL DataStores need basicAuth (TLS client-certificate login"),
    ({"driver": "PostgreSQL", "endpoints": ["127.0.0.1:5432"],
      "tlsConfig": {"certificateAuthority": {"certificate": {"content": b64("x")}}}},
     "MySQL and PostgreSQL DataStores need basicAuth"),
    ({"driver": "NATS", "endpoints": ["127.0.0.1:4222"], "basicAuth": {
        "username": {"content": b64("u")}, "password": {"content": b64("p")}}},
     "the NATS driver is not supported by Haku"),
    ({"driver": "MySQL", "endpoints": ["mysql://db:3306"], "basicAuth": {
        "username": {"content": b64("u")}, "password": {"content": b64("p")}}},
     "spec.endpoints[0]"),
    ({"driver": "MySQL", "endpoints": ["db:3306"], "basicAuth": {
        "username": {}, "password": {"content": b64("p")}}},
     "set content or secretReference"),
    ({"driver": "Redis", "endpoints": ["db:6379"]}, "Unsupported value"),
])
async def test_malformed_datastores_are_rejected_at_admission(
    client: AsyncClient, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiError) as info:
        await client.apply(datastore("ds-bad", spec), force=True)
    assert info.value.status.code == 422
    assert message in info.value.status.message


async def test_the_driver_is_immutable(client: AsyncClient,
                                       datastores_cluster: DevCluster) -> None:
    await client.apply(datastore("ds-imm", sql_spec(datastores_cluster, "postgres")), force=True)
    changed = sql_spec(datastores_cluster, "postgres") | {"driver": "MySQL"}
    with pytest.raises(ApiError) as info:
        await client.apply(datastore("ds-imm", changed), force=True)
    assert "driver is immutable" in info.value.status.message


@pytest.mark.parametrize("spec", [
    {"driver": "PostgreSQL", "endpoints": ["127.0.0.1:5432"], "basicAuth": {
        "username": {"content": b64("u")}, "password": {"content": b64("p")}}},
    {"driver": "MySQL", "endpoints": ["127.0.0.1:3306"], "basicAuth": {
        "username": {"content": b64("u")}, "password": {"content": b64("p")}},
     "tlsConfig": {"certificateAuthority": {"certificate": {"content": b64("x")}}}},
    {"driver": "etcd", "endpoints": ["127.0.0.1:2379"],
     "tlsConfig": {"certificateAuthority": {"certificate": {"content": b64("x")},
                                            "privateKey": {"content": b64("k")}},
                   "clientCertificate": {"certificate": {"content": b64("c")},
                                         "privateKey": {"content": b64("k")}}}},
], ids=["postgres-basicauth", "mysql-basicauth-and-ca", "etcd-complete"])
async def test_well_formed_datastores_are_admitted(client: AsyncClient,
                                                   spec: dict[str, Any]) -> None:
    await client.apply(datastore("ds-good", spec), force=True)
    stored = (await client.get(DataStore, "ds-good")).to_dict()["spec"]
    assert stored["driver"] == spec["driver"]
    await client.delete(DataStore, "ds-good")


async def test_a_malformed_ca_turns_ready_false_and_back(
    client: AsyncClient, datastores_cluster: DevCluster
) -> None:
    """A CA that does not parse must not leave an earlier Ready=True standing."""
    await put_secrets(client, datastores_cluster)
    specs = every_spec(datastores_cluster, "ds-ca")
    garbage = b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n"
    for name, spec in specs.items():
        await client.apply(datastore(name, spec), force=True)
        assert (await check_datastore(client, name))["ready"] is True, name
        if spec["driver"] == "etcd":  # the CA comes from the Secret
            await secret(client, "etcd-ds-bad", {
                "ca.crt": garbage, "ca.key": b"garbage key"})
            bad = etcd_spec(datastores_cluster)
            bad["tlsConfig"]["certificateAuthority"] = {
                "certificate": ref("etcd-ds-bad", "ca.crt"),
                "privateKey": ref("etcd-ds-bad", "ca.key")}
        else:
            bad = sql_spec(datastores_cluster, name.removeprefix("ds-ca-"))
            bad["tlsConfig"]["certificateAuthority"]["certificate"] = {
                "content": b64(garbage)}
        await client.apply(datastore(name, bad), force=True)
        status = await check_datastore(client, name)
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidTLSConfig"), (name, ready)
        assert "certificateAuthority" in ready["message"], ready
        assert status["ready"] is False
        stored = (await client.get(DataStore, name)).to_dict()["status"]
        assert stored["ready"] is False
        await client.apply(datastore(name, spec), force=True)
        status = await check_datastore(client, name)
        assert status["ready"] is True, (name, status["conditions"])


async def test_an_unreachable_sql_datastore_is_not_ready_and_recovers(
    client: AsyncClient, datastores_cluster: DevCluster
) -> None:
    await put_secrets(client, datastores_cluster)
    for store in ("postgres", "mariadb"):
        name = f"ds-moved-{store}"
        moved = sql_spec(datastores_cluster, store) | {"endpoints": ["127.0.0.1:9"]}
        await client.apply(datastore(name, moved), force=True)
        status = await check_datastore(client, name)
        ready = status["conditions"][0]
        assert (ready["status"], ready["reason"]) == ("False", "Unreachable"), ready
        assert "127.0.0.1" in ready["message"] or "connect" in ready["message"].lower()
        assert status["ready"] is False
        await client.apply(datastore(name, sql_spec(datastores_cluster, store)), force=True)
        status = await check_datastore(client, name)
        assert status["conditions"][0]["status"] == "True", status["conditions"]
        assert status["observedGeneration"] == 2


async def test_printer_columns_show_driver_ready_tenants_age(
    client: AsyncClient, datastores_cluster: DevCluster, api_cluster: DevCluster
) -> None:
    import asyncio

    await put_secrets(client, datastores_cluster)
    await client.apply(datastore("ds-cols", sql_spec(datastores_cluster, "mariadb")), force=True)
    status = await check_datastore(client, "ds-cols")
    assert status["ready"] is True
    proc = await asyncio.create_subprocess_exec(
        str(datastores_cluster.layout.bin / "kubectl"),
        f"--kubeconfig={api_cluster.layout.admin_kubeconfig}", "get", "datastores", "ds-cols",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    header, row = out.decode().splitlines()
    assert header.split() == ["NAME", "DRIVER", "READY", "TENANTS", "AGE"]
    name, driver, ready, tenants, age = row.split()
    assert (name, driver, ready) == ("ds-cols", "MySQL", "True")
    assert tenants == str(status["tenantCount"])
    assert age.endswith(("s", "m")), age  # just created: seconds (or a minute) old
