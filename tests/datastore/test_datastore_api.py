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
    specs = {"ds-etcd": etcd_spec(datastores_cluster),
             "ds-postgres": sql_spec(datastores_cluster, "postgres"),
             "ds-mariadb": sql_spec(datastores_cluster, "mariadb")}
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
    ({"driver": "PostgreSQL", "endpoints": ["127.0.0.1:5432"]},
     "a MySQL or PostgreSQL DataStore needs basicAuth or tlsConfig"),
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
