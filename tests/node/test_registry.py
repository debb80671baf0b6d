"""The dev cluster's registry: ``haku dev up`` runs it on the node IP, containerd on the admin
node and on a dev worker pulls ``registry.k8s.io`` through it, and never anywhere else.

A test image (e2e.test's busybox, ``haku dev conformance images busybox``) is pushed and run
with ``imagePullPolicy: Always``, in the admin cluster and in a tenant whose only node is a dev
worker; each pull is shown to be real: the image was not in that containerd before, it is
afterwards with the digest pushed, and the registry's access log has that node's manifest GET.
An image the registry lacks fails at once with the registry's "not found"."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Pod

from haku.dev import distribution, registry, samples, test_images
from haku.dev import worker as workers
from haku.dev.cluster import DevCluster
from haku.dev.images import BuiltImage, parse_ctr_images
from haku.dev.versions import Versions
from haku.dev.worker_config import worker_paths

from .helpers import add_worker, client, eventually, pod_ready, wait_tenant_ready

NS = "registry-test"
TENANT = "pulls"
PORT = 31455
VERSION = "v1.37.2"
IMAGE = f"{test_images.E2E}/busybox:{test_images.BUSYBOX_TAG}"
MISSING = f"{test_images.E2E}/not-pushed:1.0"


@dataclass
class Setup:
    cluster: DevCluster
    image: BuiltImage
    tenant: Any  # TenantAccess
    worker: workers.Worker


def images_in(socket: Path) -> dict[str, str]:
    listed = subprocess.run(["ctr", "--address", str(socket), "--namespace", "k8s.io",
                             "images", "ls"], capture_output=True, text=True, check=True,
                            timeout=60)
    return parse_ctr_images(listed.stdout)


def manifest_requests(cluster: DevCluster, source: str, image: str = IMAGE,
                      status: int = 200) -> list[str]:
    """Access-log lines of containerd's requests for ``image``'s manifest from ``source`` (an IP
    address): it resolves the tag (HEAD), then fetches the manifest by its digest (GET)."""
    repository, _ = distribution.split_name(image)
    log = cluster.supervisor.log_path(registry.NAME).read_text(errors="replace")
    wanted = re.compile(rf'^{re.escape(source)} .*"(HEAD|GET) /v2/{re.escape(repository)}/'
                        rf'manifests/\S+ HTTP/1\.1" {status} ')
    return [line for line in log.splitlines()
            if wanted.match(line) and '"containerd/' in line]  # not the test's own client


def busybox_pod(name: str, image: str = IMAGE, namespace: str = NS) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "Always",
                "command": ["sh", "-c", "echo pulled; exec sleep 3600"]}]}}


async def run_pod(c: AsyncClient, doc: dict[str, Any], timeout: float = 120) -> Pod:
    await c.create(from_dict(doc))
    name, namespace = doc["metadata"]["name"], doc["metadata"]["namespace"]
    got: list[Pod] = []

    async def ready() -> bool:
        got[:] = [await c.get(Pod, name, namespace=namespace)]
        return pod_ready(got[0])

    try:
        await eventually(ready, timeout, f"pod {name} Ready")
    except AssertionError:
        raise AssertionError(f"pod {name}: {got[0].status if got else None}") from None
    return got[0]


@pytest.fixture(scope="module")
async def setup(running_operator: DevCluster) -> AsyncIterator[Setup]:
    """The image built (cached) and pushed; a tenant with one dev worker."""
    cluster = running_operator
    built = await asyncio.to_thread(test_images.build, ["busybox"], Versions())
    image = next(b for b, _ in built if b.name == IMAGE)
    pushed = await asyncio.to_thread(test_images.push, [(image, [])],
                                     cluster.layout.registry_endpoint)
    assert pushed[0].digest == image.digest
    c = client(cluster)  # the namespace NS is running_operator's
    try:
        doc = samples.tenant_control_plane(TENANT, NS, "dev-etcd", VERSION,
                                           service_type="NodePort", port=PORT, addons=True)
        await c.apply(from_dict(doc), force=True)
        tenant = await wait_tenant_ready(c, NS, TENANT)
    finally:
        await c.close()
    try:
        worker = (await add_worker(cluster, tenant)).worker
        yield Setup(cluster, image, tenant, worker)
    finally:
        await asyncio.to_thread(workers.remove_all, cluster.layout)
        c = client(cluster)
        try:
            async for pod in c.list(Pod, namespace=NS):
                if pod.metadata and pod.metadata.name and pod.metadata.name.startswith("pull-"):
                    await c.delete(Pod, pod.metadata.name, namespace=NS)
        finally:
            await c.close()


def test_the_registry_runs_on_the_node_ip_and_containerd_is_pointed_at_it(
        setup: Setup) -> None:
    lay = setup.cluster.layout
    info = setup.cluster.status()
    assert info["components"][registry.NAME]["running"]
    assert info["registry"]["ready"] and info["registry"]["endpoint"] == "10.245.0.1:5000"
    for hosts_dir in (lay.containerd_hosts_dir,
                      worker_paths(lay, setup.worker.index).containerd_hosts_dir):
        for upstream in registry.MIRRORED:
            text = (hosts_dir / upstream / "hosts.toml").read_text()
            assert f'server = "http://10.245.0.1:5000/v2/{upstream}"' in text
    client_ = distribution.Client(lay.registry_endpoint)
    assert client_.manifest_digest(*distribution.split_name(IMAGE)) == setup.image.digest
    assert not registry.ready(f"127.0.0.1:{lay.ports.registry}")  # the node IP only


async def test_the_admin_node_pulls_through_the_registry(setup: Setup) -> None:
    lay = setup.cluster.layout
    assert IMAGE not in images_in(lay.containerd_socket)
    before = len(manifest_requests(setup.cluster, lay.node_ip))
    c = client(setup.cluster)
    try:
        pod = await run_pod(c, busybox_pod("pull-admin"))
    finally:
        await c.close()
    assert pod.status and pod.status.containerStatuses
    assert pod.status.containerStatuses[0].imageID.endswith(setup.image.digest)
    assert images_in(lay.containerd_socket)[IMAGE] == setup.image.digest
    assert len(manifest_requests(setup.cluster, lay.node_ip)) > before


async def test_a_dev_worker_pulls_through_the_registry(setup: Setup) -> None:
    lay = setup.cluster.layout
    socket = worker_paths(lay, setup.worker.index).containerd_socket
    assert IMAGE not in images_in(socket)
    t = setup.tenant.client()
    try:  # "default": its ServiceAccount is there by now
        pod = await run_pod(t, busybox_pod("pull-worker", namespace="default"))
    finally:
        await t.close()
    assert pod.spec and pod.spec.nodeName == setup.worker.node_name
    assert images_in(socket)[IMAGE] == setup.image.digest
    assert manifest_requests(setup.cluster, setup.worker.address), \
        f"no manifest GET from {setup.worker.address} in the registry's log"


async def test_an_image_the_registry_lacks_fails_at_once_and_never_goes_upstream(
        setup: Setup) -> None:
    c = client(setup.cluster)
    reasons: list[str] = []
    try:
        await c.create(from_dict(busybox_pod("pull-missing", MISSING)))

        async def failed() -> bool:
            pod = await c.get(Pod, "pull-missing", namespace=NS)
            for s in (pod.status.containerStatuses if pod.status else None) or []:
                waiting = s.state.waiting if s.state else None
                if waiting and waiting.reason in ("ErrImagePull", "ImagePullBackOff"):
                    reasons[:] = [waiting.message or ""]
                    return True
            return False

        await eventually(failed, 60, "pull-missing to fail its pull")
    finally:
        await c.delete(Pod, "pull-missing", namespace=NS)
        await c.close()
    message = reasons[0]
    assert "not found" in message, message
    # asked of the local registry (404), never of a host it would have to resolve or dial
    assert manifest_requests(setup.cluster, setup.cluster.layout.node_ip, MISSING, 404)
    assert "no such host" not in message and "dial tcp" not in message, message
