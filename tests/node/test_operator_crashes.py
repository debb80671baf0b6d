"""Killing the operator at random points while tenants come and go: after a restart it
converges, and nothing is leaked in the admin cluster or the datastore."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import sys
from pathlib import Path

from lightkube import ApiError
from lightkube.codecs import from_dict
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Secret, Service
from lightkube.resources.networking_v1 import Ingress
from lightkube.types import PatchType

from haku.api import conditions
from haku.api.resources import TenantControlPlane
from haku.controller.operator import install_crds
from haku.datastore import Tenant, open_driver
from haku.dev import samples
from haku.dev.cluster import DevCluster
from haku.dev.datastores import driver_settings

from .helpers import client

NS = "crashes"
LABEL = "haku.dev/tenant-control-plane"


def start_operator(cluster: DevCluster, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "haku", "operator", "run",
         f"--kubeconfig={cluster.layout.admin_kubeconfig}", "--key-algorithm=ECDSA-P256",
         "--lease-duration=3", "--no-install-crds"],
        stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def test_operator_killed_at_random_points_converges_without_leaks(
    node_cluster: DevCluster, tmp_path: Path
) -> None:
    rng = random.Random(20261123)  # noqa: S311  (reproducible test schedule)
    c = client(node_cluster)
    await install_crds(c, "haku-system")
    for obj in samples.datastore_objects(node_cluster.layout):
        await c.apply(from_dict(obj), force=True)
    await c.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": NS}}))
    log = tmp_path / "operator.log"
    keep = [f"keep-{i}" for i in range(3)]
    drop = [f"drop-{i}" for i in range(3)]
    driver = open_driver(driver_settings(node_cluster.layout, "etcd"))
    before = set(await driver.list_tenants())
    op = start_operator(node_cluster, log)

    async def leading_and_killed(delay: float) -> None:
        """Wait until this operator leads (so the kill lands in its work), then SIGKILL it."""
        nonlocal op
        start = log.stat().st_size if log.exists() else 0
        deadline = asyncio.get_running_loop().time() + 60
        while "reconciling TenantControlPlanes" not in log.read_bytes()[start:].decode(
                errors="replace"):
            assert op.poll() is None, log.read_text()[-4000:]
            assert asyncio.get_running_loop().time() < deadline, log.read_text()[-4000:]
            await asyncio.sleep(0.1)
        await asyncio.sleep(delay)
        op.send_signal(signal.SIGKILL)
        op.wait()
        op = start_operator(node_cluster, log)

    async def provisioned(name: str) -> str | None:
        obj = (await c.get(TenantControlPlane, name, namespace=NS)).to_dict()
        schema = ((obj.get("status") or {}).get("storage") or {}).get("setup", {}).get("schema")
        return schema if schema and schema in await driver.list_tenants() else None

    try:
        for name in keep + drop:
            await c.apply(from_dict(samples.tenant_control_plane(name, NS, "dev-etcd",
                                                                 "v1.37.2")), force=True)
        # Kills while tenants are being created.
        for _ in range(2):
            await leading_and_killed(rng.uniform(0.2, 3.0))
        # The tenants to drop are in the datastore (so deleting them has work to do) ...
        drop_schemas: list[str] = []
        deadline = asyncio.get_running_loop().time() + 120
        for name in drop:
            while (schema := await provisioned(name)) is None:
                assert asyncio.get_running_loop().time() < deadline, log.read_text()[-4000:]
                await asyncio.sleep(0.5)
            drop_schemas.append(schema)
        # ... deleted while the operator runs, and the operator killed as it finalizes them.
        for name in drop:
            await c.delete(TenantControlPlane, name, namespace=NS)
        await asyncio.sleep(rng.uniform(0.05, 0.5))
        op.send_signal(signal.SIGKILL)
        op.wait()
        op = start_operator(node_cluster, log)
        await leading_and_killed(rng.uniform(0.2, 2.0))

        async def converged() -> bool:
            for name in keep:
                obj = (await c.get(TenantControlPlane, name, namespace=NS)).to_dict()
                ready = conditions.find((obj.get("status") or {}).get("conditions"), "Ready")
                if not ready or ready["status"] != "True":
                    return False
            for name in drop:
                try:
                    await c.get(TenantControlPlane, name, namespace=NS)
                    return False
                except ApiError as e:
                    if e.status.code != 404:
                        raise
            return True

        deadline = asyncio.get_running_loop().time() + 240
        while not await converged():
            assert asyncio.get_running_loop().time() < deadline, log.read_text()[-4000:]
            await asyncio.sleep(1)

        # Nothing of the dropped tenants is left: not in the datastore, not in the cluster.
        schemas = {}
        for name in keep:
            obj = (await c.get(TenantControlPlane, name, namespace=NS)).to_dict()
            schemas[name] = obj["status"]["storage"]["setup"]["schema"]
        assert set(await driver.list_tenants()) - before == set(schemas.values())
        assert not set(drop_schemas) & set(await driver.list_tenants())

        async def leftovers() -> set[str]:
            owners: set[str] = set()
            for kind in (Secret, Deployment, Service, Ingress):
                async for o in c.list(kind, namespace=NS, labels={LABEL: None}):
                    if o.metadata.deletionTimestamp is None:
                        owners.add(o.metadata.labels[LABEL])
            return owners

        for _ in range(60):  # garbage collection of owned objects is asynchronous
            if await leftovers() <= set(keep):
                break
            await asyncio.sleep(1)
        assert await leftovers() == set(keep)
    finally:
        op.send_signal(signal.SIGTERM)
        try:
            op.wait(timeout=30)
        except subprocess.TimeoutExpired:
            op.kill()
        for name in keep + drop:
            with contextlib.suppress(ApiError):
                await c.delete(TenantControlPlane, name, namespace=NS)
        # No operator runs now: finalize by hand what is left (the test's own cleanup).
        for name in keep + drop:
            with contextlib.suppress(ApiError):
                await c.patch(TenantControlPlane, name, {"metadata": {"finalizers": []}},
                              namespace=NS, patch_type=PatchType.MERGE)
        for schema in set(await driver.list_tenants()) - before:
            await driver.delete_tenant(Tenant(schema, schema))
        await driver.close()
        await c.close()
