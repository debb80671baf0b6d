"""``haku dev worker renew-ca`` (issue 14, the node's step of a CA rotation) on a worker of an
ordinary tenant: the kubelet trusts what cluster-info publishes and TLS-bootstraps a new
client certificate, restarted with the same arguments; the Node stays Ready, its pod keeps
running (same container), and the API server still reaches the kubelet (logs). A join command
whose pin no CA of the tenant has is refused before anything changes."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from lightkube.codecs import from_dict
from lightkube.resources.certificates_v1 import CertificateSigningRequest
from lightkube.resources.core_v1 import Node, Pod

from haku.dev import samples, worker_ca
from haku.dev import worker as workers
from haku.dev.cluster import DevCluster
from haku.dev.versions import BUSYBOX_IMAGE
from haku.dev.worker_config import WorkerPaths, node_ready, worker_paths
from haku.tenant import access
from haku.tenant.access import TenantAccess
from haku.tenant.tokens import JoinCommand

from .helpers import add_worker, client, eventually, kubectl, wait_tenant_ready

NS = "renewals"
VERSION = "v1.37.2"
PORT = 31452


@dataclass
class Setup:
    cluster: DevCluster
    tenant: TenantAccess
    worker: workers.Worker
    paths: WorkerPaths


@pytest.fixture(scope="module")
async def setup(running_operator: DevCluster) -> AsyncIterator[Setup]:
    """A NodePort tenant (no rotation: one CA) with a worker, and a pod ticking on it."""
    cluster = running_operator
    c = client(cluster)
    try:
        doc = samples.tenant_control_plane("renew", NS, "dev-etcd", VERSION,
                                           service_type="NodePort", port=PORT, addons=True)
        await c.apply(from_dict(doc), force=True)
        tenant = await wait_tenant_ready(c, NS, "renew")
    finally:
        await c.close()
    try:
        result = await add_worker(cluster, tenant)
        yield Setup(cluster, tenant, result.worker, worker_paths(cluster.layout,
                                                                 result.worker.index))
    finally:
        await asyncio.to_thread(workers.remove_all, cluster.layout)


def kubelet_cmdline(s: Setup) -> tuple[int, list[str]]:
    record = workers.load(s.cluster.layout, s.worker.index)
    assert record is not None
    pid = record.pids["kubelet"]
    return pid, Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def client_certificate(s: Setup) -> tuple[Path, int, str]:
    """The kubelet's current client certificate: its file, serial and issuer."""
    current = s.paths.kubelet_pki / worker_ca.CLIENT_CURRENT
    cert = worker_ca.load_certificate(current.read_bytes())
    assert cert is not None
    return current.resolve(), cert.serial_number, cert.issuer.rfc4514_string()


async def renew(s: Setup) -> workers.RenewResult:
    join = await access.create_join_command(s.tenant, timedelta(minutes=30))
    return await asyncio.to_thread(workers.renew_ca, s.cluster.layout, s.worker.name, join,
                                   printer=lambda line: print(line, flush=True))


async def test_renew_ca_keeps_the_node_and_its_pods(setup: Setup, tmp_path: Path) -> None:
    s, node = setup, setup.worker.node_name
    t = s.tenant.client()
    try:
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "ticker", "namespace": "default"},
               "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                        "containers": [{"name": "ticker", "image": BUSYBOX_IMAGE,
                                        "imagePullPolicy": "Never",
                                        "command": ["sh", "-c", "i=0; while true; do echo "
                                                    "tick $i; i=$((i+1)); sleep 1; done"]}]}}
        await t.apply(from_dict(pod), force=True)

        async def running() -> bool:
            got = await t.get(Pod, "ticker", namespace="default")
            statuses = (got.status and got.status.containerStatuses) or []
            return bool(statuses and statuses[0].state and statuses[0].state.running)

        await eventually(running, 120, "the ticker pod running")
        before = (await t.get(Pod, "ticker", namespace="default")).status.containerStatuses[0]
        old_file, old_serial, issuer = client_certificate(s)
        old_pid, argv = kubelet_cmdline(s)

        for attempt in (1, 2):  # running it again is fine: a new certificate again
            result = await renew(s)
            new_file, new_serial, new_issuer = client_certificate(s)
            assert (new_file, new_serial) != (old_file, old_serial), attempt
            assert new_issuer == issuer  # no rotation: the tenant's one CA signed it
            assert f"serial {new_serial:x}" in result.new_client
            assert not result.ca_changed and len(result.cas) == 1
            pid, new_argv = kubelet_cmdline(s)
            assert pid != old_pid and new_argv == argv  # restarted, same command line
            old_file, old_serial, old_pid = new_file, new_serial, pid

        # the node's files: the bundle where the kubelet reads its client CA, in kubelet.conf
        # (now the kubelet's own, on the new certificate), and no token left behind
        bundle = s.tenant.ca_pem
        assert s.paths.ca.read_bytes() == bundle
        assert worker_ca.kubeconfig_bundle(s.paths.kubelet_kubeconfig.read_text()) == bundle
        assert str(s.paths.kubelet_pki / worker_ca.CLIENT_CURRENT) in \
            s.paths.kubelet_kubeconfig.read_text()
        assert not s.paths.bootstrap_kubeconfig.exists()
        csrs = [c async for c in t.list(CertificateSigningRequest)
                if c.spec.username.startswith("system:bootstrap:")]
        assert len(csrs) == 3  # the join's and the two renewals', all issued
        assert all(c.status and c.status.certificate for c in csrs)

        got = (await t.get(Node, node)).to_dict()  # type: ignore[no-untyped-call]
        assert node_ready(got)[0]
        after = (await t.get(Pod, "ticker", namespace="default")).status.containerStatuses[0]
        assert after.containerID == before.containerID and after.restartCount == 0
        assert after.state.running
    finally:
        await t.close()
    # the API server still reaches the kubelet (its client certificate against clientCAFile)
    kc = tmp_path / "tenant.kubeconfig"
    kc.write_text(yaml.safe_dump(s.tenant.kubeconfig))
    logs = kubectl(s.cluster, "logs", "-n", "default", "ticker", "--tail=2", kubeconfig=kc)
    assert "tick " in logs.stdout
    assert base64.b64decode(s.tenant.kubeconfig["clusters"][0]["cluster"][
        "certificate-authority-data"]) == bundle


async def test_a_pin_no_ca_of_the_tenant_has_is_refused_before_anything_changes(
        setup: Setup) -> None:
    join = await access.create_join_command(setup.tenant, timedelta(minutes=30))
    wrong = JoinCommand(join.endpoint, join.token, "sha256:" + "0" * 64)
    pid, _ = kubelet_cmdline(setup)
    cert = client_certificate(setup)
    with pytest.raises(worker_ca.DiscoveryError, match="no CA in the tenant's cluster-info "
                       "has the pinned public key sha256:0000"):
        await asyncio.to_thread(workers.renew_ca, setup.cluster.layout, setup.worker.name,
                                wrong, printer=lambda line: None)
    assert kubelet_cmdline(setup)[0] == pid and client_certificate(setup) == cert
    assert not setup.paths.bootstrap_kubeconfig.exists()
