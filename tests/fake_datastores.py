"""DataStores that exist only in the test: the operator's DriverCache hands out a fake
driver for them (the only thing faked; the API server stays real)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from haku.controller.drivers import DriverCache


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
