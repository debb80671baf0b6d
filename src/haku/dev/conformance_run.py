"""``haku dev conformance run``: upstream's conformance suite against a Haku tenant.

The steps (docs/conformance.md):

1. ``e2e.test`` and ``agnhost`` at the tenant's version (:mod:`haku.dev.toolchain`, cached),
   the test images built and pushed to the dev cluster's registry
   (:mod:`haku.dev.test_images`), Konnectivity's images on the nodes (:mod:`haku.dev.addons`);
2. a tenant shaped as the demo's, with CoreDNS, kube-proxy and Konnectivity, on the chosen
   DataStore, and two dev workers joined to it (:func:`prepare_tenant`; a tenant and workers
   there already are reused);
3. the ``[Conformance]`` specs without ``[Serial]``/``[Disruptive]`` (or a subset) dealt into
   chunks, each an ``e2e.test`` process with its own ``--ginkgo.focus``, a JUnit report and a
   timeout, several at a time (:func:`run_suite`);
4. the results merged: ``junit.xml``, ``summary.json`` and ``summary.md`` (passed and failed
   per SIG, each failure with its reason) in the output directory; the summary is printed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.apps_v1 import Deployment

from haku.dev import addons, demo, samples, test_images, toolchain
from haku.dev import worker as workers
from haku.dev.cluster import DevCluster
from haku.dev.conformance_suite import (
    Result,
    Spec,
    Summary,
    conformance_specs,
    focus,
    merged_junit,
    parse_junit,
    parse_spec_list,
    render_summary,
    select,
    split,
    summarize,
)
from haku.dev.layout import Layout
from haku.errors import HakuError

Printer = Callable[[str], None]

NAMESPACE = "conformance"
WORKERS = 2
LIST_TIMEOUT = 180.0
TENANT_READY_TIMEOUT = 300.0
HEARTBEAT = 60.0

# A representative subset for `make test` (tests/node/test_conformance.py): the paths where
# a hosted control plane differs from a plain cluster (webhooks, CRD conversion and the
# aggregated API server dialled through Konnectivity; logs and exec reaching the kubelet;
# DNS, Services and pod traffic between the two workers; controllers and admission on the
# tenant's datastore; the busybox image passing names such as data-1 through its shell).
# Regular expressions on the spec names, each selecting one spec of v1.37.2.
FAST_SUBSET = (
    r"AdmissionWebhook \[Privileged:ClusterAdmin\] should be able to deny pod and configmap "
    r"creation",
    r"CustomResourceConversionWebhook \[Privileged:ClusterAdmin\] should be able to convert "
    r"from CR v1 to CR v2",
    r"Aggregator Should be able to support the 1\.17 Sample API Server",
    r"\[sig-network\] DNS should provide DNS for services \[",
    r"\[sig-network\] Networking Granular Checks: Pods should function for intra-pod "
    r"communication: http \[",
    r"\[sig-network\] Services should serve a basic endpoint from pods \[",
    r"\[sig-node\] Pods should support remote command execution over websockets",
    r"\[sig-cli\] Kubectl logs logs should be able to retrieve and filter logs",
    r"\[sig-apps\] Deployment RollingUpdateDeployment should delete old pods and create new",
    r"\[sig-api-machinery\] Garbage collector should delete pods created by rc when not "
    r"orphaning \[",
    r"\[sig-storage\] Projected secret should be consumable from pods in volume \[",
    r"\[sig-node\] ConfigMap should be consumable via the environment \[",
    r"\[sig-auth\] ServiceAccounts should mount an API token into pods \[",
)


class ConformanceRunError(HakuError):
    """The suite could not be run (not: some specs failed)."""


@dataclass
class Options:
    out_dir: Path
    patterns: Sequence[str] = ()  # a subset (regular expressions on spec names); () = all
    parallel: int = 4
    chunk_size: int = 12
    chunk_timeout: float = 40 * 60.0
    extra_args: Sequence[str] = ()


@dataclass
class Chunk:
    index: int
    specs: list[Spec]
    directory: Path
    returncode: int | None = None
    timed_out: bool = False
    seconds: float = 0.0
    results: list[Result] = field(default_factory=list)

    @property
    def junit(self) -> Path:
        return self.directory / "junit_01.xml"  # e2e.test's own name under --report-dir

    @property
    def log(self) -> Path:
        return self.directory / "e2e.log"


@dataclass
class Outcome:
    summary: Summary
    chunks: list[Chunk]
    seconds: float
    out_dir: Path


# ---------------------------------------------------------------------------------------------
# e2e.test


def list_specs(e2e: Path, timeout: float = LIST_TIMEOUT) -> list[Spec]:
    """Every spec the binary holds (``--list-tests``: no cluster needed)."""
    try:
        done = subprocess.run([str(e2e), "--list-tests"], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConformanceRunError(f"{e2e} --list-tests: {e}") from e
    specs = parse_spec_list(done.stdout)
    if done.returncode != 0 or not specs:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise ConformanceRunError(f"{e2e} --list-tests exited {done.returncode} listing "
                                  f"{len(specs)} specs: {tail}")
    return specs


def planned_specs(e2e: Path, patterns: Sequence[str] = ()) -> list[Spec]:
    specs = conformance_specs(list_specs(e2e))
    if patterns:
        try:
            specs = select(specs, patterns)
        except ValueError as e:
            raise ConformanceRunError(f"--focus/--fast: {e}") from e
    return specs


def e2e_argv(e2e: Path, kubeconfig: Path, kubectl: Path, chunk: Chunk, timeout: float,
             extra: Sequence[str] = ()) -> list[str]:
    """One chunk's command line: the skeleton provider (no cloud), the tenant's kubeconfig,
    the cluster's kubectl, a focus on exactly its specs, its own JUnit report (e2e.test's
    shortened one: no labels, the failure's text once) and output."""
    return [str(e2e), f"--kubeconfig={kubeconfig}", "--provider=skeleton",
            f"--kubectl-path={kubectl}", f"--ginkgo.focus={focus(chunk.specs)}",
            f"--report-dir={chunk.directory}", f"--ginkgo.timeout={int(timeout)}s",
            "--ginkgo.no-color", "--disable-log-dump",
            f"--e2e-output-dir={chunk.directory}", *extra]


