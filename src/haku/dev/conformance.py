"""The upstream conformance suite against Haku tenants (issue 16): what it needs, as data.

This first step builds and caches the three binaries the run needs (components of
:mod:`haku.dev.toolchain`, ``haku dev build e2e agnhost registry``):

- ``e2e`` — ``e2e.test`` of ``k8s.io/kubernetes/test/e2e`` at the Kubernetes version, compiled
  with ``go test -c`` in the same consumer module as the Kubernetes binaries (it runs
  standalone: no ``ginkgo`` CLI is needed);
- ``agnhost`` — ``k8s.io/kubernetes/test/images/agnhost`` at the same version (its image tag is
  the tree's ``test/images/agnhost/VERSION``, 2.66.1 at v1.37.2, which is also the tag
  ``e2e.test`` asks for);
- ``registry`` — CNCF Distribution's ``cmd/registry``, the local OCI registry the run will push
  the test images to.

It also names the images: :func:`list_images` runs ``e2e.test --list-images`` (every image the
binary knows, conformance or not) and :data:`CONFORMANCE_IMAGES` is the part the
``[Conformance]`` tests use, with how Haku provides each (docs/conformance.md;
:mod:`haku.dev.test_images` builds them, :mod:`haku.dev.registry` serves them). Nothing here runs
the suite.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from haku.errors import HakuError

# The toolchain components the conformance run needs, in build order (cheapest first).
COMPONENTS = ("registry", "agnhost", "e2e")

LIST_IMAGES_TIMEOUT = 120.0


class ConformanceError(HakuError):
    """e2e.test could not list its images."""


@dataclass(frozen=True, order=True)
class Image:
    """An image reference as e2e.test prints it: ``repository:tag``."""

    repository: str
    tag: str

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def name(self) -> str:
        """The last path element: ``agnhost`` for ``registry.k8s.io/e2e-test-images/agnhost``."""
        return self.repository.rsplit("/", 1)[-1]


# A reference with a registry host (a dot or a port in the first element), a path and a tag;
# e2e.test prints no digests.
_IMAGE = re.compile(
    r"^(?P<repo>[a-z0-9][a-z0-9.-]*(?::\d+)?(?:/[a-z0-9][a-z0-9._-]*)+)"
    r":(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$"
)


def parse_image_list(text: str) -> list[Image]:
    """The images in ``e2e.test --list-images`` output (one reference a line, in Go's map
    order), sorted and without duplicates; other lines (log output) are skipped."""
    images = set()
    for line in text.splitlines():
        match = _IMAGE.match(line.strip())
        if match:
            images.add(Image(match["repo"], match["tag"]))
    return sorted(images)


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def list_images(e2e_test: Path, runner: Runner = subprocess.run,
                env: dict[str, str] | None = None) -> list[Image]:
    """Run ``e2e.test --list-images`` and parse what it prints.

    The flag is handled right after the flags are read (test/e2e/framework/test_context.go):
    no cluster or kubeconfig is needed. ``KUBE_TEST_REPO_LIST`` / ``KUBE_TEST_REPO`` in
    ``env`` would remap the registries; pass an ``env`` without them for upstream's names.
    """
    args = [str(e2e_test), "--list-images"]
    try:
        result = runner(args, capture_output=True, text=True, check=False,
                        timeout=LIST_IMAGES_TIMEOUT, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConformanceError(f"{' '.join(args)} failed: {e}") from e
    if result.returncode != 0:
        raise ConformanceError(f"{' '.join(args)} exited {result.returncode}: "
                               f"{(result.stderr or '').strip()[-2000:]}")
    images = parse_image_list(result.stdout)
    if not images:
        raise ConformanceError(f"{' '.join(args)} printed no image references")
    return images


# test/utils/image/manifest.go: `configs[Agnhost] = Config{list.PromoterE2eRegistry, "agnhost",
# "2.66.1"}`.
_MANIFEST_ENTRY = re.compile(
    r'configs\[(?P<id>\w+)\]\s*=\s*Config\{list\.(?P<registry>\w+),\s*"(?P<name>[^"]+)",\s*'
    r'"(?P<tag>[^"]+)"\}')


def manifest_tags(manifest_go: str) -> dict[str, tuple[str, str, str]]:
    """The images k8s.io/kubernetes' test/utils/image/manifest.go defines: ImageID ->
    (registry field, name, tag). ``manifest_tags(text)["Agnhost"]`` is the agnhost tag
    e2e.test expects."""
    return {m["id"]: (m["registry"], m["name"], m["tag"])
            for m in _MANIFEST_ENTRY.finditer(manifest_go)}


# How Haku provides an image (docs/conformance.md): compiled from the Go module proxy,
# assembled from Debian packages, a small program of Haku's own in upstream's behaviour, or
# built from an upstream release tarball.
MODULE_PROXY = "module proxy"
DEBIAN = "Debian package"
TINY = "tiny program"
RELEASE = "upstream release"  # a C project's release tarball, built as upstream builds it
EXISTING = "already built by Haku"


@dataclass(frozen=True)
class PlannedImage:
    """A Conformance image at v1.37.2 and how Haku provides it (haku.dev.test_images)."""

    image_id: str  # the ImageID in test/utils/image/manifest.go
    image: Image
    source: str  # one of MODULE_PROXY, DEBIAN, TINY, RELEASE, EXISTING
    how: str
    used_by: str


_E2E = "registry.k8s.io/e2e-test-images"

# The images the [Conformance] tests of k8s.io/kubernetes v1.37.2 use: every image ID the files
# test/conformance/testdata/conformance.yaml names refer to inside a ConformanceIt or a helper
# one calls (the framework's helpers add agnhost, busybox and pause). The suite's other images
# (CSI sidecars, node-perf, volume servers, the private and invalid-registry ones) are for
# tests outside the set.
CONFORMANCE_IMAGES: tuple[PlannedImage, ...] = (
    PlannedImage("Agnhost", Image(f"{_E2E}/agnhost", "2.66.1"), MODULE_PROXY,
                 "the cached `agnhost` component (k8s.io/kubernetes/test/images/agnhost at the "
                 "Kubernetes version; its VERSION is 2.66.1) on the tools upstream's Alpine base "
                 "adds, from Debian (bash, curl, dnsutils, iproute2, iperf, netcat-openbsd, "
                 "socat, util-linux), its porter certificate, /uploads and the image's user and "
                 "group; coredns from Haku's cached CoreDNS",
                 "most tests: services, DNS, webhooks, probes, proxy, kubectl"),
    PlannedImage("AgnhostPrev", Image(f"{_E2E}/agnhost", "2.55"), MODULE_PROXY,
                 "the same agnhost build under the older tag (the tests only need an image "
                 "that differs from 2.66.1 and runs agnhost)",
                 "Deployment, Pods patch, kubectl diff"),
    PlannedImage("BusyBox", Image(f"{_E2E}/busybox", "1.37.0-2"), RELEASE,
                 "busybox 1.37.0 built from upstream's release (its default configuration, "
                 "static); not Debian's, whose ash drops environment names such as `data-1` "
                 "that four tests pass through `sh`",
                 "volumes, downward API, ConfigMap/Secret env, init containers"),
    PlannedImage("Pause", Image("registry.k8s.io/pause", "3.10.2"), EXISTING,
                 "Haku's pause image (PAUSE_VERSION), already written by the dev cluster",
                 "scheduling, quota, webhooks, namespaces"),
    PlannedImage("GlibcDnsTesting", Image(f"{_E2E}/glibc-dns-testing", "2.1.1"), DEBIAN,
                 "Debian's dnsutils and glibc (dig, nslookup, getent)", "DNS"),
    PlannedImage("Nginx", Image(f"{_E2E}/nginx", "1.27.0-2"), DEBIAN,
                 "Debian's nginx-light serving on port 80",
                 "Endpoints, EndpointSlice, RC, Pods, PodTemplates, garbage collector"),
    PlannedImage("APIServer", Image(f"{_E2E}/sample-apiserver", "1.29.2"), MODULE_PROXY,
                 "k8s.io/sample-apiserver at the staging version (v0.MINOR.PATCH), alone in "
                 "the image as upstream's",
                 "Aggregator (sample API server)"),
    PlannedImage("Etcd", Image("registry.k8s.io/etcd", "3.7.0-0"), EXISTING,
                 "Haku's etcd image (the cached etcd component) under this tag",
                 "Aggregator (the sample API server's storage)"),
    PlannedImage("Nautilus", Image(f"{_E2E}/nautilus", "1.8"), MODULE_PROXY,
                 "as upstream: the agnhost image plus html/nautilus.jpg and data.json from "
                 "test/images/nautilus in the k8s.io/kubernetes module, `agnhost test-webserver`",
                 "kubectl Update Demo"),
    PlannedImage("Kitten", Image(f"{_E2E}/kitten", "1.8"), MODULE_PROXY,
                 "the same with test/images/kitten's kitten.jpg and data.json",
                 "ImageVolume (pulls it with pullPolicy Always: needs the registry)"),
    PlannedImage("Nonewprivs", Image(f"{_E2E}/nonewprivs", "1.4"), TINY,
                 "upstream's test/images/nonewprivs/nnp.go (prints its effective uid) compiled "
                 "and installed setuid, on busybox",
                 "Security Context allowPrivilegeEscalation=false"),
)


def missing_from(listed: Iterable[Image],
                 planned: Sequence[PlannedImage] = CONFORMANCE_IMAGES) -> list[PlannedImage]:
    """The planned images ``e2e.test --list-images`` did not name: a different Kubernetes
    version moved a tag, and the plan needs a look."""
    names = set(listed)
    return [p for p in planned if p.image not in names]
