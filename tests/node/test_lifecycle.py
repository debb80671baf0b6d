"""`haku dev up` twice is safe; `haku dev status` tells the truth."""

from __future__ import annotations

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
