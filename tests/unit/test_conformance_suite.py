"""The conformance run's pure parts: the spec list, chunks, focus, JUnit and the summary;
and one chunk run with a stand-in for e2e.test (a script writing what e2e.test writes)."""

from __future__ import annotations

import json
import re
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from haku.dev import conformance_run as run
from haku.dev import conformance_suite as suite
from haku.dev.conformance_suite import (
    SUITE,
    Gap,
    Result,
    Spec,
    conformance_specs,
    first_line,
    focus,
    known_gap,
    merged_junit,
    parse_junit,
    parse_spec_list,
    re2_quote,
    render_summary,
    select,
    split,
    summarize,
)

LIST = """\
I1201 06:52:00.000000   123 test_context.go:564] Tolerating taints "node-role.kubernetes.io/control-plane"
The following spec names can be used with 'ginkgo run --focus/skip':
    test/e2e/apps/deployment.go:120: [sig-apps] Deployment RollingUpdateDeployment should delete old pods and create new ones [Conformance]
    test/e2e/apps/daemon_set.go:200: [sig-apps] Daemon set [Serial] should rollback without unnecessary restarts [Conformance]
    test/e2e/network/dns.go:50: [sig-network] DNS should provide DNS for services  [Conformance]
    test/e2e/network/dns.go:90: [sig-network] DNS should resolve DNS of partial qualified names [Feature:Foo]
    test/e2e/node/pods.go:10: [sig-node] Pods should be updated [NodeConformance] [Conformance]
    test/e2e/node/kill.go:10: [sig-node] kubelet should restart [Disruptive] [Conformance]
    test/e2e/apimachinery/webhook.go:300: [sig-api-machinery] AdmissionWebhook [Privileged:ClusterAdmin] should be able to deny pod and configmap creation [Conformance]

"""  # noqa: E501


def test_the_list_is_parsed_and_the_parallel_conformance_set_kept() -> None:
    specs = parse_spec_list(LIST)
    assert len(specs) == 7
    assert specs[0].location == "test/e2e/apps/deployment.go:120"
    kept = conformance_specs(specs)
    assert [s.name for s in kept] == sorted([
        "[sig-apps] Deployment RollingUpdateDeployment should delete old pods and create new "
        "ones [Conformance]",
        "[sig-network] DNS should provide DNS for services  [Conformance]",
        "[sig-node] Pods should be updated [NodeConformance] [Conformance]",
        "[sig-api-machinery] AdmissionWebhook [Privileged:ClusterAdmin] should be able to deny "
        "pod and configmap creation [Conformance]"])
    assert [s.sig for s in kept] == ["sig-api-machinery", "sig-apps", "sig-network", "sig-node"]


def test_select_takes_the_matching_specs_and_refuses_a_pattern_that_matches_none() -> None:
    kept = conformance_specs(parse_spec_list(LIST))
    assert [s.sig for s in select(kept, [r"DNS should provide", r"\[sig-apps\]"])] == [
        "sig-apps", "sig-network"]
    with pytest.raises(ValueError, match="no spec matches"):
        select(kept, [r"DNS should provide", r"no such spec"])
    with pytest.raises(ValueError, match="not a regular expression"):
        select(kept, [r"DNS ("])


def test_split_deals_round_robin_into_non_empty_chunks() -> None:
    specs = [Spec(f"[sig-x] s{i:02d}") for i in range(10)]
    chunks = split(specs, 3)
    assert [len(c) for c in chunks] == [4, 3, 3]
    assert chunks[0][:2] == [specs[0], specs[3]]
    assert sorted((s for c in chunks for s in c), key=lambda s: s.name) == specs
    assert [len(c) for c in split(specs[:2], 5)] == [1, 1]
    with pytest.raises(ValueError):
        split(specs, 0)


