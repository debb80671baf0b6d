"""The operator on the local admin cluster: TenantControlPlanes become running tenants."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Event, Pod, Secret, Service
from lightkube.resources.networking_v1 import Ingress

from haku.api import conditions
from haku.api.resources import TenantControlPlane
from haku.controller.resources import DataStore
from haku.datastore import DataStoreError, Tenant, open_driver
from haku.dev import samples
from haku.dev.cluster import DevCluster
from haku.dev.datastores import driver_settings, read_connections

from .helpers import client, eventually, kubectl

NS = "tenants"
VERSION = "v1.37.2"


async def tcp_status(c: AsyncClient, name: str) -> dict[str, Any]:
    obj = await c.get(TenantControlPlane, name, namespace=NS)
    status: dict[str, Any] = obj.to_dict().get("status") or {}
    return status


async def condition(c: AsyncClient, name: str, ctype: str) -> dict[str, Any] | None:
    return conditions.find((await tcp_status(c, name)).get("conditions"), ctype)


async def apply_tcp(c: AsyncClient, name: str, datastore: str, **spec: Any) -> None:
    doc = samples.tenant_control_plane(name, NS, datastore, VERSION)
    doc["spec"].update(spec)
    await c.apply(from_dict(doc), force=True)


async def wait_ready(c: AsyncClient, name: str, timeout: float = 120) -> None:
    async def ready() -> bool:
        ready_condition = await condition(c, name, "Ready")
        return bool(ready_condition and ready_condition["status"] == "True")

    try:
        await eventually(ready, timeout, f"{name} Ready")
    except AssertionError:
        raise AssertionError(f"{name} not Ready: {await tcp_status(c, name)}") from None


async def wait_finalized(c: AsyncClient, name: str, timeout: float = 60) -> None:
    """Until TenantControlPlane ``name`` is gone (its finalizer done)."""
    async def gone() -> bool:
        try:
            await c.get(TenantControlPlane, name, namespace=NS)
        except ApiError as e:
            return e.status.code == 404
        return False

    await eventually(gone, timeout, f"{name} to be finalized")


async def admin_kubeconfig(c: AsyncClient, name: str, path: Path) -> Path:
    secret_name = (await tcp_status(c, name))["kubeconfig"]["admin"]["secretName"]
    secret = await c.get(Secret, secret_name, namespace=NS)
    path.write_bytes(base64.b64decode(secret.data["admin.conf"]))
    return path


@pytest.mark.parametrize("datastore", ["dev-etcd", "dev-postgres", "dev-mariadb"])
async def test_a_tenant_on_each_datastore_becomes_ready_and_serves(
    running_operator: DevCluster, datastore: str, tmp_path: Path
) -> None:
    c = client(running_operator)
    name = f"serve-{datastore.removeprefix('dev-')}"
    try:
        await apply_tcp(c, name, datastore)
        await wait_ready(c, name)
        status = await tcp_status(c, name)
        assert status["kubernetesResources"]["version"] == {"status": "Ready",
                                                            "version": VERSION}
        assert status["storage"]["dataStoreName"] == datastore
        svc = await c.get(Service, name, namespace=NS)
        assert status["controlPlaneEndpoint"] == f"{svc.spec.clusterIP}:6443"
        obj = await c.get(TenantControlPlane, name, namespace=NS)
        assert status["observedGeneration"] == obj.metadata.generation
        # kubectl's printer columns show the same.
        table = kubectl(running_operator, "get", "tcp", name, "-n", NS).stdout.splitlines()
        row = dict(zip(table[0].split(), table[1].split(), strict=True))
        assert {k: row[k] for k in ("NAME", "VERSION", "STATUS", "ENDPOINT", "DATASTORE")} == {
            "NAME": name, "VERSION": VERSION, "STATUS": "Ready",
            "ENDPOINT": status["controlPlaneEndpoint"], "DATASTORE": datastore}
        kc = await admin_kubeconfig(c, name, tmp_path / "admin.conf")
        # `haku kubeconfig` prints exactly the admin kubeconfig Secret's content.
        printed = subprocess.run(
            [sys.executable, "-m", "haku", "kubeconfig", f"{NS}/{name}",
             "--kubeconfig", str(running_operator.layout.admin_kubeconfig)],
            capture_output=True, check=True, timeout=60).stdout
        assert printed == kc.read_bytes()
        names = kubectl(running_operator, "get", "ns", "-o", "name", kubeconfig=kc).stdout
        assert "namespace/kube-system" in names.split()
        who = kubectl(running_operator, "auth", "whoami", "-o", "yaml", kubeconfig=kc).stdout
        assert "kubeadm:cluster-admins" in who
        events = [e async for e in c.list(Event, namespace=NS,
                                          fields={"involvedObject.name": name})]
        assert {"TenantProvisioned", "Serving", "Ready"} <= {e.reason for e in events}

        async def used_by() -> bool:
            ds = (await c.get(DataStore, datastore)).to_dict().get("status") or {}
            return f"{NS}/{name}" in (ds.get("usedBy") or [])

        await eventually(used_by, 30, f"DataStore {datastore} to list {name} in usedBy")
    finally:
        await c.delete(TenantControlPlane, name, namespace=NS)
        await c.close()


async def test_two_tenants_on_one_etcd_do_not_see_each_other(
    running_operator: DevCluster, tmp_path: Path
) -> None:
    c = client(running_operator)
    try:
        await asyncio.gather(apply_tcp(c, "iso-a", "dev-etcd"), apply_tcp(c, "iso-b", "dev-etcd"))
        await asyncio.gather(wait_ready(c, "iso-a"), wait_ready(c, "iso-b"))
        a = await admin_kubeconfig(c, "iso-a", tmp_path / "a.conf")
        b = await admin_kubeconfig(c, "iso-b", tmp_path / "b.conf")
        kubectl(running_operator, "create", "namespace", "only-in-a", kubeconfig=a)
        in_a = kubectl(running_operator, "get", "ns", "-o", "name", kubeconfig=a).stdout.split()
        in_b = kubectl(running_operator, "get", "ns", "-o", "name", kubeconfig=b).stdout.split()
        assert "namespace/only-in-a" in in_a and "namespace/only-in-a" not in in_b
        # Each tenant's credentials are refused by the other tenant's API server.
        doc_a = yaml.safe_load(a.read_text())
        doc_a["clusters"][0]["cluster"] = yaml.safe_load(b.read_text())["clusters"][0]["cluster"]
        crossed = tmp_path / "crossed.conf"
        crossed.write_text(yaml.safe_dump(doc_a))
        refused = kubectl(running_operator, "get", "ns", kubeconfig=crossed, check=False)
        assert refused.returncode != 0 and "Unauthorized" in refused.stderr
    finally:
        for name in ("iso-a", "iso-b"):
            await c.delete(TenantControlPlane, name, namespace=NS)
        await c.close()


async def test_scaling_repairs_and_rolls(running_operator: DevCluster, tmp_path: Path) -> None:
    c = client(running_operator)
    name = "repair"
    try:
        await apply_tcp(c, name, "dev-etcd")
        await wait_ready(c, name)
        # Scale through the TenantControlPlane.
        kubectl(running_operator, "scale", "tcp", name, "-n", NS, "--replicas=2")

        async def two() -> bool:
            d = await c.get(Deployment, name, namespace=NS)
            return d.spec.replicas == 2 and (d.status.readyReplicas or 0) == 2

        await eventually(two, 90, "2 ready replicas")
        await wait_ready(c, name)
        # A deleted Deployment comes back.
        await c.delete(Deployment, name, namespace=NS)

        async def back() -> bool:
            try:
                d = await c.get(Deployment, name, namespace=NS)
            except ApiError:
                return False
            return d.metadata.deletionTimestamp is None

        await eventually(back, 60, "the Deployment to be recreated")
        await wait_ready(c, name)
        # A deleted certificate Secret comes back, and the pods roll onto it.
        old_kc = await admin_kubeconfig(c, name, tmp_path / "old.conf")
        before = (await c.get(Deployment, name, namespace=NS)).spec.template.metadata
        await c.delete(Secret, f"{name}-pki", namespace=NS)

        async def rolled() -> bool:
            try:
                await c.get(Secret, f"{name}-pki", namespace=NS)
            except ApiError:
                return False
            now = (await c.get(Deployment, name, namespace=NS)).spec.template.metadata
            return now.annotations["checksum.haku.dev/pki"] != \
                before.annotations["checksum.haku.dev/pki"]

        await eventually(rolled, 60, "new certificates rolled into the pod template")

        async def replaced() -> bool:
            pods = [p async for p in c.list(Pod, namespace=NS,
                                            labels={"haku.dev/tenant-control-plane": name})]
            return bool(pods) and all(
                p.metadata.annotations["checksum.haku.dev/pki"]
                == now_pki and p.metadata.deletionTimestamp is None
                and p.status is not None and bool(p.status.containerStatuses)
                and all(cs.ready for cs in p.status.containerStatuses or []) for p in pods)

        now_pki = (await c.get(Deployment, name, namespace=NS)).spec.template.metadata \
            .annotations["checksum.haku.dev/pki"]
        await eventually(replaced, 120, "every pod replaced by one with the new certificates")
        await wait_ready(c, name)
        # A new CA: the kubeconfig from before is refused, the new one serves.
        new_kc = await admin_kubeconfig(c, name, tmp_path / "new.conf")
        assert new_kc.read_bytes() != old_kc.read_bytes()
        assert kubectl(running_operator, "get", "ns", kubeconfig=old_kc,
                       check=False).returncode != 0
        assert "namespace/default" in kubectl(running_operator, "get", "ns", "-o", "name",
                                              kubeconfig=new_kc).stdout.split()
        # Changed extraArgs roll the pods with the new flag.
        doc = samples.tenant_control_plane(name, NS, "dev-etcd", VERSION, replicas=2)
        doc["spec"]["controlPlane"]["deployment"]["extraArgs"] = {"apiServer": ["--v=3"]}
        await c.apply(from_dict(doc), force=True)

        async def flag_running() -> bool:
            pods = [p async for p in c.list(Pod, namespace=NS,
                                            labels={"haku.dev/tenant-control-plane": name})]
            live = [p for p in pods if p.metadata.deletionTimestamp is None]
            return bool(live) and all(
                "--v=3" in (p.spec.containers[0].args or []) for p in live)

        await eventually(flag_running, 120, "pods running with --v=3")
        await wait_ready(c, name)
        # Scaled to zero the tenant sleeps: no pod, status Sleeping, not Ready.
        kubectl(running_operator, "scale", "tcp", name, "-n", NS, "--replicas=0")

        async def sleeping() -> bool:
            status = await tcp_status(c, name)
            pods = [p async for p in c.list(Pod, namespace=NS,
                                            labels={"haku.dev/tenant-control-plane": name})]
            ready = conditions.find(status.get("conditions"), "Ready")
            return (status["kubernetesResources"]["version"]["status"] == "Sleeping"
                    and not pods and bool(ready) and ready["status"] == "False")

        await eventually(sleeping, 90, "the tenant to sleep")
        kubectl(running_operator, "scale", "tcp", name, "-n", NS, "--replicas=1")
        await eventually(lambda: _ready_again(c, name), 120, "the tenant to wake up")
    finally:
        await c.delete(TenantControlPlane, name, namespace=NS)
        await c.close()


async def _ready_again(c: AsyncClient, name: str) -> bool:
    ready = await condition(c, name, "Ready")
    status = await tcp_status(c, name)
    return bool(ready and ready["status"] == "True"
                and status["kubernetesResources"]["version"]["status"] == "Ready")


@pytest.mark.parametrize("store", ["etcd", "postgres", "mariadb"])
async def test_delete_removes_objects_and_the_datastore_tenant(
    running_operator: DevCluster, store: str,
) -> None:
    c = client(running_operator)
    name = f"goner-{store}"
    await apply_tcp(c, name, f"dev-{store}")
    await wait_ready(c, name)
    status = await tcp_status(c, name)
    schema = status["storage"]["setup"]["schema"]
    settings = driver_settings(running_operator.layout, store)
    driver = open_driver(settings)
    try:
        assert schema in await driver.list_tenants()
        await c.delete(TenantControlPlane, name, namespace=NS)
        await wait_finalized(c, name)
        assert schema not in await driver.list_tenants()
        if store == "postgres":
            with pytest.raises(DataStoreError, match="does not exist"):
                await driver.usage(Tenant(schema, schema, "x"))
        if store == "etcd":  # not one key is left under the tenant's prefix
            assert (await driver.usage(Tenant(schema, schema))).keys == 0

        async def owned_gone() -> bool:
            left = [s.metadata.name async for s in c.list(
                Secret, namespace=NS, labels={"haku.dev/tenant-control-plane": name})]
            left += [d.metadata.name async for d in c.list(
                Deployment, namespace=NS, labels={"haku.dev/tenant-control-plane": name})]
            left += [v.metadata.name async for v in c.list(
                Service, namespace=NS, labels={"haku.dev/tenant-control-plane": name})]
            return not left

        await eventually(owned_gone, 60, "owned Secrets and Deployment to be collected")
    finally:
        await driver.close()
        await c.close()


async def test_a_tenant_deleted_while_it_writes_leaves_no_key_behind(
    running_operator: DevCluster, tmp_path: Path,
) -> None:
    """The pods stop before the data goes: writes racing the delete leave nothing."""
    from lightkube import KubeConfig
    from lightkube.resources.core_v1 import ConfigMap

    c = client(running_operator)
    name = "busy-goner"
    await apply_tcp(c, name, "dev-etcd", controlPlane={
        "deployment": {"replicas": 1}, "service": {"serviceType": "ClusterIP"}})
    await wait_ready(c, name)
    schema = (await tcp_status(c, name))["storage"]["setup"]["schema"]
    kc = await admin_kubeconfig(c, name, tmp_path / "admin.conf")
    tenant = AsyncClient(KubeConfig.from_file(kc), trust_env=False)
    written = 0

    async def write() -> None:
        nonlocal written
        for i in range(100_000):  # until the tenant's API server goes away
            try:
                await tenant.create(ConfigMap.from_dict(  # type: ignore[attr-defined]
                    {"metadata": {"name": f"w{i}", "namespace": "default"}, "data": {"i": "x"}}))
                written += 1
            except Exception:  # the API server stopping: refused, reset, timed out
                await asyncio.sleep(0.05)
                if written and i > written + 200:
                    return

    driver = open_driver(driver_settings(running_operator.layout, "etcd"))
    writer = asyncio.create_task(write())
    try:
        await eventually(lambda: asyncio.sleep(0, written > 20), 60, "the tenant to take writes")
        await c.delete(TenantControlPlane, name, namespace=NS)
        await wait_finalized(c, name, timeout=120)
        events = [e.reason async for e in c.list(Event, namespace=NS,
                                                 fields={"involvedObject.name": name})]
        assert "DataStoreTenantDeleted" in events
        assert (await driver.usage(Tenant(schema, schema))).keys == 0
        await asyncio.sleep(3)  # nothing trickles in afterwards either
        assert (await driver.usage(Tenant(schema, schema))).keys == 0
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await tenant.close()
        await driver.close()
        await c.close()


async def test_an_unknown_datastore_is_reported_and_recovers_once_created(
    running_operator: DevCluster,
) -> None:
    c = client(running_operator)
    name = "waits"
    try:
        await apply_tcp(c, name, "arrives-later")

        async def reported() -> bool:
            found = await condition(c, name, "DataStoreReady")
            return bool(found and found["reason"] == "DataStoreNotFound")

        await eventually(reported, 30, "DataStoreNotFound")
        ready = await condition(c, name, "Ready")
        assert ready and ready["status"] == "False"
        assert "DataStore arrives-later does not exist" in ready["message"]
        later = next(o for o in samples.datastore_objects(running_operator.layout)
                     if o["kind"] == "DataStore" and o["metadata"]["name"] == "dev-etcd")
        later["metadata"]["name"] = "arrives-later"
        await c.apply(from_dict(later), force=True)
        await wait_ready(c, name)
    finally:
        await c.delete(TenantControlPlane, name, namespace=NS)
        await c.close()


async def test_an_unreachable_datastore_is_reported_and_recovers_when_fixed(
    running_operator: DevCluster,
) -> None:
    c = client(running_operator)
    name = "moved"
    good = next(o for o in samples.datastore_objects(running_operator.layout)
                if o["kind"] == "DataStore" and o["metadata"]["name"] == "dev-etcd")
    broken = yaml.safe_load(yaml.safe_dump(good))
    broken["metadata"]["name"] = "moved-etcd"
    broken["spec"]["endpoints"] = ["127.0.0.1:9"]
    try:
        await c.apply(from_dict(broken), force=True)
        await apply_tcp(c, name, "moved-etcd")

        async def unreachable() -> bool:
            found = await condition(c, name, "DataStoreReady")
            return bool(found and found["reason"] == "Unreachable")

        await eventually(unreachable, 60, "DataStoreReady=False/Unreachable")
        broken["spec"]["endpoints"] = good["spec"]["endpoints"]
        await c.apply(from_dict(broken), force=True)
        await wait_ready(c, name)
        # Unreachable again once Ready: the Condition says so, and what the tenant already has
        # (endpoint, kubeconfig, pinned storage) stays in its status.
        ready_status = await tcp_status(c, name)
        broken["spec"]["endpoints"] = ["127.0.0.1:9"]
        await c.apply(from_dict(broken), force=True)
        await eventually(unreachable, 90, "DataStoreReady=False/Unreachable after Ready")
        during = await tcp_status(c, name)
        for key in ("controlPlaneEndpoint", "kubeconfig", "storage"):
            assert during.get(key) == ready_status[key], key
        assert during["kubernetesResources"]["version"]["status"] != "Provisioning"
        ready = conditions.find(during.get("conditions"), "Ready")
        assert ready and ready["status"] == "False"
        broken["spec"]["endpoints"] = good["spec"]["endpoints"]
        await c.apply(from_dict(broken), force=True)
        await eventually(lambda: _ready_again(c, name), 120, "Ready once reachable again")
    finally:
        await c.delete(TenantControlPlane, name, namespace=NS)


async def test_node_port_exposure_uses_the_port_as_node_port(
    running_operator: DevCluster, tmp_path: Path
) -> None:
    c = client(running_operator)
    name = "np"
    try:
        doc = samples.tenant_control_plane(name, NS, "dev-etcd", VERSION,
                                           service_type="NodePort", port=31443)
        await c.apply(from_dict(doc), force=True)
        await wait_ready(c, name)
        svc = await c.get(Service, name, namespace=NS)
        assert svc.spec.ports[0].nodePort == 31443
        status = await tcp_status(c, name)
        assert status["controlPlaneEndpoint"] == f"{running_operator.layout.node_ip}:31443"
        kc = await admin_kubeconfig(c, name, tmp_path / "np.conf")
        assert "namespace/default" in kubectl(running_operator, "get", "ns", "-o", "name",
                                              kubeconfig=kc).stdout.split()
    finally:
        await c.delete(TenantControlPlane, name, namespace=NS)


async def test_node_port_without_a_port_uses_the_allocated_node_port(
    running_operator: DevCluster, tmp_path: Path
) -> None:
    c = client(running_operator)
    name = "np-auto"
    try:
        doc = samples.tenant_control_plane(name, NS, "dev-etcd", VERSION,
                                           service_type="NodePort", port=None)
        await c.apply(from_dict(doc), force=True)
        await wait_ready(c, name)
        svc = await c.get(Service, name, namespace=NS)
        allocated = svc.spec.ports[0].nodePort
        assert allocated and 30000 <= allocated <= 32767
        status = await tcp_status(c, name)
        assert status["controlPlaneEndpoint"] == \
            f"{running_operator.layout.node_ip}:{allocated}"
        kc = await admin_kubeconfig(c, name, tmp_path / "np-auto.conf")
        assert "namespace/default" in kubectl(running_operator, "get", "ns", "-o", "name",
                                              kubeconfig=kc).stdout.split()
    finally:
        await c.delete(TenantControlPlane, name, namespace=NS)


async def test_a_deleted_datastore_password_is_rotated_and_the_pods_follow(
    running_operator: DevCluster, tmp_path: Path,
) -> None:
    """Deleting a SQL tenant's password Secret is the request to rotate it: a new password is
    set in the database, kine's endpoint Secret follows, the pods roll onto it, the old
    password is refused."""
    c = client(running_operator)
    name = "rotate"
    label = {"haku.dev/tenant-control-plane": name}
    secret_name = f"{name}-datastore-password"

    async def password() -> str | None:
        try:
            secret = await c.get(Secret, secret_name, namespace=NS)
        except ApiError:
            return None
        return base64.b64decode((secret.data or {})["password"]).decode()

    try:
        await apply_tcp(c, name, "dev-postgres")
        await wait_ready(c, name)
        old = await password()
        assert old
        before = {p.metadata.uid async for p in c.list(Pod, namespace=NS, labels=label)}
        await c.delete(Secret, secret_name, namespace=NS)

        async def rotated() -> bool:
            return (await password()) not in (None, old)

        await eventually(rotated, 60, "a new password in the Secret")

        async def replaced() -> bool:
            pods = [p async for p in c.list(Pod, namespace=NS, labels=label)]
            return bool(pods) and all(
                p.metadata.uid not in before and p.metadata.deletionTimestamp is None
                and p.status is not None and bool(p.status.containerStatuses)
                and all(cs.ready for cs in p.status.containerStatuses or []) for p in pods)

        await eventually(replaced, 120, "the pods replaced by ones using the new password")
        await eventually(lambda: _ready_again(c, name), 60, "Ready on the new password")
        kc = await admin_kubeconfig(c, name, tmp_path / "rotate.conf")
        kubectl(running_operator, "create", "namespace", "after-rotation", kubeconfig=kc)

        setup = (await tcp_status(c, name))["storage"]["setup"]
        driver = open_driver(driver_settings(running_operator.layout, "postgres"))
        try:
            database, role = driver.physical_names(Tenant(setup["schema"], setup["user"]))
        finally:
            await driver.close()
        conn = read_connections(running_operator.layout)["postgres"]
        host, port = conn["local_endpoints"][0].split(":")

        async def connect(secret: str) -> None:
            async with await psycopg.AsyncConnection.connect(
                    host=host, port=int(port), user=role, password=secret, dbname=database,
                    sslmode="verify-full", sslrootcert=conn["ca_cert"], connect_timeout=5):
                pass

        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            await connect(old)
        new = await password()
        assert new
        await connect(new)
    finally:
        await c.delete(TenantControlPlane, name, namespace=NS)
        await c.close()


async def test_an_ingress_follows_the_spec(running_operator: DevCluster) -> None:
    """spec.controlPlane.ingress makes an Ingress to the tenant's Service; removing it from
    the spec deletes the Ingress."""
    c = client(running_operator)
    name = "ing"
    doc = samples.tenant_control_plane(name, NS, "dev-etcd", VERSION, replicas=0)
    doc["spec"]["controlPlane"]["ingress"] = {"hostname": "ing.tenants.example",
                                              "ingressClassName": "haproxy"}
    try:
        await c.apply(from_dict(doc), force=True)

        async def ingress() -> Ingress | None:
            try:
                return await c.get(Ingress, name, namespace=NS)
            except ApiError:
                return None

        async def made() -> bool:
            return (await ingress()) is not None

        await eventually(made, 60, "the Ingress")
        ing = await ingress()
        assert ing is not None and ing.spec is not None and ing.spec.rules
        assert ing.spec.ingressClassName == "haproxy"
        assert ing.spec.rules[0].host == "ing.tenants.example"
        backend = ing.spec.rules[0].http.paths[0].backend.service  # type: ignore[union-attr]
        assert backend.name == name and backend.port.number == 6443
        del doc["spec"]["controlPlane"]["ingress"]
        await c.apply(from_dict(doc), force=True)

        async def removed() -> bool:
            found = await ingress()
            return found is None or found.metadata.deletionTimestamp is not None

        await eventually(removed, 60, "the Ingress to be deleted")
    finally:
        await c.delete(TenantControlPlane, name, namespace=NS)
        await c.close()


async def test_a_second_tenant_claiming_a_schema_in_use_is_refused(
    running_operator: DevCluster, tmp_path: Path
) -> None:
    """Two TenantControlPlanes with one dataStoreSchema on one DataStore: the newer one is
    refused (SchemaInUse) and provisions nothing; deleting it leaves the older one's data."""
    c = client(running_operator)
    first, second = "claim-a", "claim-b"
    try:
        await apply_tcp(c, first, "dev-etcd", dataStoreSchema="shared-space")
        await wait_ready(c, first)
        kc = await admin_kubeconfig(c, first, tmp_path / "first.conf")
        kubectl(running_operator, "create", "namespace", "kept", kubeconfig=kc)
        await apply_tcp(c, second, "dev-etcd", dataStoreSchema="shared-space")

        async def refused() -> bool:
            found = await condition(c, second, "DataStoreReady")
            return bool(found and found["reason"] == "SchemaInUse")

        await eventually(refused, 60, f"{second} refused with SchemaInUse")
        found = await condition(c, second, "DataStoreReady")
        assert found and f"{NS}/{first}" in found["message"]
        assert "storage" not in await tcp_status(c, second)
        await c.delete(TenantControlPlane, second, namespace=NS)
        await wait_finalized(c, second)
        names = kubectl(running_operator, "get", "ns", "-o", "name", kubeconfig=kc).stdout
        assert "namespace/kept" in names.split()
        await wait_ready(c, first)
    finally:
        for name in (first, second):
            with contextlib.suppress(ApiError):
                await c.delete(TenantControlPlane, name, namespace=NS)
        await c.close()


async def test_a_reserved_datastore_name_is_refused_and_deletes_cleanly(
    running_operator: DevCluster,
) -> None:
    """dataStoreUsername "root" would be etcd's root user: refused before any write, with a
    Condition, and the TenantControlPlane still deletes (nothing to clean)."""
    c = client(running_operator)
    name = "reserved"
    try:
        await apply_tcp(c, name, "dev-etcd", dataStoreUsername="root")

        async def refused() -> bool:
            found = await condition(c, name, "DataStoreReady")
            return bool(found and found["reason"] == "InvalidName")

        await eventually(refused, 60, "DataStoreReady=False/InvalidName")
        found = await condition(c, name, "DataStoreReady")
        assert found and "root" in found["message"]
    finally:
        await c.delete(TenantControlPlane, name, namespace=NS)

    try:
        await wait_finalized(c, name)
    finally:
        await c.close()
