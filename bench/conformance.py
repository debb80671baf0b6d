"""Conformance run benchmark (issue 16): JSON on stdout.

- ``builds``: for ``e2e`` (e2e.test), ``agnhost`` and ``sample-apiserver``, the seconds the
  build took when it went into Haku's cache (the stamp's record: that first build may have had
  a warm Go build cache, which the stamp cannot tell) and the seconds ``toolchain.ensure`` takes
  now that it is cached (measured). ``--cold`` measures e2e.test and agnhost cold instead: an
  empty Go build cache and an empty Haku cache (the Go module cache is kept: no download).
- ``images``: building every test image (``--cold-images``: into an empty test-image cache,
  so the Debian root filesystems and busybox are built again) and pushing them, measured.
- ``suite``: ``haku dev conformance run`` (``--fast``: the subset ``make test`` runs), its
  wall time and the summary; ``--summary PATH`` reports a run made before from its
  ``summary.json`` instead of running one (marked ``"source": "summary.json"``).

Runs against the dev cluster (``haku dev up``; the node tier's lock:
``flock /tmp/haku-node-tier.lock``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from haku.dev import conformance_run as conf
from haku.dev import test_images, toolchain
from haku.dev.cluster import DevCluster
from haku.dev.layout import Layout, default_state_dir
from haku.dev.versions import Versions

COMPONENTS = ("e2e", "agnhost", "sample-apiserver")


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def recorded_and_cached(versions: Versions) -> dict[str, Any]:
    root = toolchain.cache_root()
    table = toolchain.components(versions)
    out: dict[str, Any] = {}
    for name in COMPONENTS:
        stamp = table[name].directory(root) / toolchain.STAMP
        entry: dict[str, Any] = {}
        if stamp.is_file():
            data = json.loads(stamp.read_text())
            entry["first_build_s"] = float(data.get("seconds", "nan"))
            entry["built_at"] = data.get("built")
        started = time.monotonic()
        toolchain.ensure([name], versions, root, progress=say)
        entry["cached_s"] = round(time.monotonic() - started, 3)
        out[name] = entry
    return {"mode": "first_build_s: the cache stamp's record of the build into Haku's cache "
                    "(the Go build cache may have been warm); cached_s: measured now",
            "components": out}


def cold_builds(versions: Versions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("e2e", "agnhost"):
        with tempfile.TemporaryDirectory(prefix="haku-bench-cold-", dir="/var/tmp") as tmp:
            os.environ["GOCACHE"] = f"{tmp}/gocache"
            started = time.monotonic()
            toolchain.ensure([name], versions, Path(tmp) / "haku", progress=say)
            out[name] = round(time.monotonic() - started, 1)
            for root, dirs, _ in os.walk(tmp):
                for d in dirs:
                    os.chmod(os.path.join(root, d), 0o755)  # noqa: S103  (our temp dir)
    os.environ.pop("GOCACHE", None)
    return {"mode": "cold: empty Go build cache and Haku cache, module cache kept; measured",
            "seconds": out}


def images(cluster: DevCluster, cold: bool) -> dict[str, Any]:
    groups = list(test_images.GROUPS)
    if cold:
        with tempfile.TemporaryDirectory(prefix="haku-bench-images-", dir="/var/tmp") as tmp:
            # An empty Haku cache holding only the cached binaries the images take.
            cache = Path(tmp)
            (cache / "bin").symlink_to(toolchain.cache_root() / "bin")
            report = test_images.build_and_push(groups, cluster.versions,
                                                cluster.layout.registry_endpoint, cache, say)
    else:
        report = test_images.build_and_push(groups, cluster.versions,
                                            cluster.layout.registry_endpoint, printer=say)
    return {"mode": "cold test-image cache" if cold else "as cached", "images": len(report.built),
            "build_s": round(report.build_seconds, 1), "push_s": round(report.push_seconds, 2),
            "pushed_mb": round(sum(p.uploaded for p in report.pushed) / 1e6, 1)}


def suite(cluster: DevCluster, args: argparse.Namespace) -> dict[str, Any]:
    if args.summary:
        data = json.loads(Path(args.summary).read_text())
        return {"source": "summary.json", "path": args.summary, **_suite_fields(data)}
    options = conf.Options(out_dir=conf.default_out_dir(cluster.layout, args.datastore),
                           patterns=conf.FAST_SUBSET if args.fast else (),
                           parallel=args.parallel)
    started = time.monotonic()
    outcome = conf.run(cluster, args.datastore, options, say)
    data = json.loads((outcome.out_dir / "summary.json").read_text())
    return {"source": "this run", "path": str(outcome.out_dir),
            "total_s": round(time.monotonic() - started, 1), **_suite_fields(data)}


def _suite_fields(data: dict[str, Any]) -> dict[str, Any]:
    return {key: data.get(key) for key in (
        "datastore", "kubernetes", "subset", "expected", "passed", "failed", "chunks",
        "parallel", "seconds")} | {
        "failures": [{"name": f["name"], "known": f.get("known")}
                     for f in data.get("failures", [])],
        "resummarized": bool(data.get("resummarized")),
        "skipped": len(data.get("skipped", [])), "not_run": len(data.get("not_run", []))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datastore", default="etcd", choices=("etcd", "postgres", "mariadb"))
    parser.add_argument("--fast", action="store_true", help="the subset make test runs")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--cold", action="store_true",
                        help="measure e2e.test and agnhost built cold (about 20 CPU-minutes)")
    parser.add_argument("--cold-images", action="store_true",
                        help="build the test images into an empty cache")
    parser.add_argument("--summary", help="report this summary.json instead of running the suite")
    parser.add_argument("--no-suite", action="store_true", help="builds and images only")
    args = parser.parse_args()
    versions = Versions.from_env()
    cluster = DevCluster(Layout(state_dir=default_state_dir()), versions, printer=say)
    result: dict[str, Any] = {"bench": "conformance", "kubernetes": versions.kubernetes,
                              "cpus": os.cpu_count()}
    result["builds"] = cold_builds(versions) if args.cold else recorded_and_cached(versions)
    if not args.summary:
        cluster.up()
    result["images"] = images(cluster, args.cold_images) if not args.summary else None
    if not args.no_suite:
        result["suite"] = suite(cluster, args)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
