"""``haku dev images``: the images of more than one Kubernetes release in the dev cluster.

``haku dev up`` imports the images of the admin cluster's own Kubernetes version. A tenant may
run another supported release (``spec.kubernetes.version``; the dev tooling offers
:data:`~haku.dev.versions.PREVIOUS_KUBERNETES_VERSION` beside the current one, so a tenant can
start on it and be upgraded), and its pods need that release's images where they run:

- ``registry.k8s.io/kube-apiserver|kube-controller-manager|kube-scheduler:<v>`` in the admin
  node's containerd (the tenants' control-plane pods run there);
- ``registry.k8s.io/kube-proxy:<v>`` in every worker's containerd (the tenant's kube-proxy
  DaemonSet runs there; after an upgrade it asks for the new tag on the old workers too).

:func:`ensure` builds the release's binaries if they are not cached (:mod:`haku.dev.toolchain`,
with progress), writes the archives (:mod:`haku.dev.images`) and imports them. Like
:func:`haku.dev.addons.ensure` it is safe to call again: cached binaries, up-to-date archives
and images already present cost nothing but a look.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haku.api import tenantcontrolplane as api
from haku.dev import images, oci, toolchain
from haku.dev.layout import Layout
from haku.dev.processes import Supervisor
from haku.dev.versions import (
    Versions,
    kube_proxy_image_name,
    offered_kubernetes_versions,
    parse_semver,
)
from haku.errors import HakuError

Printer = Callable[[str], None]


class ReleasesError(HakuError):
    """A release that cannot be offered or imported, with what to do."""


def check_versions(wanted: Iterable[str], current: str) -> list[str]:
    """``wanted`` in order without repeats, or every offered version (the previous release and
    ``current``) when empty. Each must be vMAJOR.MINOR.PATCH of a minor the operator runs."""
    chosen = list(dict.fromkeys(wanted)) or list(offered_kubernetes_versions(current))
    for version in chosen:
        parse_semver(version, what="kubernetes")
        problem = api.version_problem(version)
        if problem:
            raise ReleasesError(f"{problem}: a tenant of it would be refused, so its images "
                                "are not offered")
    return chosen


def admin_image_names(kubernetes_version: str) -> list[str]:
    """What of a release goes into the admin node's containerd: its control plane."""
    return images.control_plane_image_names(kubernetes_version)


def worker_image_names(kubernetes_version: str) -> list[str]:
    """What of a release goes into every worker's containerd: kube-proxy."""
    return [kube_proxy_image_name(kubernetes_version)]


def is_built(kubernetes_version: str, cache: Path | None = None,
             versions: Versions | None = None) -> bool:
    """Whether the release's binaries are cached already."""
    versions = (versions or Versions.from_env()).with_kubernetes(kubernetes_version)
    return toolchain.components(versions)["kubernetes"].is_built(cache or toolchain.cache_root())


def admin_not_up(layout: Layout) -> str | None:
    """Why images cannot go into the admin node now (None: its containerd answers)."""
    if admin_containerd_running(layout):
        return None
    return (f"the admin cluster at {layout.state_dir} is not up (its containerd does not "
            f"answer on {layout.containerd_socket}): run `haku dev up` first")


