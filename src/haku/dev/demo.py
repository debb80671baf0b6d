"""``make demo``: the local admin cluster, the operator, and a ready tenant to use."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Secret

from haku.api import conditions
from haku.api.resources import TenantControlPlane
from haku.dev import images, operator_image, samples, worker
from haku.dev.cluster import OPERATOR, DevCluster, DevClusterError
from haku.dev.layout import Layout

TENANT, NAMESPACE = "demo", "tenants"
NAMESPACE_OPERATOR = "haku-system"
PORT = 31443  # the demo tenant's NodePort, where its worker joins it


def deploy_operator(cluster: DevCluster, out: Any = print, timeout: float = 180.0) -> str:
    """The operator in-cluster as a platform team installs it: the image Haku builds,
    imported into the node's containerd, then ``kubectl apply -k deploy/``; waits until both
    replicas are ready. Returns the leader's identity."""
    lay = cluster.layout
    kustomization = operator_image.find_project() / "deploy"
    if not (kustomization / "kustomization.yaml").is_file():
        raise DevClusterError(f"{kustomization}/kustomization.yaml is missing: run the demo "
                              "from a source checkout")
    archive, name = operator_image.build_operator_image(printer=out)
    imported = images.import_images([operator_image.built_image(archive, name)],
                                    lay.containerd_socket)
    kubectl = [str(lay.bin / "kubectl"), f"--kubeconfig={lay.admin_kubeconfig}"]
    applied = subprocess.run([*kubectl, "apply", "-k", str(kustomization)],
                             capture_output=True, text=True, check=False, timeout=120)
    if applied.returncode != 0:
        raise DevClusterError(f"kubectl apply -k {kustomization} failed: "
                              f"{applied.stderr.strip()}")
    out(f"kubectl apply -k {kustomization}: "
        f"{len(applied.stdout.splitlines())} objects")
    if imported:  # a new image under the same tag: running pods would keep the old one
        subprocess.run([*kubectl, "-n", NAMESPACE_OPERATOR, "rollout", "restart",
                        "deployment/haku-operator"], capture_output=True, check=True,
                       timeout=60)
    return asyncio.run(_wait_operator(cluster, out, timeout))


def rolled_out(d: Deployment) -> bool:
    """Deployment ``d`` runs only pods of its current template, all ready, none more."""
    st = d.status
    want = d.spec.replicas if d.spec and d.spec.replicas is not None else 1
    generation = d.metadata.generation if d.metadata else None
    return bool(st and st.observedGeneration == generation and
                (st.updatedReplicas or 0) == want == (st.readyReplicas or 0) and
                not st.unavailableReplicas and (st.replicas or 0) == want)


async def _wait_operator(cluster: DevCluster, out: Any, timeout: float) -> str:
    client = AsyncClient(KubeConfig.from_file(cluster.layout.admin_kubeconfig),
                         field_manager="haku-demo", trust_env=False)
    started, last = time.monotonic(), ""
    try:
        while True:
            try:
                d = await client.get(Deployment, "haku-operator", namespace=NAMESPACE_OPERATOR)
                st = d.status
                want = d.spec.replicas if d.spec and d.spec.replicas is not None else 1
                line = (f"{st.updatedReplicas or 0} of {want} updated, "
                        f"{st.readyReplicas or 0} ready" if st else "no status yet")
                done = rolled_out(d)
            except ApiError as e:
                line, done = f"not there yet ({e.status.message})", False
            if line != last:
                out(f"  {time.monotonic() - started:5.1f}s  operator pods: {line}")
                last = line
            if done:
                lease = await client.get(Lease, "haku-operator", namespace=NAMESPACE_OPERATOR)
                holder = lease.spec.holderIdentity if lease.spec else None
                if holder:
                    return holder
            if time.monotonic() - started > timeout:
                raise DevClusterError(
                    f"the in-cluster operator is not ready after {timeout:.0f}s ({last}); "
                    f"see: kubectl -n {NAMESPACE_OPERATOR} describe pods")
            await asyncio.sleep(0.5)
    finally:
        await client.close()


