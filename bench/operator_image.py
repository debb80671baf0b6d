"""Benchmark of the operator image build; prints one JSON document.

- cold: ``build_operator_image`` into an empty cache (mmdebstrap, pip, the wheel), per step;
- warm: the same again with every layer cached (just the archive is written);
- sizes: the archive (uncompressed layers), each layer, and the files of the unpacked rootfs.

Needs mmdebstrap, Debian's mirror and PyPI. ``--cache DIR`` reuses a cache instead of a fresh
temporary one (then "cold" is whatever that cache holds).
Run: ``.venv/bin/python bench/operator_image.py``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from haku.dev import oci
from haku.dev import operator_image as op

STEP = re.compile(r"^\s+(\w+):.*?([\d.]+)s$")


def build(cache: Path) -> dict[str, Any]:
    lines: list[str] = []
    start = time.monotonic()
    archive, name = op.build_operator_image(cache, lines.append)
    total = time.monotonic() - start
    steps = {m.group(1): float(m.group(2)) for m in map(STEP.match, lines) if m}
    return {"archive": archive, "name": name, "seconds": round(total, 1), "steps": steps,
            "cached": [m.group(1) for m in map(STEP.match, lines) if m and "cached" in m.group(0)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cache", help="a cache directory to use (default: a fresh one)")
    args = ap.parse_args()
    tmp = None if args.cache else tempfile.mkdtemp(prefix="haku-bench-image-")
    cache = Path(args.cache or str(tmp))
    try:
        cold = build(cache)
        warm = build(cache)
        archive: Path = warm["archive"]
        summary = oci.read_layered_archive(archive)
        layer_sizes = [m["size"] for m in summary.manifest["layers"]]
        result = {
            "image": warm["name"],
            "cold_build_s": cold["seconds"],
            "cold_steps_s": cold["steps"],
            "warm_build_s": warm["seconds"],
            "warm_steps_s": warm["steps"],
            "warm_cached_layers": warm["cached"],
            "archive_bytes": archive.stat().st_size,
            "layer_bytes": dict(zip(("rootfs", "deps", "haku"), layer_sizes, strict=True)),
            "rootfs_file_bytes": op.rootfs_bytes(archive),
            "manifest_digest": summary.manifest_digest,
        }
        print(json.dumps(result, indent=2))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
