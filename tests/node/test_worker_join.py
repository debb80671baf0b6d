"""Tenant clusters that nodes join: a real worker (own netns, containerd, kubelet) joins a
tenant with the real ``kubeadm join``; kube-proxy and CoreDNS run on it; a pod resolves and
reaches the tenant API; the tenant holds nothing of the admin cluster; tenants stay apart;
Haku repairs what it installed; an expired token is refused; a PostgreSQL tenant joins too."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.resources.apps_v1 import DaemonSet, Deployment
from lightkube.resources.core_v1 import ConfigMap, Node, Pod, Secret
from lightkube.types import PatchType

from haku.api.resources import TenantControlPlane
from haku.dev import config, samples
from haku.dev import worker as workers
from haku.dev.cluster import DevCluster
from haku.dev.versions import BUSYBOX_IMAGE
from haku.dev.worker_config import VM_KUBELET_KEYS, Timeouts, WorkerError, worker_paths
from haku.render import jsonpatch
from haku.tenant import access
from haku.tenant.access import TenantAccess

from .helpers import add_worker, client, eventually, kubectl, pod_ready, wait_tenant_ready

NS = "joins"
VERSION = "v1.37.2"
ETCD_PORT, POSTGRES_PORT = 31443, 31444
MAX_PODS = {"op": "add", "path": "/maxPods", "value": 77}


@dataclass
class Joined:
    cluster: DevCluster
    tenant: TenantAccess
    node: str
    worker: str


async def ready_tenant(cluster: DevCluster, name: str, datastore: str, port: int,
                       kubelet_patches: list[dict[str, Any]] | None = None) -> TenantAccess:
    """A NodePort tenant with both addons, once Ready (which includes TenantBootstrapped);
    its kubelets get this machine's needs (as every sample tenant) and ``kubelet_patches``."""
    c = client(cluster)
    try:
        doc = samples.tenant_control_plane(name, NS, datastore, VERSION, service_type="NodePort",
                                           port=port, addons=True,
                                           kubelet_patches=kubelet_patches or [])
        await c.apply(from_dict(doc), force=True)
        return await wait_tenant_ready(c, NS, name)
    finally:
        await c.close()


@pytest.fixture(scope="module")
async def joined(running_operator: DevCluster) -> AsyncIterator[Joined]:
    """Tenant ``join-etcd`` on the etcd DataStore, serving kubelets ``maxPods: 77`` besides
    this machine's needs, with a worker joined to it."""
    cluster = running_operator
    tenant = await ready_tenant(cluster, "join-etcd", "dev-etcd", ETCD_PORT, [MAX_PODS])
    try:
        result = await add_worker(cluster, tenant)
        yield Joined(cluster, tenant, result.worker.node_name, result.worker.name)
    finally:
        await asyncio.to_thread(workers.remove_all, cluster.layout)


async def node_ready(tenant: AsyncClient, name: str) -> bool:
    try:
        node = await tenant.get(Node, name)
    except ApiError:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


async def pods_on(tenant: AsyncClient, node: str, selector: dict[str, str]) -> list[Pod]:
    return [p async for p in tenant.list(Pod, namespace="kube-system", labels=selector,
                                         fields={"spec.nodeName": node})]


async def wait_addons(joined: Joined) -> None:
    t = joined.tenant.client()
    try:
        async def addons_running() -> bool:
            proxies = await pods_on(t, joined.node, {"k8s-app": "kube-proxy"})
            dns = await pods_on(t, joined.node, {"k8s-app": "kube-dns"})
            return len(proxies) == 1 and len(dns) == 2 and all(map(pod_ready, proxies + dns))

        await eventually(addons_running, 180, "kube-proxy and both CoreDNS pods Ready on "
                         f"{joined.node}")
    finally:
        await t.close()


async def test_the_node_is_ready_with_kube_proxy_and_coredns_on_it(joined: Joined) -> None:
    t = joined.tenant.client()
    try:
        assert await node_ready(t, joined.node)
    finally:
        await t.close()
    await wait_addons(joined)


