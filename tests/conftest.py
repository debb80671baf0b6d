"""Test tiers. Unit tests need nothing; ``api`` tests get a real etcd + kube-apiserver (seconds);
``datastore`` tests get the shared datastores (etcd, PostgreSQL, MariaDB) and kine; ``node``
tests get the full local admin cluster (kubelet, containerd, datastores).

Tier clusters live in their own state directories (and ports, but for the node tier) and are
stopped when the session ends. Tests are marked by their directory (tests/api, …).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from haku.dev.cluster import DevCluster
from haku.dev.layout import Layout, Ports

TEST_ROOT = Path(os.environ.get("HAKU_TEST_DIR", "/var/lib/haku/test"))
# Added to every port of the api and datastore tiers, so that two runs (each with its own
# HAKU_TEST_DIR) can go on side by side; keep the sums below 32768 (the ephemeral range).
PORT_OFFSET = int(os.environ.get("HAKU_TEST_PORT_OFFSET", "0"))


def shifted(layout: Layout) -> Layout:
    """``layout`` with :data:`PORT_OFFSET` added to each of its ports."""
    if not PORT_OFFSET:
        return layout
    ports = Ports(**{k: v + PORT_OFFSET for k, v in asdict(layout.ports).items()})
    return replace(layout, ports=ports)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in ("api", "datastore", "node"):
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the api and node tiers run real daemons and need root")


def _up(cluster: DevCluster) -> None:
    """Start ``cluster``; if that fails, stop what did start before reporting the failure."""
    try:
        cluster.up()
    except BaseException:
        cluster.down()
        raise


@pytest.fixture(scope="session")
def api_cluster() -> Iterator[DevCluster]:
    _needs_root()
    cluster = DevCluster(shifted(Layout.api_only(TEST_ROOT / "api")), printer=lambda _: None)
    cluster.down(purge=True)
    _up(cluster)
    yield cluster
    cluster.down(purge=True)


@pytest.fixture(scope="session")
def datastores_cluster() -> Iterator[DevCluster]:
    _needs_root()
    cluster = DevCluster(shifted(Layout.datastores_only(TEST_ROOT / "datastores")),
                         printer=lambda _: None)
    cluster.down(purge=True)
    _up(cluster)
    yield cluster
    cluster.down()


class NodeClusterHandle:
    """The full cluster, brought up on first use; a test that takes it down marks it so."""

    def __init__(self) -> None:
        self.cluster = DevCluster(Layout(state_dir=TEST_ROOT / "node"),
                                  printer=lambda line: print(line, flush=True))
        self.up_count = 0

    def ensure_up(self) -> DevCluster:
        _up(self.cluster)
        self.up_count += 1
        return self.cluster


@pytest.fixture(scope="session")
def node_handle() -> Iterator[NodeClusterHandle]:
    _needs_root()
    handle = NodeClusterHandle()
    handle.cluster.down(purge=True)  # start clean, whatever an earlier run left behind
    yield handle
    handle.cluster.down()  # the state directory stays, with its logs, for a look afterwards


@pytest.fixture
def node_cluster(node_handle: NodeClusterHandle) -> DevCluster:
    return node_handle.ensure_up()