def test_the_focus_matches_exactly_the_chunk_s_names() -> None:
    specs = conformance_specs(parse_spec_list(LIST))
    chunk = specs[:2]
    # Python's re and Go's RE2 agree on what re2_quote escapes.
    # ginkgo matches the focus against the suite's description, a space and the full name.
    pattern = re.compile(focus(chunk))
    for s in specs:
        assert bool(pattern.match(f"{SUITE} {s.name}")) == (s in chunk), s.name
        assert not pattern.match(s.name)
    # A name that is a prefix of another does not select the longer one.
    short = Spec("[sig-x] a [Conformance]")
    assert not re.match(focus([short]), f"{SUITE} [sig-x] a [Conformance] more")
    assert re2_quote("a.b (c) [d] {1} x|y ^$ *+?\\") == \
        r"a\.b \(c\) \[d\] \{1\} x\|y \^\$ \*\+\?\\"


JUNIT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="4" disabled="0" errors="0" failures="1" time="30.5">
  <testsuite name="Kubernetes e2e suite" tests="5" skipped="1" failures="2" time="30.5">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="0.2"></testcase>
    <testcase name="[sig-apps] Deployment RollingUpdateDeployment should delete old pods and create new ones [Conformance]" classname="Kubernetes e2e suite" status="passed" time="12.0"></testcase>
    <testcase name="[sig-network] DNS should provide DNS for services  [Conformance]" classname="Kubernetes e2e suite" status="failed" time="18.3">
      <failure type="failed">[FAILED] DNS lookups failed: timed out
In [It] at: k8s.io/kubernetes/test/e2e/network/dns_common.go:475 @ 12/01/26 07:00:00.000
</failure>
    </testcase>
    <testcase name="[sig-node] kubelet should restart [Disruptive] [Conformance]" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[It] [sig-node] ConfigMap should be consumable via the environment [NodeConformance] [Conformance]" classname="Kubernetes e2e suite" status="failed" time="4.0"><failure message="Expected data-1" type="failed">details</failure></testcase>
  </testsuite>