def served_kubelet_configuration(max_pods: int = 77) -> dict[str, Any]:
    """What join-etcd must serve: kubeadm's KubeletConfiguration for it, cgroupDriver from
    ``cgroupfs: cgroupfs``, then the dev patches and ``maxPods``, in that order."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {"anonymous": {"enabled": False},
                           "webhook": {"enabled": True, "cacheTTL": "0s"},
                           "x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"}},
        "authorization": {"mode": "Webhook", "webhook": {"cacheAuthorizedTTL": "0s",
                                                         "cacheUnauthorizedTTL": "0s"}},
        "cgroupDriver": "cgroupfs",
        "clusterDNS": ["10.96.0.10"],
        "clusterDomain": "cluster.local",
        "rotateCertificates": True,
        "staticPodPath": "/etc/kubernetes/manifests",
        "failCgroupV1": False,
        "failSwapOn": False,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "maxPods": max_pods,
    }


async def served_kubelet_text(tenant: AsyncClient) -> str:
    cm = await tenant.get(ConfigMap, "kubelet-config", namespace="kube-system")
    text: str = (cm.data or {})["kubelet"]
    return text


async def test_the_tenant_serves_its_kubelet_configuration_and_the_worker_runs_it_unmodified(
        joined: Joined, tmp_path: Path) -> None:
    """spec.kubernetes.kubelet (cgroupfs and JSON patches) is exactly what the tenant serves;
    the worker's kubelet runs the file kubeadm downloaded as its --config, untouched, with
    only the worker's placement in a drop-in; the Node and the kubelet's own /configz show
    the patched values."""
    t = joined.tenant.client()
    try:
        served_text = await served_kubelet_text(t)
        node = await t.get(Node, joined.node)
    finally:
        await t.close()
    served = yaml.safe_load(served_text)
    assert served == served_kubelet_configuration()
    assert list(served) == list(served_kubelet_configuration())  # patches in their order

    layout = joined.cluster.layout
    index = int(joined.worker.removeprefix("w"))
    paths = worker_paths(layout, index)
    record = workers.load(layout, index)
    assert record is not None
    argv = [a.decode() for a in
            Path(f"/proc/{record.pids['kubelet']}/cmdline").read_bytes().split(b"\0") if a]
    assert [a for a in argv if a.startswith("--config")] == [
        f"--config={paths.downloaded_kubelet_config}",
        f"--config-dir={paths.kubelet_config_dir}"]
    # --config is the file kubeadm wrote: the worker wrote nothing to it (kubeadm writes
    # kubeadm-flags.env after it, in the same phase)
    written_text = paths.downloaded_kubelet_config.read_text()
    assert paths.downloaded_kubelet_config.stat().st_mtime_ns <= \
        paths.kubeadm_flags.stat().st_mtime_ns
    print(f"--- served (kube-system/kubelet-config)\n{served_text}"
          f"--- {paths.downloaded_kubelet_config}\n{written_text}")
    # kubeadm writes its own serialisation of what it downloaded: every served value is in it
    # as served; what it adds is containerRuntimeEndpoint (the join's criSocket) and the
    # zero values of the fields the tenant left out
    written = yaml.safe_load(written_text)
    differ = {k: (v, written.get(k)) for k, v in served.items()
              if not jsonpatch.equal(written.get(k), v)}
    assert differ == {}
    assert written["containerRuntimeEndpoint"] == f"unix://{paths.containerd_socket}"
    # the drop-in: the worker's places, none of the served keys but those
    assert sorted(p.name for p in paths.kubelet_config_dir.iterdir()) == [
        paths.kubelet_dropin.name]
    dropin = yaml.safe_load(paths.kubelet_dropin.read_text())
    assert not set(dropin) & set(VM_KUBELET_KEYS) and "maxPods" not in dropin
    assert set(dropin) & set(served) <= {"apiVersion", "kind", "authentication",
                                         "staticPodPath"}
    assert dropin["authentication"] == {"x509": {"clientCAFile": str(paths.ca)}}

    assert node.status.capacity["pods"] == "77"
    result = await asyncio.to_thread(
        kubectl, joined.cluster, "get", "--raw", f"/api/v1/nodes/{joined.node}/proxy/configz",
        kubeconfig=_write_kubeconfig(joined.tenant, tmp_path / "join-etcd.kubeconfig"))
    effective = json.loads(result.stdout)["kubeletconfig"]
    # what the tenant asked for, as the kubelet runs it (kubeadm's 0s durations are the
    # kubelet's defaults, shown as such there)
    for key in (*VM_KUBELET_KEYS, "maxPods", "clusterDNS", "clusterDomain"):
        assert jsonpatch.equal(effective[key], served[key]), (key, effective[key], served[key])
    assert effective["cgroupRoot"] == f"/haku-w{index}"  # and the drop-in's placement
    assert effective["staticPodPath"] == dropin["staticPodPath"]
    assert effective["authentication"]["x509"]["clientCAFile"] == str(paths.ca)


def _write_kubeconfig(tenant: TenantAccess, path: Path) -> Path:
    path.write_text(yaml.safe_dump(tenant.kubeconfig))
    path.chmod(0o600)
    return path


async def test_changed_kubelet_patches_are_served_and_one_that_fails_is_invalid_spec(
        joined: Joined) -> None:
    """A new patch list is served on the next reconcile; one that cannot apply leaves what
    was served and says which patch and why on TenantBootstrapped (InvalidSpec); a tenant
    serving kubeadm's defaults gets no dev worker, and the error says what to set."""
    c = client(joined.cluster)
    t = joined.tenant.client()
    name = joined.tenant.name
    dev = config.kubelet_patches()

    async def set_kubelet(patches: list[dict[str, Any]], cgroupfs: str | None = "cgroupfs",
                          ) -> None:
        await c.patch(TenantControlPlane, name, {"spec": {"kubernetes": {"kubelet": {
            "cgroupfs": cgroupfs, "configurationJSONPatches": patches}}}},
            namespace=NS, patch_type=PatchType.MERGE)

    async def condition(ctype: str) -> dict[str, Any]:
        obj = (await c.get(TenantControlPlane, name, namespace=NS)).to_dict()
        return next((x for x in (obj.get("status") or {}).get("conditions") or []
                     if x["type"] == ctype), {})

    async def served() -> dict[str, Any]:
        doc: dict[str, Any] = yaml.safe_load(await served_kubelet_text(t))
        return doc

    async def serves(max_pods: int) -> bool:
        return await served() == served_kubelet_configuration(max_pods)

    try:
        await set_kubelet([*dev, {**MAX_PODS, "value": 78}])
        await eventually(lambda: serves(78), 60, "maxPods 78 served")

        failing = {"op": "test", "path": "/maxPods", "value": 1}
        await set_kubelet([*dev, {**MAX_PODS, "value": 79}, failing])

        async def refused() -> bool:
            return (await condition("TenantBootstrapped")).get("reason") == "InvalidSpec"

        await eventually(refused, 60, "TenantBootstrapped InvalidSpec")
        said = (await condition("TenantBootstrapped"))["message"]
        assert said.startswith(
            f"spec.kubernetes.kubelet.configurationJSONPatches[{len(dev) + 1}]: test '/maxPods'"
            ": test failed: /maxPods is 79, not 1"), said
        assert (await condition("Ready"))["status"] == "False"
        assert await serves(78)  # all or nothing: 79 was not served either

        # kubeadm's defaults (systemd, no patches) but maxPods: a dev worker cannot run that
        await set_kubelet([MAX_PODS], cgroupfs=None)

        async def kubeadms() -> bool:
            return (await served()).get("cgroupDriver") == "systemd"

        await eventually(kubeadms, 60, "cgroupDriver systemd served")
        join = await access.create_join_command(joined.tenant, timedelta(minutes=5))
        with pytest.raises(WorkerError) as info:
            await asyncio.to_thread(
                workers.add, joined.cluster.layout, f"{NS}/{name}", join,
                printer=lambda line: print(line, flush=True))
        message = str(info.value)
        assert message.startswith(
            f"tenant {NS}/{name} serves a KubeletConfiguration (kube-system/kubelet-config) "
            'that a kubelet cannot run with on this machine: cgroupDriver is "systemd" (this '
            'machine needs "cgroupfs"); failCgroupV1 is unset'), message
        assert json.dumps(config.tenant_kubelet_settings(), separators=(",", ":")) in message
        assert [w.name for w in workers.list_workers(joined.cluster.layout)] == [joined.worker]
    finally:
        await set_kubelet([*dev, MAX_PODS])
        await eventually(lambda: serves(77), 60, "maxPods 77 served again")
        await wait_tenant_ready(c, NS, name)
        await t.close()
        await c.close()


