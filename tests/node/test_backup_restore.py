"""``haku backup`` and ``haku restore`` on the local cluster, with the real CLI and operator: a
tenant on the shared etcd, filled through its API server, is backed up with its PKI and
restored into a new tenant on PostgreSQL, which serves the same objects (same UIDs) and
accepts a service-account token the old tenant issued; the old tenant goes on untouched. A
damaged or cut-short file is refused before anything is created; a tenant made by a restore
is held (no control plane) until its data is in, and an interrupted restore resumes; a second
restore into a restored tenant changes nothing; a tenant not made by a restore is never
restored over; a DataStore that does not exist is named before anything is made."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Service

from haku.api import conditions
from haku.api.resources import TenantControlPlane
from haku.backup import format as fmt
from haku.backup import run
from haku.backup.run import restored_spec
from haku.controller.steps.restore import POLL, RESTORE_FROM, RESTORED
from haku.datastore import Entry
from haku.dev import samples
from haku.dev.cluster import DevCluster
from haku.dev.versions import KUBERNETES_VERSION
from haku.render import controlplane
from haku.tenant.access import TenantAccess

from .helpers import client, eventually, kubectl, wait_tenant_ready

NS = "backups"  # the source tenant's namespace (running_operator cleans it up too)
SOURCE = "origin"
NS2 = "restores"  # every tenant a restore makes (or is refused to make)
COPY = "copy"  # the restore onto PostgreSQL
HELD = "held"  # made as `haku restore` makes one, then left: the operator holds it
DAMAGED, CUT = "damaged", "cut"  # restores of bad files: must never exist
POSTGRES = samples.DATASTORE_NAMES["postgres"]
ETCD = samples.DATASTORE_NAMES["etcd"]
PAYLOAD = "payload"  # the namespace written into the tenant
CONFIGMAPS = 200
SA = "robot"


@dataclass
class Source:
    cluster: DevCluster
    access: TenantAccess
    kubeconfig: Path
    configmaps: dict[str, tuple[str, dict[str, str]]]  # name: (uid, data)
    secret: tuple[str, dict[str, str]]  # (uid, data)
    token: str


@dataclass
class Backup:
    path: Path
    stdout: str
    header: fmt.Header
    summary: fmt.Summary


async def haku(cluster: DevCluster, *args: str, timeout: float = 120,
               ) -> subprocess.CompletedProcess[str]:
    """The real CLI, against the admin cluster (in a thread: the operator runs in this event
    loop, and a restore waits for it)."""
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "haku", *args, "--kubeconfig",
                         str(cluster.layout.admin_kubeconfig)],
        capture_output=True, text=True, timeout=timeout, check=False)


async def akubectl(cluster: DevCluster, *args: str, kubeconfig: Path | None = None,
                   check: bool = True) -> subprocess.CompletedProcess[str]:
    """``kubectl``, off the event loop the operator runs in."""
    return await asyncio.to_thread(kubectl, cluster, *args, kubeconfig=kubeconfig,
                                   check=check)


async def tenant_kubectl(cluster: DevCluster, kubeconfig: Path, *args: str) -> str:
    return (await akubectl(cluster, *args, kubeconfig=kubeconfig)).stdout


def write_kubeconfig(tenant: TenantAccess, path: Path) -> Path:
    path.write_text(yaml.safe_dump(tenant.kubeconfig))
    return path


async def configmaps(cluster: DevCluster, kubeconfig: Path,
                     ) -> dict[str, tuple[str, dict[str, str]]]:
    items = json.loads(await tenant_kubectl(cluster, kubeconfig, "get", "configmaps", "-n",
                                            PAYLOAD, "-o", "json"))["items"]
    return {i["metadata"]["name"]: (i["metadata"]["uid"], i.get("data") or {}) for i in items
            if i["metadata"]["name"].startswith("cm-")}


async def secret(cluster: DevCluster, kubeconfig: Path) -> tuple[str, dict[str, str]]:
    doc = json.loads(await tenant_kubectl(cluster, kubeconfig, "get", "secret", "credentials",
                                          "-n", PAYLOAD, "-o", "json"))
    return doc["metadata"]["uid"], doc["data"]


async def whoami(cluster: DevCluster, tenant: TenantAccess, token: str, path: Path,
                 ) -> subprocess.CompletedProcess[str]:
    """``kubectl auth whoami`` against ``tenant``'s endpoint (verified with its CA), with
    nothing but ``token`` as the credential."""
    server = tenant.kubeconfig["clusters"][0]["cluster"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {
            "server": server["server"],
            "certificate-authority-data": server["certificate-authority-data"]}}],
        "users": [{"name": "t", "user": {"token": token}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}]}))
    return await akubectl(cluster, "auth", "whoami", "-o",
                          "jsonpath={.status.userInfo.username}", kubeconfig=path, check=False)


async def aiter_of(items: Iterable[Entry]) -> AsyncIterator[Entry]:
    for item in items:
        yield item


async def tcp_dict(c: AsyncClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj = await c.get(TenantControlPlane, name, namespace=namespace)
    except ApiError as e:
        if e.status.code == 404:
            return None
        raise
    return obj.to_dict()  # type: ignore[no-any-return,no-untyped-call]


async def exists(c: AsyncClient, kind: Any, namespace: str, name: str) -> bool:
    try:
        await c.get(kind, name, namespace=namespace)
    except ApiError as e:
        if e.status.code == 404:
            return False
        raise
    return True


async def delete_all(c: AsyncClient, namespace: str, timeout: float = 180) -> None:
    """Delete every TenantControlPlane in ``namespace`` and wait for its finalizer."""
    async for tcp in c.list(TenantControlPlane, namespace=namespace):
        try:
            await c.delete(TenantControlPlane, tcp.metadata.name, namespace=namespace)
        except ApiError as e:
            if e.status.code != 404:
                raise

    async def gone() -> bool:
        return not [t async for t in c.list(TenantControlPlane, namespace=namespace)]

    await eventually(gone, timeout, f"the TenantControlPlanes in {namespace} to be finalized")


@pytest.fixture(scope="module")
async def source(running_operator: DevCluster, tmp_path_factory: pytest.TempPathFactory,
                 ) -> AsyncIterator[Source]:
    """A Ready tenant on the shared etcd holding ~200 ConfigMaps, a Secret and a
    ServiceAccount (with a token it issued). Afterwards every tenant of this module is deleted
    and finalized, whatever happened."""
    cluster = running_operator
    c = client(cluster)
    tmp = tmp_path_factory.mktemp("backup-source")
    try:
        await c.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": NS2}}))
        await c.apply(from_dict(samples.tenant_control_plane(
            SOURCE, NS, ETCD, KUBERNETES_VERSION)), force=True)
        tenant = await wait_tenant_ready(c, NS, SOURCE)
        kc = write_kubeconfig(tenant, tmp / "origin.conf")
        items: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PAYLOAD}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "credentials",
                                                               "namespace": PAYLOAD},
             "stringData": {"password": "s3cr3t-0f-the-origin", "user": "admin"}},
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": SA, "namespace": PAYLOAD}}]
        items += [{"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": f"cm-{i:03d}", "namespace": PAYLOAD,
                                "labels": {"batch": "backup"}},
                   "data": {"index": str(i), "text": f"value {i} " * 40}}
                  for i in range(CONFIGMAPS)]
        (tmp / "payload.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                                      "items": items}))
        await tenant_kubectl(cluster, kc, "apply", "-f", str(tmp / "payload.json"))
        token = (await tenant_kubectl(cluster, kc, "create", "token", SA, "-n", PAYLOAD,
                                      "--duration=1h")).strip()
        cms = await configmaps(cluster, kc)
        assert len(cms) == CONFIGMAPS
        yield Source(cluster, tenant, kc, cms, await secret(cluster, kc), token)
    finally:
        try:
            await delete_all(c, NS2)
        finally:
            await delete_all(c, NS)
            await c.close()


@pytest.fixture(scope="module")
async def backup(source: Source, tmp_path_factory: pytest.TempPathFactory) -> Backup:
    path = tmp_path_factory.mktemp("backup") / "origin.haku"
    result = await haku(source.cluster, "backup", f"{NS}/{SOURCE}", "-o", str(path),
                        "--with-pki")
    assert result.returncode == 0, result.stderr
    header, summary, _ = fmt.verify(path)
    return Backup(path, result.stdout, header, summary)


def test_backup_writes_a_private_file_with_the_keys_and_the_pki(source: Source,
                                                                 backup: Backup) -> None:
    assert stat.S_IMODE(os.stat(backup.path).st_mode) == 0o600
    assert not backup.path.with_name(backup.path.name + ".partial").exists()
    said = re.search(r"wrote .*: (\d+) keys, sha256 ([0-9a-f]{64})", backup.stdout)
    assert said, backup.stdout
    assert int(said[1]) == backup.summary.entries and said[2] == backup.summary.sha256
    assert f"backing up {NS}/{SOURCE} from etcd DataStore {ETCD} with its PKI" in backup.stdout
    # Every object written is in it (and more: the tenant's own), with the PKI.
    assert backup.summary.entries > CONFIGMAPS + 2
    with fmt.Reader(backup.path) as reader:
        keys = [e.key.decode(errors="replace") for e in reader.entries()]
    for name in [*list(source.configmaps)[::20], "cm-199"]:
        assert any(k.endswith(f"/configmaps/{PAYLOAD}/{name}") for k in keys), name
    assert any(k.endswith(f"/secrets/{PAYLOAD}/credentials") for k in keys)
    assert any(k.endswith(f"/serviceaccounts/{PAYLOAD}/{SA}") for k in keys)
    assert backup.header.pki and {"ca.crt", "ca.key", "sa.key", "sa.pub"} <= set(
        backup.header.pki)
    assert backup.header.source["uid"] and backup.header.source["driver"] == "etcd"


async def test_a_damaged_or_cut_backup_is_refused_before_anything_is_made(
        source: Source, backup: Backup, tmp_path: Path) -> None:
    lines = gzip.decompress(backup.path.read_bytes()).split(b"\n")
    target = next(i for i, line in enumerate(lines) if f"/{PAYLOAD}/cm-123".encode() in line)
    # One byte changed: the key cm-123 becomes cm-12X (still valid JSON, still a key).
    changed = lines[target].replace(b"cm-123", b"cm-12X", 1)
    assert len(changed) == len(lines[target]) and changed != lines[target]
    damaged = tmp_path / "damaged.haku"
    lines[target] = changed
    damaged.write_bytes(gzip.compress(b"\n".join(lines)))
    cut = tmp_path / "cut.haku"
    whole = backup.path.read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    c = client(source.cluster)
    try:
        for path, name, why in ((damaged, DAMAGED, "checksum mismatch"),
                                (cut, CUT, "cut short")):
            result = await haku(source.cluster, "restore", str(path), "--into",
                                f"{NS2}/{name}", "--dataStore", POSTGRES)
            assert result.returncode == 1, (result.stdout, result.stderr)
            assert result.stderr.startswith(f"haku: {path}: "), result.stderr
            assert why in result.stderr, result.stderr
            assert result.stderr.count(str(path)) == 1, result.stderr  # named once
            assert "Traceback" not in result.stderr
            assert "created" not in result.stdout
            assert await tcp_dict(c, NS2, name) is None
            assert not await exists(c, Service, NS2, controlplane.names(name)["service"])
        # An intact file onto a DataStore that does not exist: refused as early.
        result = await haku(source.cluster, "restore", str(backup.path), "--into",
                            f"{NS2}/{DAMAGED}", "--dataStore", "no-such-datastore")
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert result.stderr == "haku: DataStore no-such-datastore does not exist\n"
        assert await tcp_dict(c, NS2, DAMAGED) is None
    finally:
        await c.close()


async def test_a_restored_tenant_is_held_until_its_data_is_in_and_a_restore_resumes(
        source: Source, backup: Backup) -> None:
    """A TenantControlPlane as `haku restore` creates it (on the source's DataStore, as when
    --dataStore is left out), as if the CLI had stopped right after: the operator gives it
    its space and holds it there, no Service, no Deployment; the restore run again resumes."""
    c = client(source.cluster)
    try:
        await c.create(from_dict({
            "apiVersion": "haku.dev/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": HELD, "namespace": NS2,
                         "annotations": {RESTORE_FROM: backup.summary.sha256}},
            "spec": restored_spec(backup.header, None)}))
        seen: dict[str, Any] = {}

        async def held() -> bool:
            seen.update(await tcp_dict(c, NS2, HELD) or {})
            status = seen.get("status") or {}
            restored = conditions.find(status.get("conditions"), "DataRestored")
            return bool((status.get("storage") or {}).get("setup") and restored
                        and restored["status"] == "False"
                        and restored["reason"] == "WaitingForData")

        await eventually(held, 90, f"{HELD} held with its space set up")
        status = seen["status"]
        assert status["storage"]["dataStoreName"] == ETCD
        ready = conditions.find(status["conditions"], "Ready")
        assert ready and ready["status"] == "False"
        assert backup.summary.sha256[:12] in conditions.find(
            status["conditions"], "DataRestored")["message"]
        assert not await exists(c, Deployment, NS2, controlplane.names(HELD)["deployment"])
        assert not await exists(c, Service, NS2, controlplane.names(HELD)["service"])
        assert "kubernetesResources" not in status or not status["kubernetesResources"].get(
            "deployment")

        # What an interrupted restore leaves: the PKI written, part of the keys loaded.
        assert backup.header.pki
        await run._write_pki(c, seen, backup.header.pki)
        where = await run.placement(c, seen)
        with fmt.Reader(backup.path) as reader:
            part = list(itertools.islice(reader.entries(), 50))
        async with run.driver_for(c, where.datastore) as driver:
            assert await driver.load(where.tenant, aiter_of(part)) == 50

        result = await haku(source.cluster, "restore", str(backup.path), "--into",
                            f"{NS2}/{HELD}", "--no-wait")
        restored_at = time.monotonic()
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert f"resuming the restore into {NS2}/{HELD}" in result.stdout
        assert "the backed-up PKI is the tenant's" in result.stdout  # the same one: kept
        assert (f"{backup.summary.entries} keys in etcd DataStore {ETCD}, read back and "
                "matching") in result.stdout  # not 50 more: the partial load was cleared
        assert "is Ready" not in result.stdout  # --no-wait
        obj = await tcp_dict(c, NS2, HELD)
        assert obj and obj["metadata"]["annotations"][RESTORED] == backup.summary.sha256

        async def released() -> bool:
            status = (await tcp_dict(c, NS2, HELD) or {}).get("status") or {}
            restored = conditions.find(status.get("conditions"), "DataRestored")
            return bool(restored and restored["status"] == "True")

        # Promptly: the annotation wakes no reconcile (only spec, deletion and finalizer
        # changes do, and nothing else changed here), so a held tenant looks every POLL s.
        await eventually(released, 3 * POLL, f"{HELD}'s DataRestored True")
        print(f"{HELD} released {time.monotonic() - restored_at:.1f} s after the restore")

        async def started() -> bool:
            return await exists(c, Deployment, NS2, controlplane.names(HELD)["deployment"])

        await eventually(started, 60, f"{HELD}'s control plane Deployment")
    finally:
        await c.close()


@pytest.fixture(scope="module")
async def restored(source: Source, backup: Backup) -> subprocess.CompletedProcess[str]:
    result = await haku(source.cluster, "restore", str(backup.path), "--into",
                        f"{NS2}/{COPY}", "--dataStore", POSTGRES, "--timeout", "5m",
                        timeout=420)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result


async def test_a_restore_onto_postgres_serves_the_same_objects_and_tokens(
        source: Source, backup: Backup, restored: subprocess.CompletedProcess[str],
        tmp_path: Path) -> None:
    out = restored.stdout
    assert f"checksum {backup.summary.sha256[:12]} verified" in out
    assert f"created TenantControlPlane {NS2}/{COPY} on DataStore {POSTGRES}" in out
    assert "the backed-up PKI is the tenant's" in out
    assert (f"{backup.summary.entries} keys in PostgreSQL DataStore {POSTGRES}, read back and "
            "matching") in out
    assert out.rstrip().endswith(f"{NS2}/{COPY} is Ready"), out
    cluster = source.cluster
    c = client(cluster)
    try:
        copy = await wait_tenant_ready(c, NS2, COPY, timeout=60)
        obj = await tcp_dict(c, NS2, COPY)
        assert obj is not None
        status = obj["status"]
        assert status["storage"]["driver"] == "PostgreSQL"
        assert status["storage"]["dataStoreName"] == POSTGRES
        restored_condition = conditions.find(status["conditions"], "DataRestored")
        assert restored_condition and restored_condition["status"] == "True", status
        assert obj["metadata"]["annotations"][RESTORE_FROM] == backup.summary.sha256
        assert obj["metadata"]["annotations"][RESTORED] == backup.summary.sha256
        # Another control plane (its own endpoint), with the source's CA.
        assert copy.endpoint != source.access.endpoint
        assert copy.ca_pem == source.access.ca_pem

        kc = write_kubeconfig(copy, tmp_path / "copy.conf")
        assert await configmaps(cluster, kc) == source.configmaps  # names, UIDs and data
        assert await secret(cluster, kc) == source.secret
        # The token the old tenant issued authenticates against the new one (as the SA it
        # names: same signing key, and the SA's UID in the token matches the restored SA).
        sa = f"system:serviceaccount:{PAYLOAD}:{SA}"
        new = await whoami(cluster, copy, source.token, tmp_path / "token-new.conf")
        assert new.returncode == 0 and new.stdout == sa, (new.stdout, new.stderr)
        old = await whoami(cluster, source.access, source.token, tmp_path / "token-old.conf")
        assert old.returncode == 0 and old.stdout == sa, (old.stdout, old.stderr)
        # ...which means something: a token it did not sign is refused (401).
        forged = source.token[:-8] + ("A" * 8 if not source.token.endswith("A" * 8)
                                      else "B" * 8)
        refused = await whoami(cluster, copy, forged, tmp_path / "token-forged.conf")
        assert refused.returncode != 0 and "Unauthorized" in refused.stderr, refused.stderr

        # The two are separate tenants: a write to the copy does not reach the source...
        await tenant_kubectl(cluster, kc, "create", "configmap", "only-in-copy", "-n", PAYLOAD)
        assert "only-in-copy" not in await tenant_kubectl(
            cluster, source.kubeconfig, "get", "configmaps", "-n", PAYLOAD, "-o", "name")
        # ...and the source is untouched: Ready, its objects as they were.
        origin = await wait_tenant_ready(c, NS, SOURCE, timeout=30)
        assert origin.endpoint == source.access.endpoint
        assert await configmaps(cluster, source.kubeconfig) == source.configmaps
        assert await secret(cluster, source.kubeconfig) == source.secret
        annotations = (await tcp_dict(c, NS, SOURCE) or {})["metadata"].get("annotations") or {}
        assert RESTORE_FROM not in annotations and RESTORED not in annotations
    finally:
        await c.close()


async def test_restoring_again_changes_nothing_and_a_live_tenant_is_not_restored_over(
        source: Source, backup: Backup, restored: subprocess.CompletedProcess[str],
        tmp_path: Path) -> None:
    cluster = source.cluster
    c = client(cluster)
    try:
        before = await tcp_dict(c, NS2, COPY)
        assert before is not None
        copy_kc = write_kubeconfig(await wait_tenant_ready(c, NS2, COPY, timeout=60),
                                   tmp_path / "copy.conf")
        marker = "written-after-the-restore"
        await tenant_kubectl(cluster, copy_kc, "create", "configmap", marker, "-n", PAYLOAD,
                             "--from-literal=k=v")
        again = await haku(cluster, "restore", str(backup.path), "--into", f"{NS2}/{COPY}",
                           "--dataStore", POSTGRES)
        assert again.returncode == 0, (again.stdout, again.stderr)
        assert f"{NS2}/{COPY} already holds this backup" in again.stdout
        assert "loaded" not in again.stdout and "PKI" not in again.stdout
        after = await tcp_dict(c, NS2, COPY)
        assert after is not None
        assert after["metadata"]["generation"] == before["metadata"]["generation"]
        assert after["metadata"]["annotations"] == before["metadata"]["annotations"]
        assert after["metadata"]["uid"] == before["metadata"]["uid"]
        # Its data was not loaded over: what was written since is still there.
        assert marker in await tenant_kubectl(cluster, copy_kc, "get", "configmaps", "-n",
                                              PAYLOAD, "-o", "name")

        # The source exists and was not made by a restore: refused, nothing changed.
        pki_version = ("get", "secret", "-n", NS, controlplane.names(SOURCE)["pki"], "-o",
                       "jsonpath={.metadata.resourceVersion}")
        pki_before = (await akubectl(cluster, *pki_version)).stdout
        refused = await haku(cluster, "restore", str(backup.path), "--into", f"{NS}/{SOURCE}")
        assert refused.returncode == 1, (refused.stdout, refused.stderr)
        assert (f"haku: TenantControlPlane {NS}/{SOURCE} exists and was not made by a restore"
                in refused.stderr), refused.stderr
        origin = await tcp_dict(c, NS, SOURCE)
        assert origin is not None
        annotations = origin["metadata"].get("annotations") or {}
        assert RESTORE_FROM not in annotations and RESTORED not in annotations
        assert (await akubectl(cluster, *pki_version)).stdout == pki_before
        await wait_tenant_ready(c, NS, SOURCE, timeout=30)
        assert await configmaps(cluster, source.kubeconfig) == source.configmaps
    finally:
        await c.close()
