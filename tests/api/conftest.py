"""What the API-tier modules that reconcile tenants on a fake DataStore share: each module
names its namespace (``NS``) and its DataStore (``DS``); a module may define its own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from lightkube import AsyncClient

from haku.dev.cluster import DevCluster
from tests.fake_datastores import CountingDriver, use_fake_datastores
from tests.kube import namespace_client


@pytest.fixture
async def client(request: pytest.FixtureRequest,
                 api_cluster: DevCluster) -> AsyncIterator[AsyncClient]:
    """A client of the API tier in the module's namespace ``NS`` (made if missing)."""
    async with namespace_client(api_cluster, request.module.NS) as c:
        yield c


@pytest.fixture
def fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> CountingDriver:
    """The module's DataStore ``DS``, served by a :class:`CountingDriver`."""
    driver = CountingDriver()
    use_fake_datastores(monkeypatch, {request.module.DS: driver})
    return driver