async def test_a_pod_resolves_kubernetes_default_and_reaches_the_api_by_cluster_ip(
        joined: Joined) -> None:
    t = joined.tenant.client()
    script = (
        "set -e\n"
        "nslookup kubernetes.default.svc.cluster.local\n"
        # Through kube-proxy's DNAT to the tenant API server. busybox's own TLS client
        # crashes on the API server's handshake, so plain HTTP is sent to the HTTPS port:
        # Go's TLS server answers that with a message of its own.
        "printf 'GET /version HTTP/1.0\\r\\n\\r\\n' | nc -w 10 10.96.0.1 443\n"
    )
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "probe", "namespace": "default"},
           "spec": {"restartPolicy": "Never", "nodeName": joined.node,
                    "containers": [{"name": "probe", "image": BUSYBOX_IMAGE,
                                    "imagePullPolicy": "Never",
                                    "command": ["sh", "-c", script]}]}}
    try:
        async def dns_ready() -> bool:
            dns = await pods_on(t, joined.node, {"k8s-app": "kube-dns"})
            return bool(dns) and any(map(pod_ready, dns))

        await eventually(dns_ready, 180, "a CoreDNS pod Ready")
        await t.apply(from_dict(pod), force=True)

        async def finished() -> bool:
            got = await t.get(Pod, "probe", namespace="default")
            return got.status is not None and got.status.phase in ("Succeeded", "Failed")

        await eventually(finished, 120, "the probe pod to finish")
        got = await t.get(Pod, "probe", namespace="default")
        logs = "".join([line async for line in t.log("probe", namespace="default")])
        assert got.status.phase == "Succeeded", logs
        assert "Name:\tkubernetes.default.svc.cluster.local\nAddress: 10.96.0.1" in logs, logs
        assert "Client sent an HTTP request to an HTTPS server" in logs, logs
    finally:
        with contextlib.suppress(ApiError):
            await t.delete(Pod, "probe", namespace="default", grace_period=0)
        await t.close()