def admin_containerd_running(layout: Layout) -> bool:
    """Whether the admin node's containerd answers on its socket."""
    if not layout.node or not layout.containerd_socket.exists():
        return False
    try:
        return subprocess.run(["ctr", "--address", str(layout.containerd_socket), "version"],
                              capture_output=True, check=False, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def import_into_workers(layout: Layout, built: list[images.BuiltImage], out: Printer,
                        ) -> tuple[dict[str, list[str]], list[str]]:
    """Import ``built`` into every worker whose containerd runs: (worker -> images imported,
    workers skipped because their containerd is stopped)."""
    from haku.dev import worker as workers  # worker imports addons, which imports this module
    from haku.dev.worker_config import process_names, worker_paths

    imported: dict[str, list[str]] = {}
    skipped: list[str] = []
    if not built:
        return imported, skipped
    supervisor = Supervisor(layout.pids, layout.logs)
    for w in workers.list_workers(layout):
        containerd_name, _ = process_names(w.name)
        if not supervisor.running(containerd_name):
            skipped.append(w.name)
            out(f"  worker {w.name}: containerd is not running, skipped")
            continue
        socket = worker_paths(layout, w.index).containerd_socket
        imported[w.name] = images.import_images(built, socket)
        out(f"  worker {w.name}: {', '.join(b.name for b in built)} "
            f"({'imported' if imported[w.name] else 'there already'})")
    return imported, skipped


@dataclass
class Report:
    versions: list[str] = field(default_factory=list)  # the releases ensured, in order
    built: list[str] = field(default_factory=list)  # releases compiled by this call
    archives: list[images.BuiltImage] = field(default_factory=list)
    admin: list[str] = field(default_factory=list)  # images imported into the admin node
    workers: dict[str, list[str]] = field(default_factory=dict)  # worker -> images imported
    skipped_workers: list[str] = field(default_factory=list)  # containerd not running
    seconds: float = 0.0


def ensure(
    layout: Layout,
    kubernetes_versions: Iterable[str] = (),
    printer: Printer | None = None,
    *,
    versions: Versions | None = None,
    cache: Path | None = None,
    import_images: bool = True,
) -> Report:
    """Build each release of ``kubernetes_versions`` (default: every offered one) that is not
    cached, write its archives and (``import_images``) import them: control-plane images into
    the admin node's containerd (the cluster must be up), kube-proxy into every worker whose
    containerd runs."""
    out = printer or (lambda line: print(line, flush=True))
    versions = versions or Versions.from_env()
    cache = cache or toolchain.cache_root()
    started = time.monotonic()
    report = Report(versions=check_versions(kubernetes_versions, versions.kubernetes))
    if import_images and not admin_containerd_running(layout):
        raise ReleasesError(f"the admin cluster at {layout.state_dir} is not up (its "
                            f"containerd does not answer on {layout.containerd_socket}): run "
                            "`haku dev up` first, or build only (`haku dev images "
                            "--build-only`)")
    admin: list[images.BuiltImage] = []
    on_workers: list[images.BuiltImage] = []
    for version in report.versions:
        release = versions.with_kubernetes(version)
        if not is_built(version, cache, versions):
            out(f"kubernetes {version} is not built yet: building it (about 9 min on 2 cores "
                "when cold)")
            report.built.append(version)
        directory = toolchain.ensure(["kubernetes"], release, cache, progress=out)["kubernetes"]
        archives = images.build_archives(images.release_image_specs(directory, version), cache)
        report.archives += archives
        out(f"  kubernetes {version} images: {', '.join(b.name for b in archives)} "
            f"(archives in {cache / 'images'})")
        by_name = {b.name: b for b in archives}
        admin += [by_name[n] for n in admin_image_names(version)]
        on_workers += [by_name[n] for n in worker_image_names(version)]
    if import_images:
        report.admin = images.import_images(admin, layout.containerd_socket)
        out(f"  admin node: {', '.join(b.name for b in admin)} "
            f"({'imported ' + str(len(report.admin)) if report.admin else 'there already'})")
        report.workers, report.skipped_workers = import_into_workers(layout, on_workers, out)
    report.seconds = time.monotonic() - started
    return report


def worker_versions(versions: Versions | None, tenant_version: str | None) -> Versions:
    """The versions a new worker of a tenant on ``tenant_version`` runs: its kubelet, kubeadm
    and kube-proxy image are of the tenant's release, unless ``versions`` is given (an
    explicit choice, kept as it is; ``kubelet_skew_problem`` says whether it may join)."""
    if versions is not None:
        return versions
    versions = Versions.from_env()
    return versions.with_kubernetes(tenant_version) if tenant_version else versions


def upgrade_kube_proxy_specs(versions: Versions, cache: Path | None = None,
                             ) -> list[oci.ImageSpec]:
    """kube-proxy's image of every offered release newer than ``versions.kubernetes`` whose
    binaries are cached (none is built here): a new worker gets them too, so that once its
    tenant is upgraded the kube-proxy DaemonSet's new tag runs there without another import."""
    cache = cache or toolchain.cache_root()
    current = parse_semver(versions.kubernetes, what="kubernetes")
    specs = []
    for version in offered_kubernetes_versions(Versions.from_env().kubernetes):
        if parse_semver(version) <= current or not is_built(version, cache, versions):
            continue
        directory = toolchain.components(versions.with_kubernetes(version))["kubernetes"] \
            .directory(cache)
        specs.append(images.kube_proxy_image(directory / "kube-proxy", version))
    return specs


def tenant_version(tcp: dict[str, Any]) -> str:
    """The release a new worker of TenantControlPlane ``tcp`` runs: ``spec.kubernetes.version``,
    or while an upgrade is under way the older version its status says runs
    (``status.kubernetesResources.version.version``), so the kubelet is never newer than an
    API server that still serves. Empty if the object names none."""
    spec = str(((tcp.get("spec") or {}).get("kubernetes") or {}).get("version") or "")
    running = str(((((tcp.get("status") or {}).get("kubernetesResources") or {})
                    .get("version") or {}).get("version")) or "")
    candidates = [v for v in (spec, running) if _is_semver(v)]
    return min(candidates, key=parse_semver) if candidates else ""


def _is_semver(version: str) -> bool:
    try:
        parse_semver(version)
    except ValueError:
        return False
    return True
