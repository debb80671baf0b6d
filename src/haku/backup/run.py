"""``haku backup`` and ``haku restore``: one tenant's keyspace to a file, and back into a new
tenant on any DataStore (the I/O around :mod:`haku.backup.format` and the drivers).

Both act with the admin cluster's credentials, as the operator does: the DataStore's settings
come from its Secrets, the tenant's password from ``<name>-datastore-password``; the SQL
drivers then read and write as the tenant's own database user.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.resources.apps_v1 import Deployment
from lightkube.types import PatchType

from haku.api.datastore import DataStoreSpec
from haku.api.resources import DataStore, TenantControlPlane
from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.backup import format as fmt
from haku.controller.credentials import PASSWORD_KEY
from haku.controller.resources import secret_reader
from haku.controller.steps.restore import RESTORE_FROM, RESTORED, ran_before
from haku.datastore import Driver, Entry, Tenant, open_driver
from haku.datastore.digest import Digest
from haku.datastore.settings import resolve
from haku.errors import HakuError
from haku.render import ca_rotation, controlplane

Printer = Callable[[str], None]
PROGRESS_EVERY = 2.0  # seconds between progress lines


class BackupError(HakuError):
    """What ``haku backup``/``haku restore`` cannot do, in words for its user."""


@dataclass(frozen=True)
class Placement:
    """Where a provisioned tenant's data lives (its pinned ``status.storage``)."""

    datastore: str
    driver: str
    tenant: Tenant


def _dict(obj: Any) -> dict[str, Any]:
    return obj if isinstance(obj, dict) else obj.to_dict()


async def read_tcp(client: AsyncClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _dict(await client.get(TenantControlPlane, name, namespace=namespace))
    except ApiError as e:
        if e.status.code == 404:
            return None
        raise


async def placement(client: AsyncClient, tcp: dict[str, Any]) -> Placement:
    """The tenant's DataStore, driver and identity from its pinned status; BackupError if it
    was not provisioned yet."""
    meta = tcp["metadata"]
    storage = (tcp.get("status") or {}).get("storage") or {}
    requested = storage.get("requested") or {}
    if not (storage.get("dataStoreName") and requested.get("schema") and storage.get("setup")):
        raise BackupError(f"{meta['namespace']}/{meta['name']} has no space in a DataStore "
                          "yet (status.storage is not set: see its DataStoreReady Condition)")
    password = None
    if storage.get("driver") != "etcd":
        secret = f"{controlplane.names(meta['name'])['datastore']}-password"
        data = await secret_reader(client)(meta["namespace"], secret)
        if not data or PASSWORD_KEY not in data:
            raise BackupError(f"the tenant's database password (Secret {meta['namespace']}/"
                              f"{secret}) is missing")
        password = data[PASSWORD_KEY].decode()
    return Placement(storage["dataStoreName"], storage.get("driver", ""),
                     Tenant(requested["schema"], requested.get("user") or requested["schema"],
                            password, owner=storage.get("owner") or meta["uid"]))


async def _datastore_exists(client: AsyncClient, datastore: str) -> dict[str, Any]:
    try:
        return _dict(await client.get(DataStore, datastore))
    except ApiError as e:
        if e.status.code == 404:
            raise BackupError(f"DataStore {datastore} does not exist") from e
        raise


@contextlib.asynccontextmanager
async def driver_for(client: AsyncClient, datastore: str) -> AsyncIterator[Driver]:
    obj = await _datastore_exists(client, datastore)
    settings = await resolve(DataStoreSpec.parse(obj), secret_reader(client))
    driver = open_driver(settings)
    try:
        yield driver
    finally:
        await driver.close()


class Progress:
    """A line every PROGRESS_EVERY seconds while keys go by, and a last one."""

    def __init__(self, say: Printer, verb: str) -> None:
        self.say, self.verb = say, verb
        self.keys = self.bytes = 0
        self.started = self.last = time.monotonic()

    def add(self, entry: Entry) -> None:
        self.keys += 1
        self.bytes += len(entry.value)
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY:
            self.last = now
            self.say(self.line())

    def line(self) -> str:
        took = max(time.monotonic() - self.started, 1e-6)
        return (f"{self.verb} {self.keys} keys, {self.bytes / 2**20:.1f} MiB "
                f"({self.keys / took:.0f} keys/s)")


async def backup(client: AsyncClient, namespace: str, name: str, out: Path,
                 with_pki: bool = False, say: Printer = print) -> fmt.Summary:
    tcp = await read_tcp(client, namespace, name)
    if tcp is None:
        raise BackupError(f"TenantControlPlane {namespace}/{name} does not exist")
    where = await placement(client, tcp)
    pki = None
    if with_pki:
        rotation = ca_rotation.rotation_of(tcp.get("status"))
        if ca_rotation.in_progress(rotation):
            raise BackupError(f"{namespace}/{name} is rotating its CA (phase "
                              f"{rotation.get('phase')}): back up its PKI once that is over")
        pki = await secret_reader(client)(namespace, controlplane.names(name)["pki"])
        if not pki:
            raise BackupError(f"{namespace}/{name} has no PKI yet (Secret "
                              f"{controlplane.names(name)['pki']})")
    status = tcp.get("status") or {}
    version = (((status.get("kubernetesResources") or {}).get("version") or {}).get("version")
               or ((tcp.get("spec") or {}).get("kubernetes") or {}).get("version") or "")
    header = fmt.Header(
        source={"namespace": namespace, "name": name, "uid": tcp["metadata"]["uid"],
                "dataStore": where.datastore, "driver": where.driver},
        spec=tcp.get("spec") or {}, kubernetes_version=version,
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        pki=dict(pki) if pki is not None else None)
    say(f"backing up {namespace}/{name} from {where.driver} DataStore {where.datastore}"
        + (" with its PKI" if pki is not None else ""))
    writer = fmt.Writer(out, header)
    progress = Progress(say, "read")
    try:
        async with driver_for(client, where.datastore) as driver:
            async for entry in driver.snapshot(where.tenant):
                writer.add(entry)
                progress.add(entry)
    except BaseException:
        writer.abort()
        raise
    summary = writer.close()
    say(progress.line())
    return summary


def restored_spec(header: fmt.Header, datastore: str | None) -> dict[str, Any]:
    """The new tenant's spec: the backed-up one, on ``datastore`` (or the source's), with the
    default space and user names of the new tenant (the source's are held by the source)."""
    spec = {k: v for k, v in header.spec.items()
            if k not in ("dataStore", "dataStoreSchema", "dataStoreUsername")}
    spec["dataStore"] = datastore or header.source.get("dataStore")
    return spec


async def _create(client: AsyncClient, namespace: str, name: str, header: fmt.Header,
                  checksum: str, datastore: str | None) -> dict[str, Any]:
    body = {"apiVersion": "haku.dev/v1alpha1", "kind": "TenantControlPlane",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {RESTORE_FROM: checksum}},
            "spec": restored_spec(header, datastore)}
    created = await client.create(from_dict(body))
    return _dict(created)


