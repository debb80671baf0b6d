"""The operator on the local admin cluster: TenantControlPlanes become running tenants."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Event, Pod, Secret, Service
from lightkube.types import PatchType

from haku.api import conditions
from haku.controller.resources import DataStore
from haku.controller.tenant import TenantControlPlane
from haku.datastore import DataStoreError, Tenant, open_driver
from haku.dev import samples
from haku.dev.cluster import DevCluster
from haku.dev.datastores import driver_settings

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
        kc = await admin_kubeconfig(c, name, tmp_path / "admin.conf")
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


async def test_scaling_repairs_and_rolls(running_operator: DevCluster) -> None:
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
        await wait_ready(c, name)
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
    finally:
        await c.delete(TenantControlPlane, name, namespace=NS)
        await c.close()


async def test_delete_removes_objects_and_the_datastore_tenant(
    running_operator: DevCluster,
) -> None:
    c = client(running_operator)
    name = "goner"
    await apply_tcp(c, name, "dev-postgres")
    await wait_ready(c, name)
    status = await tcp_status(c, name)
    schema = status["storage"]["setup"]["schema"]
    settings = driver_settings(running_operator.layout, "postgres")
    driver = open_driver(settings)
    try:
        assert schema in await driver.list_tenants()
        await c.delete(TenantControlPlane, name, namespace=NS)

        async def gone() -> bool:
            try:
                await c.get(TenantControlPlane, name, namespace=NS)
            except ApiError as e:
                return e.status.code == 404
            return False

        await eventually(gone, 60, "the TenantControlPlane to be finalized")
        assert schema not in await driver.list_tenants()
        with pytest.raises(DataStoreError, match="does not exist"):
            await driver.usage(Tenant(schema, schema, "x"))

        async def owned_gone() -> bool:
            left = [s.metadata.name async for s in c.list(
                Secret, namespace=NS, labels={"haku.dev/tenant-control-plane": name})]
            left += [d.metadata.name async for d in c.list(
                Deployment, namespace=NS, labels={"haku.dev/tenant-control-plane": name})]
            return not left

        await eventually(owned_gone, 60, "owned Secrets and Deployment to be collected")
    finally:
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


async def test_load_balancer_waits_for_an_address_then_uses_it(
    running_operator: DevCluster,
) -> None:
    c = client(running_operator)
    name = "lb"
    try:
        await apply_tcp(c, name, "dev-etcd", controlPlane={
            "deployment": {"replicas": 1}, "service": {"serviceType": "LoadBalancer"}})

        async def waiting() -> bool:
            found = await condition(c, name, "ControlPlaneAvailable")
            return bool(found and found["reason"] == "WaitingForLoadBalancer")

        await eventually(waiting, 30, "WaitingForLoadBalancer")
        # Act as a cloud controller: give the Service an address (its own ClusterIP, which
        # kube-proxy serves here, so the address really leads to the tenant).
        svc = await c.get(Service, name, namespace=NS)
        await c.patch(Service.Status, name, {"status": {"loadBalancer": {"ingress": [
            {"ip": svc.spec.clusterIP}]}}}, namespace=NS, patch_type=PatchType.MERGE)
        await wait_ready(c, name)
        status = await tcp_status(c, name)
        assert status["controlPlaneEndpoint"] == f"{svc.spec.clusterIP}:6443"
    finally:
        await c.delete(TenantControlPlane, name, namespace=NS)
