"""Pinned upstream versions: the one place to change them.

Every version may be overridden by an environment variable of the same name with a ``HAKU_``
prefix (``HAKU_KUBERNETES_VERSION=v1.36.3``), so an older minor can be built for upgrade tests.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from haku.api import tenantcontrolplane as api
from haku.errors import HakuError

KUBERNETES_VERSION = "v1.37.2"
# The older release the dev tooling offers beside KUBERNETES_VERSION (issue 14, upgrades): a
# tenant starts on it and is upgraded to KUBERNETES_VERSION. A patch release of the minor
# before, one of the operator's SUPPORTED_MINORS (a unit test checks both). `haku dev images`
# builds it and imports its images; `haku dev worker add` runs a worker of a tenant on it with
# its kubelet and kubeadm.
PREVIOUS_KUBERNETES_VERSION = "v1.36.3"
# The etcd kubeadm 1.37 pins is 3.7.0; kine v0.17.5 requires go.etcd.io/etcd v3.7.3.
ETCD_VERSION = "v3.7.3"
KINE_VERSION = "v0.17.5"
COREDNS_VERSION = "v1.14.6"
# SIG Network's reference NetworkPolicy implementation, enforcing policy on the admin node.
KUBE_NETWORK_POLICIES_VERSION = "v0.8.0"
# Konnectivity (kubernetes-sigs/apiserver-network-proxy): proxy-server beside a tenant's API
# server, proxy-agent on its nodes. Built from the release tarball in shared/third_party (the
# module proxy refuses the module path). The release the operator runs by default is pinned
# with the API (haku.api.tenantcontrolplane), so the dev cluster builds that one.
KONNECTIVITY_VERSION = api.KONNECTIVITY_VERSION
METRICS_SERVER_VERSION = "v0.8.0"
PAUSE_VERSION = "3.10.2"
# Helm, for the chart in charts/haku (its tests run the real `helm` against the API tier). A v4
# release: the module path (helm.sh/helm/v4) is the major's.
HELM_VERSION = "v4.3.1"
# CNCF Distribution's registry (issue 16: a local OCI registry for the conformance run), built
# from github.com/distribution/distribution/v3 (the proxy serves v3.0.0, v3.1.1, v3.1.2).
REGISTRY_VERSION = "v3.1.2"
# Issue 17, exposure in the dev cluster: Traefik v3 (Ingress TLS passthrough, Gateway API
# TLSRoute; `haku dev exposure up`, haku.dev.exposure) and MetalLB (LoadBalancer, L2 mode;
# built and cached only so far). Traefik is pinned at v3.7.10: at v3.7.13 the module proxy
# refuses (403) some of its dependencies' zips (docs/exposure.md). MetalLB: the newest v0.15.x
# the proxy serves.
TRAEFIK_VERSION = "v3.7.10"
METALLB_VERSION = "v0.15.2"
# Debian's busybox-static, packaged as a tiny image for test workloads.
BUSYBOX_IMAGE = "docker.io/library/busybox:haku"
# Haku's own image (the operator), tagged with Haku's version.
OPERATOR_IMAGE_REPOSITORY = "ghcr.io/haku-dev/haku"

_SEMVER = re.compile(r"^v(\d+)\.(\d+)\.(\d+)$")


class VersionError(HakuError, ValueError):
    """A version string that is not of the form vMAJOR.MINOR.PATCH."""


@dataclass(frozen=True)
class Versions:
    kubernetes: str = KUBERNETES_VERSION
    etcd: str = ETCD_VERSION
    kine: str = KINE_VERSION
    coredns: str = COREDNS_VERSION
    pause: str = PAUSE_VERSION
    kube_network_policies: str = KUBE_NETWORK_POLICIES_VERSION
    konnectivity: str = KONNECTIVITY_VERSION
    metrics_server: str = METRICS_SERVER_VERSION
    helm: str = HELM_VERSION
    registry: str = REGISTRY_VERSION
    traefik: str = TRAEFIK_VERSION
    metallb: str = METALLB_VERSION

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Versions:
        env = dict(os.environ) if env is None else env
        versions = cls(
            kubernetes=env.get("HAKU_KUBERNETES_VERSION", KUBERNETES_VERSION),
            etcd=env.get("HAKU_ETCD_VERSION", ETCD_VERSION),
            kine=env.get("HAKU_KINE_VERSION", KINE_VERSION),
            coredns=env.get("HAKU_COREDNS_VERSION", COREDNS_VERSION),
            pause=env.get("HAKU_PAUSE_VERSION", PAUSE_VERSION),
            kube_network_policies=env.get("HAKU_KUBE_NETWORK_POLICIES_VERSION",
                                          KUBE_NETWORK_POLICIES_VERSION),
            konnectivity=env.get("HAKU_KONNECTIVITY_VERSION", KONNECTIVITY_VERSION),
            metrics_server=env.get("HAKU_METRICS_SERVER_VERSION", METRICS_SERVER_VERSION),
            helm=env.get("HAKU_HELM_VERSION", HELM_VERSION),
            registry=env.get("HAKU_REGISTRY_VERSION", REGISTRY_VERSION),
            traefik=env.get("HAKU_TRAEFIK_VERSION", TRAEFIK_VERSION),
            metallb=env.get("HAKU_METALLB_VERSION", METALLB_VERSION),
        )
        for name in ("kubernetes", "etcd", "kine", "coredns", "kube_network_policies",
                     "konnectivity", "metrics_server", "helm", "registry", "traefik",
                     "metallb"):
            parse_semver(getattr(versions, name), what=name)
        return versions

    def with_kubernetes(self, version: str) -> Versions:
        parse_semver(version, what="kubernetes")
        return replace(self, kubernetes=version)


def parse_semver(version: str, what: str = "version") -> tuple[int, int, int]:
    match = _SEMVER.match(version)
    if not match:
        raise VersionError(
            f"{what} version {version!r} is not of the form vMAJOR.MINOR.PATCH (e.g. v1.37.2)"
        )
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def offered_kubernetes_versions(current: str = KUBERNETES_VERSION) -> tuple[str, ...]:
    """The Kubernetes versions the dev tooling offers tenants, oldest first: the previous
    release and ``current`` (the admin cluster's; one entry if they are the same)."""
    return tuple(dict.fromkeys(sorted((PREVIOUS_KUBERNETES_VERSION, current),
                                      key=lambda v: parse_semver(v, what="kubernetes"))))


# Upstream's version skew policy for the kubelet: never newer than kube-apiserver (by minor),
# and up to three minors older.
KUBELET_MAX_MINORS_OLDER = 3


def kubelet_skew_problem(kubelet: str, apiserver: str) -> str | None:
    """Why a kubelet of version ``kubelet`` must not join an API server of ``apiserver``
    under upstream's skew policy, or None if it may."""
    k_major, k_minor, _ = parse_semver(kubelet, what="kubelet")
    a_major, a_minor, _ = parse_semver(apiserver, what="kube-apiserver")
    if k_major != a_major:
        return f"kubelet {kubelet} and kube-apiserver {apiserver} differ in major version"
    if k_minor > a_minor:
        return (f"kubelet {kubelet} is newer than the tenant's kube-apiserver {apiserver}: "
                "upstream's skew policy allows a kubelet as new as its API server, never newer")
    if a_minor - k_minor > KUBELET_MAX_MINORS_OLDER:
        return (f"kubelet {kubelet} is more than {KUBELET_MAX_MINORS_OLDER} minor versions "
                f"older than the tenant's kube-apiserver {apiserver} (upstream's skew policy)")
    return None


def staging_version(kubernetes_version: str) -> str:
    """k8s.io/kubernetes v1.37.2 publishes its staging modules (k8s.io/api, ...) as v0.37.2."""
    _, minor, patch = parse_semver(kubernetes_version, what="kubernetes")
    return f"v0.{minor}.{patch}"


def etcd_image_tag(etcd_version: str) -> str:
    """registry.k8s.io/etcd tags drop the v and add a build suffix: v3.7.3 -> 3.7.3-0."""
    parse_semver(etcd_version, what="etcd")
    return etcd_version.removeprefix("v") + "-0"


def kube_proxy_image_name(kubernetes_version: str) -> str:
    """registry.k8s.io/kube-proxy is tagged with the Kubernetes version: ...:v1.37.2."""
    parse_semver(kubernetes_version, what="kubernetes")
    return f"registry.k8s.io/kube-proxy:{kubernetes_version}"


def coredns_image_name(coredns_version: str) -> str:
    """registry.k8s.io/coredns/coredns keeps the v in its tags: v1.14.6 -> ...:v1.14.6."""
    parse_semver(coredns_version, what="coredns")
    return f"registry.k8s.io/coredns/coredns:{coredns_version}"


def konnectivity_image_names(konnectivity_version: str) -> tuple[str, str]:
    """(proxy-server, proxy-agent) images: ``registry.k8s.io/kas-network-proxy/proxy-server:
    v0.36.0`` and ``…/proxy-agent:v0.36.0`` (upstream keeps the v)."""
    parse_semver(konnectivity_version, what="konnectivity")
    return (f"{api.KONNECTIVITY_SERVER_IMAGE}:{konnectivity_version}",
            f"{api.KONNECTIVITY_AGENT_IMAGE}:{konnectivity_version}")


def metrics_server_image_name(metrics_server_version: str) -> str:
    """``registry.k8s.io/metrics-server/metrics-server:v0.8.0``."""
    parse_semver(metrics_server_version, what="metrics-server")
    return f"registry.k8s.io/metrics-server/metrics-server:{metrics_server_version}"


def operator_image_name(haku_version: str | None = None) -> str:
    """``ghcr.io/haku-dev/haku:<Haku's version>`` (``haku.__version__`` unless given)."""
    if haku_version is None:
        from haku import __version__

        haku_version = __version__
    if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", haku_version):
        raise VersionError(f"{haku_version!r} is not a valid image tag")
    return f"{OPERATOR_IMAGE_REPOSITORY}:{haku_version}"
