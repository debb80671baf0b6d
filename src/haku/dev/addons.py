"""``haku dev addons``: the images of Konnectivity and metrics-server, built only on demand.

A plain ``haku dev up`` builds neither (their cold builds add minutes). :func:`ensure` builds
what is missing (:mod:`haku.dev.toolchain`: Konnectivity from its release tarball in
``shared/third_party``, metrics-server from the Go module proxy), writes the image archives
(:mod:`haku.dev.images`) and imports them where they run:

- konnectivity: ``registry.k8s.io/kas-network-proxy/proxy-server:<v>`` into the admin node's
  containerd (it runs beside the tenants' API servers), ``…/proxy-agent:<v>`` into every
  worker's;
- metrics-server: ``registry.k8s.io/metrics-server/metrics-server:<v>`` into every worker's.

``haku dev worker add`` imports the worker images of every addon that is built already
(:func:`cached_worker_specs`), never building one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from haku.dev import images, oci, releases, toolchain
from haku.dev.layout import Layout
from haku.dev.versions import Versions, konnectivity_image_names, metrics_server_image_name
from haku.errors import HakuError

Printer = Callable[[str], None]

NAMES = ("konnectivity", "metrics-server")  # each is also its toolchain component


class AddonsError(HakuError):
    """An addon that cannot be built or imported, with what to do."""


def check_names(names: Iterable[str]) -> list[str]:
    """``names`` in order, without repeats; every addon when empty. Unknown names fail."""
    wanted = list(dict.fromkeys(names)) or list(NAMES)
    unknown = [n for n in wanted if n not in NAMES]
    if unknown:
        raise AddonsError(f"unknown addon {', '.join(unknown)}; known: {', '.join(NAMES)}")
    return wanted


def admin_image_names(versions: Versions, names: Iterable[str] = NAMES) -> list[str]:
    """The images of ``names`` that go into the admin node's containerd."""
    wanted = check_names(names)
    return [konnectivity_image_names(versions.konnectivity)[0]] if "konnectivity" in wanted \
        else []


def worker_image_names(versions: Versions, names: Iterable[str] = NAMES) -> list[str]:
    """The images of ``names`` that go into every worker's containerd."""
    wanted = check_names(names)
    result = []
    if "konnectivity" in wanted:
        result.append(konnectivity_image_names(versions.konnectivity)[1])
    if "metrics-server" in wanted:
        result.append(metrics_server_image_name(versions.metrics_server))
    return result


def image_specs(name: str, directory: Path, versions: Versions) -> list[oci.ImageSpec]:
    """Every image of addon ``name`` from its component's cache ``directory``."""
    if name == "konnectivity":
        return images.konnectivity_images(directory, versions.konnectivity)
    if name == "metrics-server":
        return [images.metrics_server_image(directory / "metrics-server",
                                            versions.metrics_server)]
    raise AddonsError(f"unknown addon {name!r}")


def built(versions: Versions | None = None, cache: Path | None = None) -> dict[str, Path]:
    """The addons whose binaries are cached already: name -> component directory."""
    versions = versions or Versions.from_env()
    cache = cache or toolchain.cache_root()
    table = toolchain.components(versions)
    return {n: table[n].directory(cache) for n in NAMES if table[n].is_built(cache)}


def cached_worker_specs(versions: Versions | None = None,
                        cache: Path | None = None) -> list[oci.ImageSpec]:
    """The worker images of the addons built already (none is built here)."""
    versions = versions or Versions.from_env()
    wanted = set(worker_image_names(versions))
    return [spec for name, directory in built(versions, cache).items()
            for spec in image_specs(name, directory, versions) if spec.name in wanted]


@dataclass
class Report:
    built: list[str] = field(default_factory=list)  # components compiled by this call
    archives: list[images.BuiltImage] = field(default_factory=list)
    admin: list[str] = field(default_factory=list)  # images imported into the admin node
    workers: dict[str, list[str]] = field(default_factory=dict)  # worker -> images imported
    skipped_workers: list[str] = field(default_factory=list)  # containerd not running
    seconds: float = 0.0


def ensure(
    layout: Layout,
    names: Iterable[str] = NAMES,
    printer: Printer | None = None,
    *,
    versions: Versions | None = None,
    cache: Path | None = None,
    import_images: bool = True,
) -> Report:
    """Build what of ``names`` is missing, write the archives and (``import_images``) import
    them: server images into the admin node's containerd (the cluster must be up), agent
    images into every worker whose containerd runs. Safe to call again: cached binaries,
    up-to-date archives and images already present cost nothing."""
    out = printer or (lambda line: print(line, flush=True))
    versions = versions or Versions.from_env()
    cache = cache or toolchain.cache_root()
    wanted = check_names(names)
    started = time.monotonic()
    report = Report()
    down = releases.admin_not_up(layout) if import_images else None
    if down:
        raise AddonsError(f"{down}, or build only (`haku dev addons --build-only`)")
    before = built(versions, cache)
    dirs = toolchain.ensure(wanted, versions, cache, progress=out)
    report.built = [n for n in wanted if n not in before]
    specs = [s for n in wanted for s in image_specs(n, dirs[n], versions)]
    report.archives = images.build_archives(specs, cache)
    out(f"  addon images: {', '.join(b.name for b in report.archives)} "
        f"(archives in {cache / 'images'})")
    if not import_images:
        report.seconds = time.monotonic() - started
        return report
    by_name = {b.name: b for b in report.archives}
    admin = [by_name[n] for n in admin_image_names(versions, wanted)]
    if admin:
        report.admin = images.import_images(admin, layout.containerd_socket)
        out(f"  admin node: {', '.join(b.name for b in admin)} "
            f"({'imported' if report.admin else 'there already'})")
    on_workers = [by_name[n] for n in worker_image_names(versions, wanted)]
    report.workers, report.skipped_workers = releases.import_into_workers(layout, on_workers,
                                                                          out)
    report.seconds = time.monotonic() - started
    return report