def run_chunk(chunk: Chunk, argv: Sequence[str], timeout: float) -> Chunk:
    """Run one chunk to its end or ``timeout`` (ginkgo's own timeout is the same, so it
    normally stops first and still writes its report; this one kills what hangs after)."""
    chunk.directory.mkdir(parents=True, exist_ok=True)
    chunk.junit.unlink(missing_ok=True)
    started = time.monotonic()
    with chunk.log.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                cwd=chunk.directory, start_new_session=True)
        try:
            chunk.returncode = proc.wait(timeout=timeout + 120)
        except subprocess.TimeoutExpired:
            chunk.timed_out = True
            toolchain.kill_group(proc)
            chunk.returncode = proc.wait()
        finally:
            toolchain.kill_group(proc)  # what it started and left behind
    chunk.seconds = time.monotonic() - started
    chunk.results = read_results(chunk)
    return chunk


def read_results(chunk: Chunk) -> list[Result]:
    """The chunk's results from its JUnit report; a missing or torn report is one failure
    (its specs then count as never reported)."""
    if chunk.junit.is_file():
        try:
            return own_results(chunk, parse_junit(chunk.junit.read_text()))
        except ET.ParseError as e:
            return [Result(f"[chunk {chunk.index}] report", "failed",
                           message=f"cannot read {chunk.junit}: {e}")]
    return [Result(f"[chunk {chunk.index}] report", "failed", message=(
        f"e2e.test {'timed out' if chunk.timed_out else 'exited'} "
        f"({chunk.returncode}) without a JUnit report; see {chunk.log}"))]


