"""Benchmark of tenant backup and restore on the real datastores; prints one JSON document.

Per driver (etcd, PostgreSQL, MariaDB) and tenant size (default 1,000 and 10,000 objects): a
source tenant is filled with ConfigMap-sized values (500-3,000 bytes, protobuf-like: the
``k8s\\0`` envelope, a header naming the object, then half random bytes and half text) under
keys like ``/configmaps/bench/cm-00001``, written with ``driver.load`` (not through
kube-apiserver). Then, each in a fresh child process of this script, so that its peak RSS
(VmHWM, see :func:`peak_rss_kib`) is that operation's own:

- backup: ``driver.snapshot`` into ``haku.backup.format.Writer`` (a file on disk, fsynced);
- restore: ``format.verify`` (the file read through once), then ``format.Reader`` into
  ``driver.load`` of a new, empty tenant; the restored keyspace is then compared with the
  source (the drivers' order-independent digest);
- idle: the same imports and a connected driver (``check()``), nothing moved: the baseline.

The datastores are a datastores-only local cluster with a state directory and ports of its own
(``--state-dir``, ``--port-offset``), so the bench runs beside the node tier, a dev cluster or
the test tiers without ``flock``. Every tenant it makes is deleted, and the cluster purged.
Run as root: ``make bench-backup`` or ``.venv/bin/python bench/backup.py [--sizes 1000,10000]
[--runs 3] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import log
from haku.backup import format as fmt
from haku.datastore import Driver, Entry, Tenant, open_driver
from haku.datastore.digest import Digest
from haku.dev.cluster import DevCluster
from haku.dev.datastores import driver_settings
from haku.dev.layout import Layout, Ports

STORES = ("etcd", "postgres", "mariadb")
VALUE_MIN, VALUE_MAX = 500, 3000
PASSWORD = "benchbackup0123456789"  # noqa: S105 (a throwaway tenant's)
MIB = 1 << 20

# ---------------------------------------------------------------------------- the data

_WORDS = ("replicas", "image", "registry.example.com/app", "timeoutSeconds", "true", "false",
          "log-level", "info", "endpoint", "https://api.internal:8443", "retries", "cache",
          "feature-gates", "Enabled", "threshold", "0.75", "port", "8080", "database", "name")


def value_of(i: int, rng: random.Random) -> bytes:
    """A ConfigMap as kube-apiserver stores it, roughly: the protobuf envelope, the object's
    identity, then its data (half random bytes, half config text), 500-3,000 bytes in all."""
    size = rng.randint(VALUE_MIN, VALUE_MAX)
    head = (b"k8s\x00\n\x0f\n\x02v1\x12\tConfigMap\x12" + f"\n\x08cm-{i:05d}\x12\x05bench"
            f"\x1a$0d3c8e7a-5b1f-4c2d-9e6a-{i:012d}\"\x06{1000 + i}".encode())
    text = bytearray()
    while len(text) < (size - len(head)) // 2:
        text += f"{rng.choice(_WORDS)}: {rng.choice(_WORDS)}\n".encode()
    rest = size - len(head) - len(text)
    return (head + bytes(text) + rng.randbytes(max(rest, 0)))[:size]


def key_of(i: int) -> bytes:
    return f"/configmaps/bench/cm-{i:05d}".encode()


async def generated(n: int) -> AsyncIterator[Entry]:
    rng = random.Random(n)  # noqa: S311 (the same data for a given size, run after run)
    for i in range(1, n + 1):
        yield Entry(key_of(i), value_of(i, rng), revision=i)


def tenant(role: str, n: int) -> Tenant:
    name = f"bench-backup-{role}-{n}"
    return Tenant(name, name, PASSWORD)


# -------------------------------------------------------------------- the child processes


def peak_rss_kib() -> int:
    """This process's own peak RSS: VmHWM, the high-water mark of its address space.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries the parent's high-water mark over
    fork and exec into it (``setmax_mm_hiwater_rss`` at exec), so in a child of a bigger
    process it reports the parent's peak, not the child's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def cpu_seconds() -> float:
    """This process's user + system CPU time so far."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def child_layout(state_dir: Path, offset: int) -> Layout:
    lay = Layout.datastores_only(state_dir)
    if not offset:
        return lay
    return replace(lay, ports=Ports(**{k: v + offset for k, v in asdict(lay.ports).items()}))


async def child_idle(driver: Driver) -> dict[str, Any]:
    await driver.check()
    return {}


async def child_backup(driver: Driver, source: Tenant, path: Path) -> dict[str, Any]:
    header = fmt.Header(source={"namespace": "bench", "name": source.schema, "uid": "",
                                "dataStore": "bench", "driver": driver.driver},
                        spec={}, kubernetes_version="",
                        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    started, cpu = time.perf_counter(), cpu_seconds()
    writer = fmt.Writer(path, header)
    try:
        async for entry in driver.snapshot(source):
            writer.add(entry)
    except BaseException:
        writer.abort()
        raise
    summary = writer.close()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "cpu_seconds": cpu_seconds() - cpu,
            "entries": summary.entries, "value_bytes": summary.value_bytes,
            "file_bytes": path.stat().st_size}


async def _entries(reader: fmt.Reader) -> AsyncIterator[Entry]:
    for entry in reader.entries():  # as haku restore does: the file read in the loop
        yield entry
        await asyncio.sleep(0)


async def child_restore(driver: Driver, target: Tenant, path: Path) -> dict[str, Any]:
    started, cpu = time.perf_counter(), cpu_seconds()
    _, summary, _ = fmt.verify(path)
    verified = time.perf_counter()
    with fmt.Reader(path) as reader:
        written = await driver.load(target, _entries(reader))
    done = time.perf_counter()
    return {"seconds": done - started, "cpu_seconds": cpu_seconds() - cpu,
            "verify_seconds": verified - started,
            "load_seconds": done - verified, "entries": written,
            "value_bytes": summary.value_bytes}


def child_main(args: argparse.Namespace) -> int:
    """One operation in this fresh process; its figures and peak RSS as JSON on stdout."""
    lay = child_layout(Path(args.state_dir), args.port_offset)

    async def run() -> dict[str, Any]:
        driver = open_driver(driver_settings(lay, args.store))
        try:
            if args.child == "idle":
                return await child_idle(driver)
            if args.child == "backup":
                return await child_backup(driver, tenant("src", args.n), Path(args.file))
            return await child_restore(driver, tenant("dst", args.n), Path(args.file))
        finally:
            await driver.close()

    result = asyncio.run(run())
    print(json.dumps({**result, "peak_rss_kib": peak_rss_kib(),
                      "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
    return 0


def in_child(args: argparse.Namespace, op: str, store: str, n: int = 0,
             file: Path | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", op, "--store", store, "--n", str(n),
           "--state-dir", args.state_dir, "--port-offset", str(args.port_offset)]
    if file is not None:
        cmd += ["--file", str(file)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{op} on {store} (n={n}) failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------- the parent


async def digest_of(driver: Driver, t: Tenant) -> Digest:
    digest = Digest()
    async for entry in driver.snapshot(t):
        digest.add(entry)
    return digest


def rates(op: dict[str, Any]) -> dict[str, Any]:
    s = op["seconds"]
    return {"objects_per_s": round(op["entries"] / s, 1),
            "mib_per_s": round(op["value_bytes"] / MIB / s, 2)}


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


async def measure(args: argparse.Namespace, store: str, n: int, files: Path) -> dict[str, Any]:
    src, dst = tenant("src", n), tenant("dst", n)
    driver = open_driver(driver_settings(child_layout(Path(args.state_dir), args.port_offset),
                                         store))
    path = files / f"{store}-{n}.haku-backup.gz"
    try:
        await driver.delete_tenant(src)
        await driver.ensure_tenant(src)
        t0 = time.perf_counter()
        filled = await driver.load(src, generated(n))
        fill_s = time.perf_counter() - t0
        source_digest = await digest_of(driver, src)
        assert filled == n == source_digest.entries, (filled, n, source_digest.entries)
        backups, restores, matches = [], [], []
        for run in range(args.runs):
            backups.append(await asyncio.to_thread(in_child, args, "backup", store, n, path))
            await driver.delete_tenant(dst)
            await driver.ensure_tenant(dst)
            restores.append(await asyncio.to_thread(in_child, args, "restore", store, n, path))
            matches.append(await digest_of(driver, dst) == source_digest)
            log(f"{store} n={n} run {run + 1}: backup {backups[-1]['seconds']:.2f} s "
                f"{backups[-1]['peak_rss_kib'] / 1024:.0f} MiB, restore "
                f"{restores[-1]['seconds']:.2f} s {restores[-1]['peak_rss_kib'] / 1024:.0f} MiB")
        value_bytes = backups[0]["value_bytes"]
        backup = {"seconds": median_of(backups, "seconds"), "entries": n,
                  "value_bytes": value_bytes}
        restore = {"seconds": median_of(restores, "seconds"), "entries": n,
                   "value_bytes": value_bytes}
        return {
            "objects": n,
            "value_mib": round(value_bytes / MIB, 2),
            "fill": {"how": "driver.load of generated entries (not through kube-apiserver)",
                     "seconds": round(fill_s, 2)},
            "backup": {
                "seconds": round(backup["seconds"], 3), **rates(backup),
                "child_cpu_seconds": round(median_of(backups, "cpu_seconds"), 3),
                "file_bytes": backups[0]["file_bytes"],
                "file_mib": round(backups[0]["file_bytes"] / MIB, 2),
                "file_to_values": round(backups[0]["file_bytes"] / value_bytes, 3),
                "peak_rss_mib": round(max(r["peak_rss_kib"] for r in backups) / 1024, 1),
                "runs": [{"seconds": round(r["seconds"], 3),
                          "cpu_seconds": round(r["cpu_seconds"], 3),
                          "peak_rss_kib": r["peak_rss_kib"],
                          "ru_maxrss_kib": r["ru_maxrss_kib"]} for r in backups],
            },
            "restore": {
                "seconds": round(restore["seconds"], 3), **rates(restore),
                "child_cpu_seconds": round(median_of(restores, "cpu_seconds"), 3),
                "verify_seconds": round(median_of(restores, "verify_seconds"), 3),
                "load_seconds": round(median_of(restores, "load_seconds"), 3),
                "load_objects_per_s": round(n / median_of(restores, "load_seconds"), 1),
                "peak_rss_mib": round(max(r["peak_rss_kib"] for r in restores) / 1024, 1),
                "restored_equals_source": all(matches),
                "runs": [{"seconds": round(r["seconds"], 3),
                          "cpu_seconds": round(r["cpu_seconds"], 3),
                          "verify_seconds": round(r["verify_seconds"], 3),
                          "load_seconds": round(r["load_seconds"], 3),
                          "peak_rss_kib": r["peak_rss_kib"],
                          "ru_maxrss_kib": r["ru_maxrss_kib"]} for r in restores],
            },
        }
    finally:
        for t in (src, dst):
            await driver.delete_tenant(t)
        left = [s for s in await driver.list_tenants() if "bench-backup" in s]
        assert not left, f"tenants left in {store}: {left}"
        path.unlink(missing_ok=True)
        await driver.close()


async def run(args: argparse.Namespace, cluster: DevCluster, sizes: list[int]) -> dict[str, Any]:
    files = cluster.layout.state_dir / "files"
    files.mkdir(exist_ok=True)
    results: dict[str, Any] = {}
    for store in args.stores.split(","):
        driver = open_driver(driver_settings(cluster.layout, store))
        try:
            server = await driver.check()
        finally:
            await driver.close()
        idle = [await asyncio.to_thread(in_child, args, "idle", store)
                for _ in range(args.runs)]
        entry: dict[str, Any] = {
            "server": server,
            "idle_child_peak_rss_mib": round(max(r["peak_rss_kib"] for r in idle) / 1024, 1),
            "sizes": {},
        }
        for n in sizes:
            entry["sizes"][str(n)] = await measure(args, store, n, files)
        if len(sizes) > 1:
            small, large = entry["sizes"][str(sizes[0])], entry["sizes"][str(sizes[-1])]
            base = entry["idle_child_peak_rss_mib"]
            entry["rss_above_idle_mib"] = {
                op: {str(n): round(entry["sizes"][str(n)][op]["peak_rss_mib"] - base, 1)
                     for n in sizes} for op in ("backup", "restore")}
            entry["peak_rss_ratio_largest_to_smallest"] = {
                op: round(large[op]["peak_rss_mib"] / small[op]["peak_rss_mib"], 2)
                for op in ("backup", "restore")}
        results[store] = entry
        log(f"{store}: done")
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000", help="objects per tenant, commas")
    parser.add_argument("--runs", type=int, default=3,
                        help="backups and restores per driver and size (medians reported)")
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--state-dir", default="/var/lib/haku/bench-backup")
    parser.add_argument("--port-offset", type=int, default=1900,
                        help="added to the datastores-only ports (24379, 25432, 23306…), "
                             "apart from the test tiers' (0, 700) and operator_bench's (3000)")
    parser.add_argument("--out", help="also write the JSON here")
    # One operation in a fresh process (used by the bench itself).
    parser.add_argument("--child", choices=("idle", "backup", "restore"), help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)

    sizes = [int(s) for s in args.sizes.split(",")]
    cluster = DevCluster(child_layout(Path(args.state_dir), args.port_offset), printer=log)
    cluster.down(purge=True)
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        cluster.up()
        results = asyncio.run(run(args, cluster, sizes))
    finally:
        cluster.down(purge=True)
    doc = {
        "benchmark": "backup",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.monotonic() - started, 1),
        "runs": args.runs,
        "sizes": sizes,
        "argv": sys.argv[1:],
        "data": {
            "objects": "ConfigMap-like values of 500-3000 bytes (uniform; protobuf-like "
                       "envelope and header, half config text, half random bytes) under "
                       "/configmaps/bench/cm-NNNNN, no leases",
            "fill": "driver.load into an empty tenant (not through kube-apiserver)",
            "backup": "driver.snapshot -> format.Writer (gzip level 6, fsync) in a fresh "
                      "process",
            "restore": "format.verify, then format.Reader -> driver.load into a new empty "
                       "tenant, in a fresh process",
            "rates": "objects/s and MiB/s of values (keys and file overhead not counted), "
                     "over the median seconds of the runs",
            "child_cpu_seconds": "user + system CPU of the child over the operation (median): "
                                 "near its seconds, the operation is bound by this process's "
                                 "own work, not the datastore's",
            "peak_rss": "VmHWM of the child process (the highest of the runs); "
                        "idle_child_peak_rss_mib: the same imports and a connected driver, "
                        "nothing moved; ru_maxrss_kib per run for the record only: Linux "
                        "carries the parent's high-water mark into a child over fork+exec, so "
                        "it shows this bench's parent, not the operation",
        },
        "drivers": results,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
