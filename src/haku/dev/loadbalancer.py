"""``haku dev loadbalancer``: MetalLB in L2 mode in the local admin cluster, so that a
``LoadBalancer`` tenant gets its address from a real implementation, as on a bare-metal site.

What it does, safe to run again:

1. builds MetalLB's ``controller`` and ``speaker`` (:mod:`haku.dev.toolchain`, cached) and
   writes their images under upstream's names (``quay.io/metallb/controller:<v>``,
   ``quay.io/metallb/speaker:<v>``: the binary alone, as upstream's distroless images);
2. imports them into the admin node's containerd;
3. applies upstream's own ``config/manifests/metallb-native.yaml`` of that version, unchanged
   (namespace ``metallb-system``, CRDs, RBAC, the controller Deployment with its validating
   webhook, the speaker DaemonSet on the host network), and waits for both to be ready;
4. applies an ``IPAddressPool`` of :data:`POOL` and an ``L2Advertisement`` of it.

The pool is a range the dev cluster routes nowhere else: the admin node's address is a /32 on
a dummy link and every dev worker routes all but its own link through the admin node, so a
packet to a pool address reaches the node, where kube-proxy (which serves every address in a
Service's ``status.loadBalancer``) sends it on to the Service's pods. The speaker announces the
address over ARP on the node's links as it would on a shared L2 segment; here no neighbour
needs the answer, and the assignment (controller) and announcement (speaker, recorded in its
``ServiceL2Status``) are upstream's.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from haku.dev import images, oci, releases, toolchain
from haku.dev.layout import Layout
from haku.dev.versions import Versions
from haku.errors import HakuError

Printer = Callable[[str], None]

NAMESPACE = "metallb-system"
POOL_NAME = "haku-dev"
POOL = "10.245.255.0/24"  # routed to the admin node by every dev worker (their default route)
READY_TIMEOUT = 180.0
KUBECTL_TIMEOUT = 120.0


class LoadBalancerError(HakuError):
    """MetalLB that cannot be built, applied or started, with what to do."""


def image_names(version: str) -> tuple[str, str]:
    """(controller, speaker) under the names upstream's manifest runs."""
    return (f"quay.io/metallb/controller:{version}", f"quay.io/metallb/speaker:{version}")


def image_specs(directory: Path, version: str) -> list[oci.ImageSpec]:
    """The two images from the metallb component's cache ``directory``: ``/controller`` and
    ``/speaker`` as entrypoints (upstream's Dockerfiles), on a distroless-like base. The
    manifest sets who they run as (the controller as 65534, the speaker as root with
    NET_RAW)."""
    specs = []
    for name, binary in zip(image_names(version), toolchain.METALLB_BINARIES, strict=True):
        if not (directory / binary).is_file():
            raise LoadBalancerError(f"{directory / binary} is missing: build it with "
                                    "`haku dev build metallb`")
        files = [oci.LayerFile(f"/{binary}", source=directory / binary)]
        if Path(images.CA_BUNDLE).is_file():  # distroless ships the CA bundle
            files.append(oci.LayerFile(images.CA_BUNDLE, mode=0o644,
                                       source=Path(images.CA_BUNDLE).resolve()))
        specs.append(oci.ImageSpec(name=name, entrypoint=(f"/{binary}",), files=tuple(files)))
    return specs


