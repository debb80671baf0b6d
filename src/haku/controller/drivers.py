"""Open datastore drivers, shared by the reconciles of every tenant on one DataStore.

:class:`DriverCache` keeps one driver per DataStore and replaces it when the connection
settings change. :meth:`DriverCache.lease` lends it to one reconcile as an async context
manager (a driver replaced meanwhile is closed only once its last lease ends), and
:meth:`DriverCache.gate` bounds how many tenants change one DataStore at once, so that a slow
or black-holed server ties up a few reconciles, not every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from lightkube import ApiError, AsyncClient

from haku.api.conditions import Condition
from haku.api.datastore import DataStoreSpec
from haku.controller.pipeline import Wait
from haku.controller.resources import DataStore, secret_reader
from haku.datastore import Driver, open_driver
from haku.datastore.settings import resolve

# How long resolved DataStore settings (credentials read from its Secrets) are trusted before
# a reconcile reads the Secrets again: a rotated DataStore credential is picked up within this.
SETTINGS_TTL = 30.0
# How long a DataStore delivered by the operator's watch stands in for reading it.
WATCHED_TTL = 60.0


@dataclass
class _Entry:
    fingerprint: str
    driver: Driver
    generation: Any = None
    checked: float = 0.0  # time.monotonic() of the last resolve that matched
    users: int = 0


def settings_fingerprint(datastore: dict[str, Any], settings: Any) -> str:
    """What identifies a DataStore's connection: its spec generation and the resolved
    settings (endpoints, credentials and certificates read from its Secrets). Status writes,
    which bump the resourceVersion, do not change it."""
    h = hashlib.sha256(str((datastore.get("metadata") or {}).get("generation")).encode())
    # Every field's value (Settings' repr hides the credentials, which must count here).
    for value in dataclasses.astuple(settings):
        h.update(b"\0" + repr(value).encode())
    return h.hexdigest()


@dataclass
class DriverCache:
    """One open driver per DataStore, replaced when its connection settings change.

    Drivers are counted out by :meth:`get` and back by :meth:`release`; a replaced driver is
    closed once the last reconcile using it has released it, never under a running one."""

    client: AsyncClient
    # How many reconciles may change (provision, verify, delete) one DataStore at once.
    concurrency: int = 4
    drivers: dict[str, _Entry] = field(default_factory=dict)
    retired: list[_Entry] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    gates: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    # The DataStores as the watch last delivered them, and when (:meth:`observe`).
    seen: dict[str, tuple[float, Any]] = field(default_factory=dict)

    def observe(self, event: str, datastore: Any) -> None:
        """A DataStore as the operator's watch delivered it: for :data:`WATCHED_TTL`
        seconds :meth:`read` hands it out instead of asking the API server each reconcile
        (gone again when deleted; the TTL bounds what a delete missed by a broken watch
        could leave behind)."""
        name = datastore.metadata.name
        if event == "DELETED":
            self.seen.pop(name, None)
        else:
            self.seen[name] = (time.monotonic(), datastore)

    async def read(self, name: str) -> Any:
        """The DataStore ``name`` (as recently watched, else read); :class:`Wait`
        (DataStoreNotFound) if there is none."""
        watched = self.seen.get(name)
        if watched is not None and time.monotonic() - watched[0] < WATCHED_TTL:
            return watched[1]
        try:
            return await self.client.get(DataStore, name)
        except ApiError as e:
            if e.status.code == 404:
                raise Wait(Condition("DataStoreReady", "False", "DataStoreNotFound",
                                     f"DataStore {name} does not exist"), 10.0) from e
            raise

    @contextlib.asynccontextmanager
    async def lease(self, datastore: Any) -> AsyncIterator[Driver]:
        """The open driver of DataStore object ``datastore`` for the length of the block."""
        driver = await self.get(datastore)
        try:
            yield driver
        finally:
            await self.release(driver)

    @contextlib.asynccontextmanager
    async def gate(self, name: str, wait: float = 1.0) -> AsyncIterator[None]:
        """One of :attr:`concurrency` slots for changing DataStore ``name``; if none frees up
        within ``wait`` seconds, :class:`Wait` (DataStoreBusy) hands the worker back."""
        gate = self.gates.setdefault(name, asyncio.Semaphore(self.concurrency))
        try:
            await asyncio.wait_for(gate.acquire(), wait)
        except TimeoutError as e:
            raise Wait(Condition("DataStoreReady", "Unknown", "DataStoreBusy",
                                 f"{self.concurrency} other tenants are being changed on "
                                 f"DataStore {name}; queued"), 2.0) from e
        try:
            yield
        finally:
            gate.release()

    async def get(self, datastore: Any) -> Driver:
        name = datastore.metadata.name
        generation = datastore.metadata.generation
        async with self.lock:
            cached = self.drivers.get(name)
            if cached is not None and cached.generation == generation \
                    and time.monotonic() - cached.checked < SETTINGS_TTL:
                cached.users += 1  # same spec, Secrets read recently: no API reads
                return cached.driver
        obj = datastore.to_dict()
        spec = DataStoreSpec.parse(obj)
        settings = await resolve(spec, secret_reader(self.client))
        fingerprint = settings_fingerprint(obj, settings)
        async with self.lock:
            cached = self.drivers.get(name)
            if cached is None or cached.fingerprint != fingerprint:
                if cached is not None:
                    self.retired.append(cached)
                cached = _Entry(fingerprint, open_driver(settings), generation)
                self.drivers[name] = cached
            cached.generation, cached.checked = generation, time.monotonic()
            cached.users += 1
            driver = cached.driver
        await self._close_unused()
        return driver

    async def release(self, driver: Driver) -> None:
        async with self.lock:
            for entry in (*self.drivers.values(), *self.retired):
                if entry.driver is driver and entry.users > 0:
                    entry.users -= 1
                    break
        await self._close_unused()

    async def _close_unused(self) -> None:
        async with self.lock:
            done = [e for e in self.retired if e.users == 0]
            self.retired = [e for e in self.retired if e.users > 0]
        for entry in done:
            await entry.driver.close()

    async def close(self) -> None:
        for entry in (*self.drivers.values(), *self.retired):
            await entry.driver.close()
        self.drivers.clear()
        self.retired.clear()



    def fingerprint(self, driver: Driver) -> str:
        """The settings fingerprint ``driver`` was opened with ("" for a driver not made
        here): part of a tenant's provisioning checksum, so changed DataStore settings
        provision again."""
        for entry in (*self.drivers.values(), *self.retired):
            if entry.driver is driver:
                return entry.fingerprint
        return ""
