"""DataStores that exist only in the test: the operator's DriverCache hands out a fake
driver for them (the only thing faked; the API server stays real)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from haku.controller.drivers import DriverCache
from haku.datastore import Tenant, TenantConnection
from haku.datastore.base import SchemaInUse


def use_fake_datastores(monkeypatch: pytest.MonkeyPatch, drivers: Mapping[str, Any]) -> None:
    """DataStore ``name`` in ``drivers`` resolves to that driver, with no DataStore object;
    every other name goes to the real API server and drivers."""
    read, lease = DriverCache.read, DriverCache.lease

    async def fake_read(self: DriverCache, name: str) -> Any:
        if name in drivers:
            # Where the fake "is" (a driver may say, by an ``endpoints`` attribute): what the
            # tenant's NetworkPolicy lets its pods reach.
            endpoints = list(getattr(drivers[name], "endpoints", ("127.0.0.1:1",)))
            return SimpleNamespace(
                metadata=SimpleNamespace(name=name, generation=1, deletionTimestamp=None),
                to_dict=lambda: {"metadata": {"name": name},
                                 "spec": {"endpoints": endpoints}})
        return await read(self, name)

    def fake_lease(self: DriverCache, datastore: Any) -> Any:
        name = datastore.metadata.name
        if name not in drivers:
            return lease(self, datastore)

        @contextlib.asynccontextmanager
        async def held() -> AsyncIterator[Any]:
            yield drivers[name]
        return held()

    monkeypatch.setattr(DriverCache, "read", fake_read)
    monkeypatch.setattr(DriverCache, "lease", fake_lease)


class CountingDriver:
    """A SQL-like DataStore that counts what it is asked to do."""

    driver = "fake"

    def __init__(self) -> None:
        self.ensured: list[Tenant] = []
        self.verified = 0
        self.deleted: list[Tenant] = []
        self.present: set[str] = set()
        self.ensure_gate: asyncio.Event | None = None
        self.refuse: str | None = None  # holder uid to refuse with SchemaInUse

    async def ensure_tenant(self, tenant: Tenant) -> None:
        if self.refuse:
            raise SchemaInUse(tenant.schema, self.refuse)
        if self.ensure_gate is not None:
            await self.ensure_gate.wait()
        self.ensured.append(tenant)
        self.present.add(tenant.schema)

    async def verify_tenant(self, tenant: Tenant) -> bool:
        self.verified += 1
        return tenant.schema in self.present

    async def delete_tenant(self, tenant: Tenant) -> None:
        self.deleted.append(tenant)
        self.present.discard(tenant.schema)

    def physical_names(self, tenant: Tenant) -> tuple[str, str]:
        return tenant.schema, tenant.user

    def tenant_connection(self, tenant: Tenant) -> TenantConnection:
        return TenantConnection("fake", kine_endpoint=f"postgres://fake/{tenant.schema}",
                                files={"ca.crt": b"not a CA"})