async def wait_condition(client: AsyncClient, namespace: str, name: str, ctype: str,
                         timeout: float, out: Any = print) -> dict[str, Any]:
    """Wait until TenantControlPlane ``namespace/name`` has condition ``ctype`` True, printing
    each change of it; returns the status. TimeoutError says the last one seen."""
    started, last = time.monotonic(), ""
    while True:
        try:
            got = await client.get(TenantControlPlane, name, namespace=namespace)
            status = got.to_dict().get("status") or {}  # type: ignore[no-untyped-call]
        except ApiError:
            status = {}
        cond = conditions.find(status.get("conditions"), ctype)
        line = (f"{cond['status']} ({cond['reason']}: {cond['message']})" if cond
                else "waiting for the operator")
        if line != last:
            out(f"  {time.monotonic() - started:5.1f}s  {ctype}={line}")
            last = line
        if cond and cond["status"] == "True":
            return status
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"tenant {namespace}/{name}: {ctype} not True after "
                               f"{timeout:.0f}s: {last}")
        await asyncio.sleep(0.5)


async def save_admin_kubeconfig(client: AsyncClient, layout: Layout, namespace: str, name: str,
                                status: dict[str, Any]) -> Path:
    """The tenant's admin kubeconfig (the Secret its status names), written 0600 to
    ``<state>/tenants/<name>.kubeconfig``."""
    secret = await client.get(Secret, status["kubeconfig"]["admin"]["secretName"],
                              namespace=namespace)
    path = layout.state_dir / "tenants" / f"{name}.kubeconfig"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(base64.b64decode((secret.data or {})["admin.conf"]))
    path.chmod(0o600)
    return path


async def _apply_and_wait(cluster: DevCluster, out: Any, timeout: float) -> Path:
    lay = cluster.layout
    client = AsyncClient(KubeConfig.from_file(lay.admin_kubeconfig), field_manager="haku-demo",
                         trust_env=False)
    try:
        for obj in samples.datastore_objects(lay):
            await client.apply(from_dict(obj), force=True)
        await client.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": NAMESPACE}}), force=True)
        await client.apply(from_dict(samples.tenant_control_plane(
            TENANT, NAMESPACE, samples.DATASTORE_NAMES["etcd"], cluster.versions.kubernetes,
            service_type="NodePort", port=PORT, addons=True)), force=True)
        try:
            status = await wait_condition(client, NAMESPACE, TENANT, "Ready", timeout, out)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; see {lay.logs / (OPERATOR + '.log')}") from None
        return await save_admin_kubeconfig(client, lay, NAMESPACE, TENANT, status)
    finally:
        await client.close()


def join_worker(cluster: DevCluster, out: Any = print) -> str:
    """A worker joined to the demo tenant (the one there already, if Ready); its Node name."""
    tenant = f"{NAMESPACE}/{TENANT}"
    for w in worker.list_workers(cluster.layout):
        if w.tenant == tenant and w.state == "ready":
            out(f"worker {w.name} (node {w.node_name}) already joined {tenant}")
            return w.node_name
    join = asyncio.run(worker.tenant_join(cluster.layout.admin_kubeconfig, tenant))
    # Nodes of the demo's earlier workers, gone with an earlier `haku dev down`.
    stale = sorted(n for n in join.nodes if re.fullmatch(rf"{TENANT}-w\d+", n))
    for node in stale:
        said = worker.delete_node(cluster.layout.bin / "kubectl", join.kubeconfig, node)
        out(f"node {node} of an earlier demo worker: {said}")
    result = worker.add(cluster.layout, tenant, join.join, versions=cluster.versions,
                        printer=out, avoid_nodes=join.nodes - set(stale))
    return result.worker.node_name


def run(cluster: DevCluster, out: Any = print, timeout: float = 180.0) -> tuple[Path, str]:
    """Cluster up, operator running, sample DataStores, a TenantControlPlane Ready and a
    worker joined to it; returns the tenant's admin kubeconfig path and the worker's Node."""
    cluster.up()
    cluster.supervisor.stop(OPERATOR)  # an earlier demo's host process, if any
    leader = deploy_operator(cluster, out)
    out(f"operator: in-cluster in {NAMESPACE_OPERATOR}, leader {leader}")
    out(f"TenantControlPlane {NAMESPACE}/{TENANT} on DataStore dev-etcd, NodePort {PORT}, "
        "with CoreDNS and kube-proxy:")
    kubeconfig = asyncio.run(_apply_and_wait(cluster, out, timeout))
    return kubeconfig, join_worker(cluster, out)
