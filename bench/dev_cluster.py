"""Benchmark of the local admin cluster; prints one JSON document.

- build: the build of the upstream binaries. With ``--cold`` (``make bench-cold``) it really
  builds kubernetes, etcd and kine into empty caches (Go module and build caches included:
  ~10 min on 2 cores; CoreDNS, not built here, adds ~2) and reports
  ``"build_source": "measured-cold"``. Without it, it measures nothing and reports the
  durations recorded in the cache's stamps when those binaries were built
  (``"build_source": "cache-stamp"``: possibly with warm Go caches, possibly by another Haku;
  ``"none"`` when no stamp is there).
- up: ``haku dev up`` to node Ready with binaries cached, on a fresh state directory (images
  imported, databases initialised) and again on the kept state directory (a restart).
- idle memory: RSS of every recorded component (its whole process group), after a settle time.

Run as root: ``make bench`` or ``.venv/bin/python bench/dev_cluster.py [--cold]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from haku.dev import toolchain
from haku.dev.cluster import DevCluster
from haku.dev.layout import Layout
from haku.dev.versions import Versions


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def group_rss_mib(pgid: int) -> float:
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            total += rss_kib(int(proc.name))
    return round(total / 1024, 1)


def cold_build(versions: Versions) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="haku-bench-cold-", dir="/var/tmp") as tmp:
        os.environ["GOCACHE"] = f"{tmp}/gocache"
        os.environ["GOMODCACHE"] = f"{tmp}/gomodcache"
        started = time.monotonic()
        toolchain.ensure(["kubernetes", "etcd", "kine"], versions, Path(tmp) / "haku",
                         progress=lambda line: print(line, file=sys.stderr, flush=True))
        seconds = time.monotonic() - started
        # Go marks module files read-only; make them removable.
        for root, dirs, _ in os.walk(tmp):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)  # noqa: S103  (our temp dir)
    return {"build_source": "measured-cold",
            "mode": "cold (empty Go module and build caches), measured by this run",
            "total_s": round(seconds, 1)}


def recorded_build(versions: Versions) -> dict[str, Any]:
    root = toolchain.cache_root()
    per: dict[str, Any] = {}
    built_at: dict[str, Any] = {}
    missing = []
    for name in ("kubernetes", "etcd", "kine"):
        c = toolchain.components(versions)[name]
        stamp = c.directory(root) / toolchain.STAMP
        if stamp.exists():
            data = json.loads(stamp.read_text())
            per[name] = float(data.get("seconds", "nan"))
            built_at[name] = data.get("built")
        else:
            missing.append(name)
    return {"build_source": "cache-stamp" if per else "none",
            "mode": "not measured by this run: the durations recorded in the cache stamps when "
                    "the binaries were built (may have had warm Go caches); "
                    "`make bench-cold` measures a cold build",
            "stamps": str(root / "bin"), "built_at": built_at, "without_stamp": missing,
            "per_component_s": per, "total_s": round(sum(per.values()), 1)}


def timed_up(cluster: DevCluster) -> dict[str, Any]:
    report = cluster.up()
    steps = {name: round(seconds, 2) for name, seconds in report.steps}
    return {"to_node_ready_s": steps.pop("total"), "steps_s": steps}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", action="store_true", help="really build from empty caches")
    parser.add_argument("--settle", type=float, default=20.0, help="idle seconds before RSS")
    parser.add_argument("--state-dir", default="/var/lib/haku/bench")
    args = parser.parse_args()
    versions = Versions.from_env()
    build = cold_build(versions) if args.cold else recorded_build(versions)
    toolchain.ensure(["kubernetes", "etcd", "kine"], versions)

    cluster = DevCluster(Layout(state_dir=Path(args.state_dir)), versions,
                         printer=lambda line: print(line, file=sys.stderr, flush=True))
    cluster.down(purge=True)
    try:
        fresh = timed_up(cluster)
        cluster.down()
        restart = timed_up(cluster)
        time.sleep(args.settle)
        memory = {r.name: group_rss_mib(r.pid) for r in cluster.supervisor.records() if r.alive()}
    finally:
        cluster.down(purge=True)

    result = {
        "benchmark": "dev_cluster",
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "versions": versions.__dict__,
        "build": build,
        "up_fresh_state": fresh,
        "up_restart": restart,
        "idle_rss_mib": {"by_component": memory, "total": round(sum(memory.values()), 1),
                         "settle_s": args.settle},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