async def _write_pki(client: AsyncClient, tcp: dict[str, Any], pki: dict[str, bytes]) -> None:
    """The backed-up PKI as the new tenant's ``<name>-pki`` Secret, owned by it, before the
    operator makes one (the restore step holds it back until the data is in)."""
    meta = tcp["metadata"]
    name = controlplane.names(meta["name"])["pki"]
    owner = {"apiVersion": "haku.dev/v1alpha1", "kind": "TenantControlPlane",
             "name": meta["name"], "uid": meta["uid"], "controller": True,
             "blockOwnerDeletion": True}
    labels = controlplane.labels(TenantControlPlaneSpec.parse(tcp), "secret")
    secret = from_dict({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                     "ownerReferences": [owner]},
        "data": {k: base64.b64encode(v).decode() for k, v in pki.items()}})
    try:
        await client.create(secret)
    except ApiError as e:
        if e.status.code != 409:
            raise
        current = await secret_reader(client)(meta["namespace"], name)
        if current != pki:
            raise BackupError(f"Secret {meta['namespace']}/{name} exists with another PKI than "
                              "the backup's") from e


async def _wait_for_space(client: AsyncClient, namespace: str, name: str, say: Printer,
                          timeout: float) -> dict[str, Any]:
    deadline, told = time.monotonic() + timeout, ""
    while True:
        tcp = await read_tcp(client, namespace, name)
        if tcp is None:
            raise BackupError(f"{namespace}/{name} was deleted during the restore")
        storage = (tcp.get("status") or {}).get("storage") or {}
        if storage.get("setup"):
            return tcp
        conditions = {c["type"]: c for c in (tcp.get("status") or {}).get("conditions") or []}
        ds = conditions.get("DataStoreReady") or {}
        line = f"waiting for the tenant's space: {ds.get('reason', 'no DataStoreReady yet')}"
        if ds.get("message"):
            line += f" ({ds['message']})"
        if line != told:
            say(line)
            told = line
        if time.monotonic() > deadline:
            raise TimeoutError(f"{namespace}/{name} got no space in its DataStore within "
                               f"{timeout:.0f} s: {line}")
        await asyncio.sleep(1.0)


async def _entries(reader: fmt.Reader, progress: Progress) -> AsyncIterator[Entry]:
    for entry in reader.entries():
        progress.add(entry)
        yield entry
        await asyncio.sleep(0)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[fmt.Reader]:
    reader = fmt.Reader(path)
    try:
        yield reader
    finally:
        reader.close()


