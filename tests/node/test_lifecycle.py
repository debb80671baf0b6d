"""`haku dev up` twice is safe; `haku dev status` tells the truth."""

from __future__ import annotations

import contextlib
import os
import signal
import time

from haku.dev.cluster import DevCluster


def test_up_again_leaves_everything_running_as_it_was(node_cluster: DevCluster) -> None:
    before = {r.name: r.pid for r in node_cluster.supervisor.records()}
    report = node_cluster.up()
    after = {r.name: r.pid for r in node_cluster.supervisor.records()}
    assert report.started == []
    assert set(report.already_running) == set(node_cluster.components)
    assert before == after


def test_a_dead_component_is_restarted_by_up(node_cluster: DevCluster) -> None:
    record = node_cluster.supervisor.running("kube-scheduler")
    assert record is not None
    node_cluster.supervisor.stop("kube-scheduler")
    assert node_cluster.status()["components"]["kube-scheduler"]["running"] is False
    report = node_cluster.up()
    assert report.started == ["kube-scheduler"]
    status = node_cluster.status()
    assert all(c["running"] for c in status["components"].values())
    assert status["apiserver_ready"] and status["node_ready"]


def test_up_after_a_crash_restarts_everything_from_the_stale_records(
        node_cluster: DevCluster) -> None:
    """Every recorded process SIGKILLed (a power cut, an OOM kill): the PID records are stale,
    the state directory is kept, and `haku dev up` starts it all again, Ready."""
    records = node_cluster.supervisor.records()
    assert records
    for record in records:
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(r.alive() for r in records) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(r.alive() for r in records)
    assert {r.name for r in node_cluster.supervisor.records()} == {r.name for r in records}

    report = node_cluster.up()

    assert set(report.started) == set(node_cluster.components)
    status = node_cluster.status()
    assert all(c["running"] for c in status["components"].values())
    assert status["apiserver_ready"] and status["node_ready"]
