"""Check a DataStore for real and record the outcome in its status; keep it while tenants
use it.

``Ready`` is True only after Haku connected with the DataStore's credentials and verified it
may provision tenants (Kamaji only checks that referenced Secrets exist). The reconcile loop
that calls this on every change and resync comes with the operator.

A DataStore carries Haku's finalizer while it exists: deleting one that TenantControlPlanes
still use (their data is in it, and their finalizers need it to clean up) leaves it in place,
with a ``Deleting`` Condition naming them, until the last of them is gone.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.models.meta_v1 import ObjectMeta

from haku.api import conditions
from haku.api.datastore import DataStoreSpec, SpecError
from haku.controller.resources import FIELD_MANAGER, DataStore, secret_reader
from haku.datastore import DataStoreError, Driver, open_driver
from haku.datastore.settings import resolve

CHECK_TIMEOUT = 20.0
FINALIZER = "haku.dev/datastore-in-use"


def _is_tls_config_error(e: Exception) -> bool:
    """Certificate or key material that does not parse (the drivers check it first and raise
    InvalidTLSConfig; this catches what a client library finds on its own)."""
    if isinstance(e, ssl.SSLError | UnicodeError):
        return True
    if type(e).__module__.startswith(("cryptography", "OpenSSL")):
        return True
    text = str(e).lower()
    return isinstance(e, ValueError) and any(
        word in text for word in ("cert", "pem", "key", "asn1", "x509"))


async def probe(obj: dict[str, Any], client: AsyncClient) -> tuple[conditions.Condition,
                                                                    str | None, int | None]:
    """(Ready condition, server version, tenants held) for the DataStore ``obj``."""
    driver: Driver | None = None
    try:
        spec = DataStoreSpec.parse(obj)
        settings = await resolve(spec, secret_reader(client))
        driver = open_driver(settings)
        version = await asyncio.wait_for(driver.check(), CHECK_TIMEOUT)
        tenants = len(await asyncio.wait_for(driver.list_tenants(), CHECK_TIMEOUT))
    except TimeoutError:
        return (conditions.Condition("Ready", "False", "Unreachable",
                                     f"no answer within {CHECK_TIMEOUT:.0f}s"), None, None)
    except SpecError as e:
        return conditions.Condition("Ready", "False", "InvalidSpec", str(e)), None, None
    except DataStoreError as e:
        return conditions.Condition("Ready", "False", e.reason, str(e)), None, None
    except Exception as e:  # not BaseException: cancellation propagates
        # Whatever a client library raises while building or checking a driver must not
        # leave an earlier Ready=True standing.
        reason = "InvalidTLSConfig" if _is_tls_config_error(e) else "Error"
        return (conditions.Condition("Ready", "False", reason,
                                     f"{type(e).__name__}: {e}"[:2000]), None, None)
    finally:
        if driver is not None:
            await driver.close()
    endpoints = ", ".join(obj["spec"]["endpoints"])
    return (conditions.Condition("Ready", "True", "Connected",
                                 f"{version} at {endpoints}; Haku may provision tenants"),
            version, tenants)


async def _set_finalizer(client: AsyncClient, name: str, present: bool) -> None:
    patch = DataStore(metadata=ObjectMeta(name=name,
                                          finalizers=[FINALIZER] if present else []))
    await client.apply(patch, field_manager=FIELD_MANAGER, force=True)


Probed = tuple[conditions.Condition, str | None, int | None]


@dataclass
class RecentProbes:
    """The last probe of each DataStore, reused for ``max_age`` seconds while its generation
    is unchanged: a burst of tenant events re-checks who uses a DataStore without connecting
    to it (and listing its tenants) each time; its periodic check still probes."""

    max_age: float = 50.0
    found: dict[str, tuple[float, Any, Probed]] = field(default_factory=dict)

    def get(self, name: str, generation: Any) -> Probed | None:
        hit = self.found.get(name)
        if hit is None or hit[1] != generation or time.monotonic() - hit[0] > self.max_age:
            return None
        return hit[2]

    def put(self, name: str, generation: Any, probed: Probed) -> None:
        self.found[name] = (time.monotonic(), generation, probed)

    def forget(self, name: str) -> None:
        self.found.pop(name, None)


async def reconcile_datastore(client: AsyncClient, name: str, used_by: list[str],
                              recent: RecentProbes | None = None) -> dict[str, Any] | None:
    """Keep the finalizer on DataStore ``name`` while it exists or ``used_by`` (its
    TenantControlPlanes, namespace/name) is not empty, and check it; None if it is gone."""
    try:
        current: Any = await client.get(DataStore, name)
    except ApiError as e:
        if e.status.code == 404:
            if recent is not None:
                recent.forget(name)
            return None
        raise
    meta = current.metadata
    deleting = bool(meta and meta.deletionTimestamp)
    held = FINALIZER in ((meta.finalizers if meta else None) or [])
    if not deleting and not held:
        await _set_finalizer(client, name, present=True)
        current = None  # changed: read again
    status = await check_datastore(client, name, used_by=used_by, recent=recent,
                                   current=current)
    if deleting and not used_by and held:
        await _set_finalizer(client, name, present=False)
    return status


async def check_datastore(client: AsyncClient, name: str, now: datetime | None = None,
                          used_by: list[str] | None = None, recent: RecentProbes | None = None,
                          current: Any = None) -> dict[str, Any]:
    """Probe the DataStore ``name`` and server-side-apply its status; return that status.
    ``used_by`` (namespace/name of its TenantControlPlanes) is recorded when given; a probe
    in ``recent`` stands in for a new one; ``current`` is the DataStore if just read."""
    if current is None:
        current = await client.get(DataStore, name)
    obj: dict[str, Any] = current.to_dict()
    generation = obj["metadata"].get("generation")
    probed = recent.get(name, generation) if recent is not None else None
    if probed is None:
        probed = await probe(obj, client)
        if recent is not None:
            recent.put(name, generation, probed)
    ready, version, tenants = probed
    old = (obj.get("status") or {}).get("conditions")
    merged = conditions.merge(old, ready, generation, now)
    if obj["metadata"].get("deletionTimestamp"):
        users = sorted(used_by or [])
        merged = conditions.merge(merged, conditions.Condition(
            "Deleting", "True", "InUse" if users else "Released",
            ("kept until these TenantControlPlanes are deleted (their data is here): "
             + ", ".join(users)) if users else "no TenantControlPlane uses it"),
            generation, now)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "ready": ready.status == "True",
        "conditions": merged,
    }
    if version is not None:
        status["serverVersion"] = version
    if tenants is not None:
        status["tenantCount"] = tenants
    if used_by is not None:
        status["usedBy"] = sorted(used_by)
    if obj.get("status") == status:
        return status  # nothing changed: no write (a no-op apply still costs the API server)
    patch = DataStore.Status(metadata=ObjectMeta(name=name), status=status)
    # lightkube types generic status subresources outside apply()'s overloads.
    await client.apply(patch, field_manager=FIELD_MANAGER, force=True)  # type: ignore[call-overload]
    return status