def _pem_body(pem: bytes) -> bytes:
    return b"".join(pem.strip().splitlines()[1:-1])


async def test_the_tenant_and_its_worker_hold_no_admin_cluster_credential(
        joined: Joined) -> None:
    pki = joined.cluster.layout.pki
    admin_ca = _pem_body((pki / "ca.crt").read_bytes())
    admin_doc = joined.cluster.layout.admin_kubeconfig.read_text()
    admin_client_cert = base64.b64decode(
        admin_doc.split("client-certificate-data:")[1].split()[0])
    needles = {"admin CA": admin_ca, "admin client cert": _pem_body(admin_client_cert)}
    t = joined.tenant.client()
    try:
        blobs: list[tuple[str, bytes]] = []
        async for s in t.list(Secret, namespace="*"):
            for k, v in (s.data or {}).items():
                blobs.append((f"Secret {s.metadata.namespace}/{s.metadata.name}[{k}]",
                              base64.b64decode(v)))
        async for cm in t.list(ConfigMap, namespace="*"):
            for k, text in (cm.data or {}).items():
                blobs.append((f"ConfigMap {cm.metadata.namespace}/{cm.metadata.name}[{k}]",
                              text.encode()))
    finally:
        await t.close()
    assert len(blobs) > 5  # the scan saw the tenant's objects
    root = worker_paths(joined.cluster.layout, int(joined.worker.removeprefix("w"))).root
    files = [p for p in root.rglob("*") if p.is_file() and p.stat().st_size < 1 << 20
             and "containerd" not in p.parts]
    assert any(p.name == "kubelet.conf" for p in files), [str(p) for p in files][:20]
    for p in files:
        try:
            data = p.read_bytes()
        except FileNotFoundError:  # a pod's volume torn down while we looked: nothing to scan
            continue
        blobs.append((str(p), data))
        for word in data.split():  # kubeconfigs carry certificates base64-encoded
            if len(word) > 200:
                with contextlib.suppress(ValueError):
                    blobs.append((f"{p} (decoded)", base64.b64decode(word, validate=True)))
    for what, needle in needles.items():
        found = [where for where, blob in blobs if needle in blob.replace(b"\n", b"")]
        assert not found, f"the {what} is in {found}"