def own_results(chunk: Chunk, results: Sequence[Result]) -> list[Result]:
    """The results of the chunk's own specs, and every failure besides (a suite node's):
    the report also lists, as skipped, every spec the focus left out."""
    names = {s.name for s in chunk.specs}
    return [r for r in results if r.name in names or r.failed]


def _finished_in_log(log: Path) -> int:
    """About how many specs a running chunk has finished: ginkgo prints one ``•`` each."""
    try:
        return log.read_text(errors="replace").count("•")
    except OSError:
        return 0


def run_suite(e2e: Path, kubeconfig: Path, kubectl: Path, specs: Sequence[Spec],
              options: Options, out: Printer = print) -> Outcome:
    """The specs in chunks, ``options.parallel`` at a time; writes the reports into
    ``options.out_dir`` and returns the summary."""
    if not specs:
        raise ConformanceRunError("no spec to run")
    out_dir = options.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = split(specs, max(1, -(-len(specs) // options.chunk_size)))
    chunks = [Chunk(i + 1, group, out_dir / f"chunk-{i + 1:02d}") for i, group in
              enumerate(groups)]
    (out_dir / "plan.json").write_text(json.dumps(
        [{"chunk": c.index, "specs": [s.name for s in c.specs]} for c in chunks], indent=1))
    out(f"{len(specs)} specs in {len(chunks)} chunks, {options.parallel} at a time, each "
        f"at most {options.chunk_timeout / 60:.0f} min; reports in {out_dir}")
    started = time.monotonic()
    done: list[Chunk] = []
    lock = threading.Lock()

    def finished(future: Future[Chunk]) -> None:
        chunk = future.result()
        with lock:
            done.append(chunk)
            failed = sum(r.failed for r in chunk.results)
            out(f"  {_clock(started)}  chunk {chunk.index:2d} done in {chunk.seconds:5.0f}s: "
                f"{sum(r.state == 'passed' for r in chunk.results)} passed, {failed} failed"
                + (" (timed out)" if chunk.timed_out else "")
                + f"; {len(done)} of {len(chunks)} chunks done")

    with ThreadPoolExecutor(max_workers=options.parallel) as pool:
        futures = []
        for chunk in chunks:
            argv = e2e_argv(e2e, kubeconfig, kubectl, chunk, options.chunk_timeout,
                            options.extra_args)
            future = pool.submit(run_chunk, chunk, argv, options.chunk_timeout)
            future.add_done_callback(finished)
            futures.append(future)
        while not all(f.done() for f in futures):
            _wait_any(futures, HEARTBEAT)
            with lock:
                running = [c for c in chunks if c.directory.is_dir() and c not in done]
                passed = sum(r.state == "passed" for c in done for r in c.results)
                failed = sum(r.failed for c in done for r in c.results)
                partial = sum(_finished_in_log(c.log) for c in running)
            if not all(f.done() for f in futures):
                out(f"  {_clock(started)}  {len(done)} of {len(chunks)} chunks done "
                    f"({passed} passed, {failed} failed), {len(running)} running "
                    f"(about {partial} of their specs finished)")
        for f in futures:
            f.result()  # raise what a chunk's thread raised
    seconds = time.monotonic() - started
    results = [r for c in sorted(chunks, key=lambda c: c.index) for r in c.results]
    summary = summarize(specs, results)
    (out_dir / "junit.xml").write_text(merged_junit(results))
    write_summary(out_dir, summary, {"seconds": round(seconds, 1), "chunks": len(chunks),
                                     "parallel": options.parallel})
    return Outcome(summary, chunks, seconds, out_dir)


def write_summary(out_dir: Path, summary: Summary, run: dict[str, Any]) -> None:
    (out_dir / "summary.json").write_text(json.dumps(summary.to_dict() | run, indent=1) + "\n")
    (out_dir / "summary.md").write_text(render_summary(summary))


def resummarize(out_dir: Path) -> Summary:
    """The summary of the finished run in ``out_dir`` made again from its plan and its
    chunks' JUnit reports, under today's :data:`KNOWN_GAPS` (a gap documented after the
    run); rewrites summary.json (keeping what it says of the run: time, datastore, …) and
    summary.md."""
    try:
        plan = json.loads((out_dir / "plan.json").read_text())
        run_info = json.loads((out_dir / "summary.json").read_text())
    except (OSError, ValueError) as e:
        raise ConformanceRunError(f"{out_dir}: not a finished run ({e})") from None
    chunks = [Chunk(p["chunk"], [Spec(n) for n in p["specs"]],
                    out_dir / f"chunk-{p['chunk']:02d}") for p in plan]
    summary = summarize([s for c in chunks for s in c.specs],
                        [r for c in chunks for r in read_results(c)])
    fresh = summary.to_dict()
    write_summary(out_dir, summary, {k: v for k, v in run_info.items() if k not in fresh}
                  | {"resummarized": True})
    return summary


def _wait_any(futures: Sequence[Future[Chunk]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(f.done() for f in futures):
        time.sleep(1.0)


def _clock(started: float) -> str:
    s = int(time.monotonic() - started)
    return f"{s // 60:3d}m{s % 60:02d}s"


# ---------------------------------------------------------------------------------------------
# The tenant


def tenant_name(datastore: str) -> str:
    return f"conformance-{datastore}"


async def prepare_tenant(cluster: DevCluster, datastore: str = "etcd", workers_wanted: int =
                         WORKERS, out: Printer = print,
                         timeout: float = TENANT_READY_TIMEOUT) -> Path:
    """A tenant with CoreDNS, kube-proxy and Konnectivity on DataStore ``datastore``, Ready,
    with ``workers_wanted`` dev workers joined and Konnectivity connected; reuses what is
    there. Returns its admin kubeconfig (written under the state directory)."""
    lay = cluster.layout
    name = tenant_name(datastore)
    client = AsyncClient(KubeConfig.from_file(lay.admin_kubeconfig),
                         field_manager="haku-conformance", trust_env=False)
    try:
        for obj in samples.datastore_objects(lay):
            await client.apply(from_dict(obj), force=True)
        await client.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": NAMESPACE}}), force=True)
        doc = samples.tenant_control_plane(
            name, NAMESPACE, samples.DATASTORE_NAMES[datastore], cluster.versions.kubernetes,
            service_type="NodePort", port=None, addons=True)
        doc["spec"]["addons"]["konnectivity"] = {}
        await client.apply(from_dict(doc), force=True)
        out(f"TenantControlPlane {NAMESPACE}/{name} on DataStore "
            f"{samples.DATASTORE_NAMES[datastore]} (CoreDNS, kube-proxy, Konnectivity):")
        try:
            status = await demo.wait_condition(client, NAMESPACE, name, "Ready", timeout, out)
            # An operator just (re)deployed may be rolling the control plane to what it
            # renders now: specs run against a pod on its way out fail for no reason.
            await _wait_rolled_out(client, name, timeout, out)
            path = await demo.save_admin_kubeconfig(client, lay, NAMESPACE, name, status)
            await _join_workers(lay, f"{NAMESPACE}/{name}", workers_wanted, out)
            await demo.wait_condition(client, NAMESPACE, name, "KonnectivityConnected",
                                      timeout, out)
        except TimeoutError as e:
            raise ConformanceRunError(str(e)) from None
        return path
    finally:
        await client.close()


async def _wait_rolled_out(client: AsyncClient, name: str, timeout: float,
                           out: Printer) -> None:
    """Until the tenant's control-plane Deployment runs only up-to-date, available pods."""
    started = time.monotonic()
    told = False
    while True:
        if demo.rolled_out(await client.get(Deployment, name, namespace=NAMESPACE)):
            if told:
                out(f"    {time.monotonic() - started:.1f}s  control plane rolled out")
            return
        if time.monotonic() - started > timeout:
            raise ConformanceRunError(f"Deployment {NAMESPACE}/{name} not rolled out after "
                                      f"{timeout:.0f}s")
        if not told:
            out("    waiting for the control plane's rollout")
            told = True
        await asyncio.sleep(2.0)


async def _join_workers(lay: Layout, tenant: str, wanted: int, out: Printer) -> None:
    ready = [w for w in workers.list_workers(lay) if w.tenant == tenant and w.state == "ready"]
    for w in ready:
        out(f"  worker {w.name} (node {w.node_name}) already joined")
    for _ in range(wanted - len(ready)):
        join = await workers.tenant_join(lay.admin_kubeconfig, tenant, timedelta(minutes=30))
        mine = {w.node_name for w in workers.list_workers(lay) if w.tenant == tenant}
        prefix = tenant.split("/", 1)[1] + "-w"
        stale = {n for n in join.nodes if n.startswith(prefix)} - mine
        for node in sorted(stale):  # Nodes of workers gone with an earlier `haku dev down`
            out(f"  node {node} of an earlier worker: "
                + workers.delete_node(lay.bin / "kubectl", join.kubeconfig, node))
        await asyncio.to_thread(workers.add, lay, tenant, join.join, printer=out,
                                avoid_nodes=join.nodes - stale)


# ---------------------------------------------------------------------------------------------
# Everything


def prepare_tools(cluster: DevCluster, out: Printer = print) -> tuple[Path, Path]:
    """``e2e.test`` and ``agnhost`` built (cached), the test images built and pushed,
    Konnectivity's images on the nodes; returns the paths of ``e2e.test`` and ``kubectl``."""
    bins = toolchain.ensure(["e2e", "agnhost"], cluster.versions, cluster.cache, progress=out)
    report = test_images.build_and_push(list(test_images.GROUPS), cluster.versions,
                                        cluster.layout.registry_endpoint, cluster.cache,
                                        printer=out)
    out(f"test images: {len(report.built)} built or cached in {report.build_seconds:.1f}s, "
        f"pushed in {report.push_seconds:.1f}s")
    addons.ensure(cluster.layout, ("konnectivity",), out, versions=cluster.versions,
                  cache=cluster.cache)
    return bins["e2e"] / toolchain.E2E_BINARY, cluster.layout.bin / "kubectl"


def default_out_dir(layout: Layout, datastore: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return layout.state_dir / "conformance" / f"{datastore}-{stamp}"


def write_run_info(out_dir: Path, info: dict[str, Any]) -> None:
    path = out_dir / "summary.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps(data | info, indent=1) + "\n")


def run(cluster: DevCluster, datastore: str, options: Options, out: Printer = print) -> Outcome:
    """Everything ``make conformance`` does: the dev cluster up, the operator in-cluster (as
    ``make demo`` installs it), the tools and images, the tenant and its workers, the suite."""
    from haku.dev.cluster import OPERATOR

    if datastore not in samples.DATASTORE_NAMES:
        raise ConformanceRunError(f"unknown datastore {datastore!r}: choose from "
                                  f"{', '.join(samples.DATASTORE_NAMES)}")
    cluster.up()
    cluster.supervisor.stop(OPERATOR)  # a host operator of an earlier demo, if any
    out(f"operator: in-cluster, leader {demo.deploy_operator(cluster, out)}")
    e2e, kubectl = prepare_tools(cluster, out)
    specs = planned_specs(e2e, options.patterns)  # a bad --focus is refused before the tenant
    kubeconfig = asyncio.run(prepare_tenant(cluster, datastore, out=out))
    outcome = run_suite(e2e, kubeconfig, kubectl, specs, options, out)
    write_run_info(outcome.out_dir, {
        "datastore": datastore, "kubernetes": cluster.versions.kubernetes,
        "tenant": f"{NAMESPACE}/{tenant_name(datastore)}", "workers": WORKERS,
        "subset": list(options.patterns)})
    return outcome
