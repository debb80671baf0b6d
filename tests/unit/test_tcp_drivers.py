"""DriverCache: a driver is replaced when the connection settings change (not on a status
write), and a replaced driver is closed only once no reconcile holds it."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from lightkube.generic_resource import create_global_resource

from haku.controller import drivers
from haku.controller.drivers import DriverCache

DS = create_global_resource("haku.dev", "v1alpha1", "DataStore", "datastores")


class Opened:
    def __init__(self, settings: Any) -> None:
        self.settings, self.closed = settings, False

    async def close(self) -> None:
        self.closed = True


def datastore(password: str, generation: int, resource_version: str) -> Any:
    b64 = base64.b64encode(password.encode()).decode()
    return DS.from_dict({  # type: ignore[attr-defined]
        "apiVersion": "haku.dev/v1alpha1", "kind": "DataStore",
        "metadata": {"name": "pg", "generation": generation,
                     "resourceVersion": resource_version},
        "spec": {"driver": "PostgreSQL", "endpoints": ["db:5432"],
                 "basicAuth": {"username": {"content": base64.b64encode(b"root").decode()},
                               "password": {"content": b64}}}})


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch) -> DriverCache:
    monkeypatch.setattr(drivers, "open_driver", Opened)
    return DriverCache(None)  # type: ignore[arg-type]  (inline content: no Secret reads)


async def test_a_status_write_keeps_the_driver(cache: DriverCache) -> None:
    first = await cache.get(datastore("pw", 1, "100"))
    again = await cache.get(datastore("pw", 1, "101"))  # only resourceVersion moved
    assert again is first
    await cache.release(first)
    await cache.release(again)
    assert not first.closed  # type: ignore[attr-defined]


async def test_a_replaced_driver_closes_when_its_last_user_releases_it(
        cache: DriverCache) -> None:
    old = await cache.get(datastore("pw", 1, "100"))  # a reconcile is using it
    new = await cache.get(datastore("rotated", 2, "200"))
    assert new is not old
    assert not old.closed  # type: ignore[attr-defined]
    await cache.release(old)
    assert old.closed  # type: ignore[attr-defined]
    assert not new.closed  # type: ignore[attr-defined]
    await cache.release(new)
    await cache.close()
    assert new.closed  # type: ignore[attr-defined]


async def test_settings_are_read_again_once_the_ttl_has_passed(
        cache: DriverCache, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within SETTINGS_TTL an unchanged generation reuses the driver without reading the
    DataStore's Secrets; after it, changed Secret content (same generation) replaces it."""
    first = await cache.get(datastore("pw", 1, "100"))
    same = await cache.get(datastore("changed-in-a-secret", 1, "101"))
    assert same is first
    monkeypatch.setattr(drivers, "SETTINGS_TTL", 0.0)
    fresh = await cache.get(datastore("changed-in-a-secret", 1, "102"))
    assert fresh is not first
    for driver in (first, same, fresh):
        await cache.release(driver)
    assert first.closed  # type: ignore[attr-defined]
    await cache.close()