async def test_the_worker_runs_only_tenant_pods(joined: Joined) -> None:
    await wait_addons(joined)
    layout = joined.cluster.layout
    socket = worker_paths(layout, int(joined.worker.removeprefix("w"))).containerd_socket
    # Running tasks only: a container of a deleted pod waits for the kubelet's GC, stopped.
    listed = subprocess.run(["ctr", "--address", str(socket), "-n", "k8s.io", "tasks", "ls"],
                            capture_output=True, text=True, check=True)
    ids = [line.split()[0] for line in listed.stdout.splitlines()[1:]
           if line.split()[-1] == "RUNNING"]
    assert ids, "the worker's containerd runs no container"
    uids = set()
    coredns_users = []
    for cid in ids:
        info = json.loads(subprocess.run(
            ["ctr", "--address", str(socket), "-n", "k8s.io", "containers", "info", cid],
            capture_output=True, text=True, check=True).stdout)
        uids.add(info["Labels"]["io.kubernetes.pod.uid"])
        if info["Labels"].get("io.kubernetes.container.name") == "coredns":
            coredns_users.append(info["Spec"]["process"]["user"]["uid"])
    # CoreDNS runs as upstream's non-root user (binding :53 through unprivileged ports).
    assert coredns_users and set(coredns_users) == {65532}
    t = joined.tenant.client()
    admin = client(joined.cluster)
    try:
        tenant_uids = {p.metadata.uid async for p in t.list(Pod, namespace="*",
                                                            fields={"spec.nodeName": joined.node})}
        admin_uids = {p.metadata.uid async for p in admin.list(Pod, namespace="*")}
    finally:
        await t.close()
        await admin.close()
    assert uids <= tenant_uids, f"containers of pods the tenant does not know: {uids - tenant_uids}"
    assert not uids & admin_uids