</testsuites>
"""  # noqa: E501


def test_junit_results_and_the_summary_per_sig() -> None:
    results = parse_junit(JUNIT)
    assert [(r.state, r.failed) for r in results] == [
        ("passed", False), ("passed", False), ("failed", True), ("skipped", False),
        ("failed", True)]
    assert results[2].message.startswith("[FAILED] DNS lookups failed")
    assert results[4].name.startswith("[sig-node] ConfigMap")  # "[It] " is dropped
    expected = [Spec(results[1].name), Spec(results[2].name), Spec(results[4].name),
                Spec("[sig-storage] never ran [Conformance]")]
    gaps = [Gap(r"ConfigMap should be consumable via the environment", "the image lacks data-1")]
    summary = summarize(expected, results, gaps)
    assert summary.passed == 1 and summary.failed == 2
    assert {s: (c.passed, c.failed) for s, c in summary.by_sig.items()} == {
        "sig-apps": (1, 0), "sig-network": (0, 1), "sig-node": (0, 1)}
    assert summary.not_run == ["[sig-storage] never ran [Conformance]"]
    dns, env = summary.failures
    assert dns["reason"] == "[FAILED] DNS lookups failed: timed out" and dns["known"] is None
    assert env["reason"] == "Expected data-1" and env["known"] == "the image lacks data-1"
    assert [f["name"] for f in summary.unexplained] == [
        results[2].name, "[sig-storage] never ran [Conformance]"]
    text = render_summary(summary)
    assert "| sig-network | 0 | 1 | 0 |" in text
    assert "1 of 4 specs passed, 2 failed, 1 never reported." in text
    assert "not explained): [FAILED] DNS lookups failed: timed out" in text
    assert "(failed; known: the image lacks data-1): Expected data-1" in text
    assert json.loads(json.dumps(summary.to_dict()))["by_sig"]["sig-apps"]["passed"] == 1


def test_a_failed_suite_node_counts_and_the_merged_junit_reads_back() -> None:
    results = [Result("[SynchronizedBeforeSuite]", "failed", 1.0, "nodes not ready\nmore"),
               Result("[sig-a] x [Conformance]", "passed", 2.0)]
    summary = summarize([Spec("[sig-a] x [Conformance]")], results)
    assert summary.by_sig["suite"].failed == 1
    assert summary.failures[0]["reason"] == "nodes not ready more"
    again = parse_junit(merged_junit(results))
    assert [(r.name, r.state, r.seconds) for r in again] == [
        ("[SynchronizedBeforeSuite]", "failed", 1.0), ("[sig-a] x [Conformance]", "passed", 2.0)]
    suite = ET.fromstring(merged_junit(results)).find("testsuite")  # noqa: S314
    assert suite is not None and suite.get("failures") == "1"


def test_an_expected_spec_that_was_skipped_is_not_a_pass() -> None:
    name = "[sig-a] x [Conformance]"
    summary = summarize([Spec(name)], [Result(name, "skipped")])
    assert summary.passed == 0 and summary.skipped == [name]
    assert summary.unexplained == [{"name": name, "reason": "skipped by e2e.test",
                                    "known": None}]
    assert "0 of 1 specs passed, 0 failed, 1 skipped." in render_summary(summary)


def test_first_line_and_known_gaps() -> None:
    assert first_line("\n\n  [FAILED] x  \nmore") == "[FAILED] x more"
    assert first_line("[FAILED] Expected\n    <int>: 440\nto be ==\n    <int>: 400\n"
                      "In [It] at: chunking.go:202\nlater") == \
        "[FAILED] Expected <int>: 440 to be == <int>: 400"
    assert first_line("") == "(no message)"
    assert first_line("y" * 400, limit=10) == "y" * 9 + "…"
    assert known_gap("[sig-node] Pods should be updated [Conformance]") is None
    assert known_gap("[sig-x] a [Conformance]", gaps=[Gap(r"a \[Conf", "because")]) == "because"
    # A gap with a message explains that failure of the spec only.
    crd = ("[sig-api-machinery] CustomResourceDefinition resources [Privileged:ClusterAdmin] "
           "Simple CustomResourceDefinition creating/deleting custom resource definition "
           "objects works [Conformance]")
    assert known_gap(crd, "[FAILED] deleting CustomResourceDefinition: context deadline "
                          "exceeded\nIn [It] at: x.go:76")
    assert known_gap(crd, "[FAILED] creating CustomResourceDefinition: boom") is None
    assert known_gap(
        "[sig-api-machinery] CustomResourcePublishOpenAPI [Privileged:ClusterAdmin] works for "
        "multiple CRDs of different groups [Conformance]",
        "[FAILED] failed to delete CustomResourceDefinition(e2e-test-crd-publish-openapi-3628-"
        "368-crds.crd-publish-openapi-test-foo.example.com): context deadline exceeded")
    assert known_gap("[sig-node] Pods x [Conformance]",
                     "deleting CustomResourceDefinition: context deadline exceeded") is None
    assert known_gap(crd) is None


def _stand_in(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "e2e.test"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_a_chunk_keeps_its_own_results_and_a_missing_report_fails_it(tmp_path: Path) -> None:
    # The stand-in writes, like e2e.test --report-dir, junit_01.xml with every spec (the ones
    # its focus left out as skipped) and prints a bullet per spec run.
    e2e = _stand_in(tmp_path, 'for a in "$@"; do case "$a" in --report-dir=*) '
                    'dir="${a#--report-dir=}";; esac; done\n'
                    f"cat > \"$dir/junit_01.xml\" <<'EOF'\n{JUNIT}EOF\necho •\n")
    chunk = run.Chunk(1, [Spec("[sig-apps] Deployment RollingUpdateDeployment should delete "
                               "old pods and create new ones [Conformance]")],
                      tmp_path / "chunk-01")
    argv = run.e2e_argv(e2e, tmp_path / "k.conf", Path("/bin/kubectl"), chunk, 60)
    assert f"--report-dir={chunk.directory}" in argv and "--provider=skeleton" in argv
    run.run_chunk(chunk, argv, 60)
    assert chunk.returncode == 0 and not chunk.timed_out
    # Its own spec, and the failures of the report (a chunk reports what failed in it).
    assert [(r.state, r.name[:18]) for r in chunk.results] == [
        ("passed", "[sig-apps] Deploym"), ("failed", "[sig-network] DNS "),
        ("failed", "[sig-node] ConfigM")]
    assert run._finished_in_log(chunk.log) == 1

    silent = run.Chunk(2, chunk.specs, tmp_path / "chunk-02")
    run.run_chunk(silent, [str(_stand_in(tmp_path, "exit 3\n"))], 60)
    assert silent.returncode == 3
    assert [r.state for r in silent.results] == ["failed"]
    assert "without a JUnit report" in silent.results[0].message


def test_a_chunk_that_hangs_is_killed_after_its_timeout(tmp_path: Path) -> None:
    chunk = run.Chunk(1, [Spec("[sig-a] x [Conformance]")], tmp_path / "c")
    run.run_chunk(chunk, [str(_stand_in(tmp_path, "sleep 600\n"))], timeout=-119)
    assert chunk.timed_out and chunk.returncode is not None and chunk.seconds < 30
    assert "timed out" in chunk.results[0].message


def test_run_suite_merges_the_chunks_and_writes_the_reports(tmp_path: Path) -> None:
    names = [f"[sig-{s}] spec {i} [Conformance]" for i, s in enumerate("abcab")]
    cases = "".join(f'<testcase name="{n}" status="passed" time="1"></testcase>'
                    for n in names)
    e2e = _stand_in(tmp_path, 'for a in "$@"; do case "$a" in --report-dir=*) '
                    'dir="${a#--report-dir=}";; esac; done\n'
                    f"echo '<testsuites><testsuite>{cases}</testsuite></testsuites>' "
                    '> "$dir/junit_01.xml"\n')
    lines: list[str] = []
    outcome = run.run_suite(e2e, tmp_path / "k", Path("/bin/kubectl"),
                            [Spec(n) for n in names],
                            run.Options(out_dir=tmp_path / "out", parallel=2, chunk_size=2),
                            lines.append)
    assert len(outcome.chunks) == 3
    assert outcome.summary.passed == 5 and outcome.summary.failed == 0
    assert not outcome.summary.unexplained
    assert len(parse_junit((tmp_path / "out" / "junit.xml").read_text())) == 5
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["passed"] == 5
    assert "5 of 5 specs passed" in (tmp_path / "out" / "summary.md").read_text()
    assert sum("chunk" in line and "done in" in line for line in lines) == 3


def test_a_finished_run_is_summarized_again_under_todays_gaps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["[sig-a] crd spec [Conformance]", "[sig-b] other spec [Conformance]"]
    failure = ('<testcase name="{}" status="failed" time="1"><failure message="[FAILED] '
               'deleting CustomResourceDefinition: context deadline exceeded"/></testcase>')
    out = tmp_path / "run"
    (out / "chunk-01").mkdir(parents=True)
    (out / "chunk-01" / "junit_01.xml").write_text(
        "<testsuites><testsuite>" + failure.format(names[0]) + "</testsuite></testsuites>")
    # chunk 2 left no report: its spec never reported
    (out / "plan.json").write_text(json.dumps([{"chunk": 1, "specs": names[:1]},
                                               {"chunk": 2, "specs": names[1:]}]))
    (out / "summary.json").write_text(json.dumps({"passed": 0, "seconds": 61.5,
                                                  "datastore": "postgres"}))
    monkeypatch.setattr(suite, "KNOWN_GAPS", (Gap(r"crd spec", "upstream race",
                                                  message="deleting CustomResourceDefinition"),))
    summary = run.resummarize(out)
    assert [(f["name"], f["known"]) for f in summary.failures] == [
        (names[0], "upstream race"), ("[chunk 2] report", None)]
    assert [u["name"] for u in summary.unexplained] == ["[chunk 2] report", names[1]]
    written = json.loads((out / "summary.json").read_text())
    assert (written["seconds"], written["datastore"], written["resummarized"]) == (
        61.5, "postgres", True)
    assert written["failed"] == 2 and written["not_run"] == [names[1]]
    assert "known: upstream race" in (out / "summary.md").read_text()
    with pytest.raises(run.ConformanceRunError, match="not a finished run"):
        run.resummarize(tmp_path / "nothing")