def pool_objects(pool: str = POOL) -> list[dict[str, object]]:
    """The address pool and its L2 advertisement (metallb.io/v1beta1)."""
    meta = {"name": POOL_NAME, "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "haku-dev"}}
    return [
        {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool", "metadata": meta,
         # .0 and .255 left out: some clients and stacks treat them as network/broadcast
         "spec": {"addresses": [pool], "avoidBuggyIPs": True}},
        {"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement", "metadata": meta,
         "spec": {"ipAddressPools": [POOL_NAME]}},
    ]


@dataclass
class Report:
    built: bool = False  # MetalLB compiled by this call
    imported: list[str] = field(default_factory=list)
    seconds: float = 0.0


def manifest(directory: Path) -> Path:
    path = directory / toolchain.METALLB_MANIFEST
    if not path.is_file():
        raise LoadBalancerError(f"{path} is missing: rebuild MetalLB "
                                "(`haku dev build metallb`)")
    return path


def ensure(layout: Layout, printer: Printer | None = None, *, versions: Versions | None = None,
           cache: Path | None = None, with_pool: bool = True,
           timeout: float = READY_TIMEOUT) -> Report:
    """Build, import, apply and wait (the module says what); ``with_pool``: also the pool."""
    out = printer or (lambda line: print(line, flush=True))
    versions = versions or Versions.from_env()
    cache = cache or toolchain.cache_root()
    started = time.monotonic()
    report = Report()
    down = releases.admin_not_up(layout)
    if down:
        raise LoadBalancerError(down)
    component = toolchain.components(versions)["metallb"]
    report.built = not component.is_built(cache)
    directory = toolchain.ensure(["metallb"], versions, cache, progress=out)["metallb"]
    archives = images.build_archives(image_specs(directory, versions.metallb), cache)
    report.imported = images.import_images(archives, layout.containerd_socket)
    out(f"  metallb images: {', '.join(a.name for a in archives)} "
        f"({'imported' if report.imported else 'there already'})")
    kubectl = Kubectl(layout)
    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(manifest(directory)))
    out(f"  applied {toolchain.METALLB_MANIFEST} of MetalLB {versions.metallb}")
    kubectl.wait_ready(timeout, out)
    if with_pool:
        apply_pool(layout, timeout=timeout)
        out(f"  IPAddressPool {NAMESPACE}/{POOL_NAME}: {POOL}, L2Advertisement {POOL_NAME}")
    report.seconds = time.monotonic() - started
    return report


def apply_pool(layout: Layout, pool: str = POOL, timeout: float = 60.0) -> None:
    """Apply the pool and its advertisement. The controller's webhook validates them: right
    after the controller starts it may not answer yet, so this tries again until ``timeout``."""
    document = json.dumps({"apiVersion": "v1", "kind": "List", "items": pool_objects(pool)})
    kubectl = Kubectl(layout)
    deadline = time.monotonic() + timeout
    while True:
        result = kubectl.run("apply", "--server-side", "-f", "-", stdin=document, check=False)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise LoadBalancerError(f"the MetalLB pool was refused for {timeout:.0f}s: "
                                    f"{result.stderr.strip()[-600:]}")
        time.sleep(2)


def delete(layout: Layout, directory: Path) -> None:
    """Remove what :func:`ensure` applied (pool first, then upstream's manifest)."""
    kubectl = Kubectl(layout)
    document = json.dumps({"apiVersion": "v1", "kind": "List", "items": pool_objects()})
    kubectl.run("delete", "--ignore-not-found", "--wait=false", "-f", "-", stdin=document,
                check=False)
    kubectl.run("delete", "--ignore-not-found", "-f", str(manifest(directory)), check=False)


class Kubectl:
    """kubectl against the admin cluster, with its output kept for the error."""

    def __init__(self, layout: Layout) -> None:
        self.base = [str(layout.bin / "kubectl"), f"--kubeconfig={layout.admin_kubeconfig}"]

    def run(self, *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = KUBECTL_TIMEOUT) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.base, *args], input=stdin, capture_output=True,
                                text=True, check=False, timeout=timeout)
        if check and result.returncode != 0:
            raise LoadBalancerError(f"kubectl {' '.join(args[:3])} failed: "
                                    f"{result.stderr.strip()[-800:]}")
        return result

    def wait_ready(self, timeout: float, out: Printer) -> None:
        """The controller Deployment and the speaker DaemonSet rolled out."""
        for kind in ("deployment/controller", "daemonset/speaker"):
            started = time.monotonic()
            result = self.run("-n", NAMESPACE, "rollout", "status", kind,
                              f"--timeout={int(timeout)}s", check=False, timeout=timeout + 30)
            if result.returncode != 0:
                pods = self.run("-n", NAMESPACE, "get", "pods", "-o", "wide", check=False)
                raise LoadBalancerError(
                    f"MetalLB {kind} not ready in {timeout:.0f}s: "
                    f"{(result.stderr or result.stdout).strip()[-400:]}\n{pods.stdout}")
            out(f"  {kind} ready ({time.monotonic() - started:.1f}s)")