def _status(endpoint: str, path: str, *, cert: tuple[Path, Path] | None = None,
            token: str | None = None) -> int:
    """The HTTP status ``endpoint`` (host:port) answers for ``path``, presenting a client
    certificate or a bearer token; the server's certificate is not checked (any CA)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(*cert)
    host, _, port = endpoint.rpartition(":")
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        return conn.getresponse().status
    finally:
        conn.close()


def _client_cert(doc: dict[str, Any], files: Path) -> tuple[Path, Path]:
    user = doc["users"][0]["user"]
    files.mkdir(parents=True, exist_ok=True)
    (files / "c.crt").write_bytes(base64.b64decode(user["client-certificate-data"]))
    (files / "c.key").write_bytes(base64.b64decode(user["client-key-data"]))
    return files / "c.crt", files / "c.key"


async def test_an_expired_token_is_refused_by_kubeadm_join(joined: Joined) -> None:
    expired = await access.create_join_command(
        joined.tenant, timedelta(minutes=5), now=datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(WorkerError) as refused:
        await asyncio.to_thread(
            workers.add, joined.cluster.layout, f"{NS}/{joined.tenant.name}", expired,
            timeouts=Timeouts(token_signed=2.0), printer=lambda line: print(line, flush=True))
    message = str(refused.value)
    assert "kubeadm join failed" in message, message
    assert expired.token.split(".")[0] in message, message  # kubeadm names the token it refuses
    assert [w.name for w in workers.list_workers(joined.cluster.layout)] == [joined.worker]


async def test_deleted_coredns_and_cluster_info_config_maps_are_put_back(joined: Joined) -> None:
    t = joined.tenant.client()
    try:
        for ns, name in (("kube-system", "coredns"), ("kube-public", "cluster-info")):
            old = await t.get(ConfigMap, name, namespace=ns)
            await t.delete(ConfigMap, name, namespace=ns)

            async def back(ns: str = ns, name: str = name, uid: str = old.metadata.uid) -> bool:
                try:
                    got = await t.get(ConfigMap, name, namespace=ns)
                except ApiError:
                    return False
                return got.metadata.uid != uid

            await eventually(back, 60, f"{ns}/{name} to be recreated")
        # cluster-info is signed again for live tokens, so the next join can discover.
        join = await access.create_join_command(joined.tenant, timedelta(minutes=5))
        signed = await asyncio.to_thread(workers.wait_token_signed, join.endpoint, join.token,
                                         60.0)
        assert signed, "the recreated cluster-info is not signed for a new token"
    finally:
        await t.close()


async def test_removing_an_addon_from_the_spec_removes_only_its_objects(joined: Joined) -> None:
    name = joined.tenant.name
    c = client(joined.cluster)
    t = joined.tenant.client()

    async def addons_status() -> dict[str, Any]:
        obj = (await c.get(TenantControlPlane, name, namespace=NS)).to_dict()
        return dict((obj.get("status") or {}).get("addons") or {})

    async def coredns_present() -> bool:
        return bool([d async for d in t.list(Deployment, namespace="kube-system",
                                             labels={"k8s-app": "kube-dns"})])
    try:
        await t.apply(from_dict({"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": "mine", "namespace": "kube-system"},
                                 "data": {"k": "v"}}))
        await c.patch(TenantControlPlane, name, [{"op": "remove", "path": "/spec/addons/coreDNS"}],
                      namespace=NS, patch_type=PatchType.JSON)

        async def removed() -> bool:
            status = await addons_status()
            return status.get("coreDNS") == {"enabled": False} and not await coredns_present()

        await eventually(removed, 60, "CoreDNS removed from the tenant")
        assert (await addons_status())["kubeProxy"] == {"enabled": True}
        await t.get(DaemonSet, "kube-proxy", namespace="kube-system")  # still there
        await t.get(ConfigMap, "mine", namespace="kube-system")  # not Haku's: left alone
        with pytest.raises(ApiError):
            await t.get(ConfigMap, "coredns", namespace="kube-system")

        await c.patch(TenantControlPlane, name, {"spec": {"addons": {"coreDNS": {}}}},
                      namespace=NS, patch_type=PatchType.MERGE)

        async def back() -> bool:
            return (await addons_status()).get("coreDNS") == {"enabled": True} and \
                await coredns_present()

        await eventually(back, 60, "CoreDNS installed again")
    finally:
        with contextlib.suppress(ApiError):
            await t.delete(ConfigMap, "mine", namespace="kube-system")
        await t.close()
        await c.close()


async def test_a_postgres_tenant_joins_and_tenants_get_nothing_from_each_other(
        joined: Joined, tmp_path: Path) -> None:
    cluster = joined.cluster
    pg = await ready_tenant(cluster, "join-pg", "dev-postgres", POSTGRES_PORT)
    result = await add_worker(cluster, pg)
    t = pg.client()
    try:
        assert await node_ready(t, result.worker.node_name)
        nodes = {n.metadata.name async for n in t.list(Node)}
        assert nodes == {result.worker.node_name}  # not the etcd tenant's node
    finally:
        await t.close()

    # Each tenant's admin certificate is unknown to the other's API server.
    for me, other in ((joined.tenant, pg), (pg, joined.tenant)):
        cert = _client_cert(me.kubeconfig, tmp_path / me.name)
        assert _status(me.endpoint, "/api/v1/namespaces", cert=cert) == 200  # it is valid
        assert _status(other.endpoint, "/api/v1/namespaces", cert=cert) == 401
        assert _status(other.endpoint, "/api/v1/namespaces/kube-system/secrets",
                       cert=cert) == 401
        # and one tenant's bootstrap token is no token at the other
        join = await access.create_join_command(me, timedelta(minutes=5))
        assert _status(me.endpoint, "/api/v1/nodes/x", token=join.token) in (403, 404)
        assert _status(other.endpoint, "/api/v1/nodes/x", token=join.token) == 401
    await asyncio.to_thread(workers.remove, cluster.layout, result.worker.name,
                            tenant_kubeconfig=pg.kubeconfig)