async def restore(client: AsyncClient, path: Path, namespace: str, name: str,
                  datastore: str | None = None, say: Printer = print, wait: bool = True,
                  timeout: float = 600.0) -> fmt.Summary:
    """Restore the backup at ``path`` into a new TenantControlPlane ``namespace/name`` (made
    here from the backed-up spec, on ``datastore`` if given). Resumable: run again on a tenant
    it made, it loads the backup again from the start."""
    try:
        header, summary, digest = await asyncio.to_thread(fmt.verify, path)
    except fmt.BackupFileError as e:
        why = str(e)  # some of the format's messages name the file already
        raise BackupError(why if why.startswith(f"{path}") else f"{path}: {why}") from e
    src = header.source
    say(f"{path}: {summary.entries} keys of {src.get('namespace')}/{src.get('name')} "
        f"({src.get('driver')} DataStore {src.get('dataStore')}, {header.created_at}), "
        f"checksum {summary.sha256[:12]} verified")
    tcp = await read_tcp(client, namespace, name)
    if tcp is None:
        target = restored_spec(header, datastore).get("dataStore")
        if target:  # named wrong, the tenant would wait for it, made for nothing
            await _datastore_exists(client, target)
        tcp = await _create(client, namespace, name, header, summary.sha256, datastore)
        say(f"created TenantControlPlane {namespace}/{name} on DataStore "
            f"{tcp['spec'].get('dataStore')}, held until its data is loaded")
    else:
        annotations = tcp["metadata"].get("annotations") or {}
        if annotations.get(RESTORE_FROM) != summary.sha256:
            raise BackupError(
                f"TenantControlPlane {namespace}/{name} exists and was not made by a restore "
                "of this backup: a backup is restored into a new tenant (choose another name, "
                "or delete that one)")
        if annotations.get(RESTORED) == summary.sha256:
            say(f"{namespace}/{name} already holds this backup")
            return summary
        say(f"resuming the restore into {namespace}/{name}")
    if header.pki is not None:
        await _write_pki(client, tcp, header.pki)
        say("the backed-up PKI is the tenant's: its CAs and service-account key stay valid")
    tcp = await _wait_for_space(client, namespace, name, say, timeout)
    if ran_before(tcp.get("status") or {}) or await _deployment_exists(client, namespace, name):
        raise BackupError(f"{namespace}/{name}'s control plane has run: its space is not "
                          "loaded over")
    where = await placement(client, tcp)
    async with driver_for(client, where.datastore) as driver:
        await driver.clear(where.tenant)  # what an interrupted earlier attempt wrote
        progress = Progress(say, "loaded")
        with _opened(path) as reader:
            loaded = await driver.load(where.tenant, _entries(reader, progress))
        say(progress.line())
        check = Digest()
        async for entry in driver.snapshot(where.tenant):
            check.add(entry)
    if loaded != summary.entries or check != digest:
        raise BackupError(f"read back {check.entries} keys from the tenant's space, the backup "
                          f"holds {summary.entries}, and they differ: the restore stops here "
                          "(run it again to start over)")
    say(f"{loaded} keys in {where.driver} DataStore {where.datastore}, read back and matching")
    await client.patch(TenantControlPlane, name, {"metadata": {"annotations": {
        RESTORED: summary.sha256}}}, namespace=namespace, patch_type=PatchType.MERGE)
    if wait:
        await wait_ready(client, namespace, name, say, timeout)
    return summary


async def _deployment_exists(client: AsyncClient, namespace: str, name: str) -> bool:
    try:
        await client.get(Deployment, controlplane.names(name)["deployment"],
                         namespace=namespace)
    except ApiError as e:
        if e.status.code == 404:
            return False
        raise
    return True


async def wait_ready(client: AsyncClient, namespace: str, name: str, say: Printer,
                     timeout: float) -> None:
    deadline, told = time.monotonic() + timeout, ""
    while True:
        tcp = await read_tcp(client, namespace, name) or {}
        conditions = {c["type"]: c for c in (tcp.get("status") or {}).get("conditions") or []}
        ready = conditions.get("Ready") or {}
        if ready.get("status") == "True":
            say(f"{namespace}/{name} is Ready")
            return
        waiting = next((c for c in conditions.values()
                        if c.get("status") != "True" and c["type"] != "Ready"), ready)
        line = f"waiting for Ready: {waiting.get('type', 'Ready')} {waiting.get('reason', '')}"
        if line != told:
            say(line)
            told = line
        if time.monotonic() > deadline:
            raise TimeoutError(f"{namespace}/{name} was not Ready within {timeout:.0f} s "
                               f"({line})")
        await asyncio.sleep(1.0)
