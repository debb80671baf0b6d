"""The TenantControlPlane spec as typed values, with the CRD's defaults applied again here so
renderers never depend on the API server having defaulted an object."""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Any

DEFAULT_ADMISSION_PLUGINS = (
    "CertificateApproval", "CertificateSigning", "CertificateSubjectRestriction",
    "DefaultIngressClass", "DefaultStorageClass", "DefaultTolerationSeconds", "LimitRanger",
    "MutatingAdmissionWebhook", "NamespaceLifecycle", "PersistentVolumeClaimResize",
    "Priority", "ResourceQuota", "RuntimeClass", "ServiceAccount",
    "StorageObjectInUseProtection", "TaintNodesByCondition", "ValidatingAdmissionWebhook",
)


# metadata.name: also the name of the tenant's Service (a DNS-1035 label, at most 63
# characters) and a label value on its pods (at most 63). The other objects Haku names after
# it (render/controlplane.py names(), plus <name>-datastore-password) are DNS subdomains of
# at most 253 characters, far from it at 63. The CRD refuses other names at creation.
NAME_MAX_LENGTH = 63
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

# spec.dataStoreSchema and spec.dataStoreUsername: one charset every driver and kine handle
# alike. No '.' (kube-apiserver cleans an etcd prefix /./ to /, and '..' climbs), no '/', no
# upper case (kine lower-cases the database of its endpoint; Haku's MySQL bookkeeping
# compares names without case), ASCII only (kine and PostgreSQL lower-case non-ASCII
# differently). At most 63 characters: PostgreSQL's limit (NAMEDATALEN - 1; longer names are
# cut), within MySQL's 64 for a database and the 64 of an etcd user's certificate CN, so a
# schema is stored under this very name by every driver, and so is a user, except on
# MySQL/MariaDB beyond its 32-character user limit: there a longer user (the default, the UID,
# is 36) gets a stable derived name (a prefix and a hash, haku.datastore.base.physical_name),
# shown in status.storage.setup.user. The default, the object's UID (lower-case hex and '-'),
# matches the pattern.
DATASTORE_NAME_MAX_LENGTH = 63
DATASTORE_NAME_PATTERN = r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$"
DATASTORE_NAME = re.compile(DATASTORE_NAME_PATTERN)

DEFAULT_SERVICE_CIDR = "10.96.0.0/16"

# The Kubernetes minor releases this operator runs tenant control planes for (the flags,
# configuration files and probes it renders are theirs), any patch release of them. The one
# list: the CRD's rule on spec.kubernetes.version is generated from it (version_rule(), a unit
# test keeps them equal), and render checks it again for objects admitted before.
SUPPORTED_MINORS: tuple[tuple[int, int], ...] = ((1, 36), (1, 37))
VERSION_FIELD = "spec.kubernetes.version"


def supported_versions_text() -> str:
    return ", ".join(f"v{major}.{minor}.x" for major, minor in SUPPORTED_MINORS)


def version_pattern() -> str:
    """A regular expression (RE2 and Python alike, no backslash: it goes into a CEL string)
    for the versions this operator runs."""
    by_major: dict[int, list[int]] = {}
    for major, minor in SUPPORTED_MINORS:
        by_major.setdefault(major, []).append(minor)
    alternatives = "|".join(f"v{major}[.]({'|'.join(str(m) for m in minors)})"
                            for major, minors in by_major.items())
    return f"^({alternatives})[.](0|[1-9][0-9]*)$"


def version_rule() -> dict[str, str]:
    """The CRD's rule on spec.kubernetes.version: only the minors this operator runs."""
    return {"rule": f"self.matches('{version_pattern()}')",
            "messageExpression": (f"'{VERSION_FIELD} ' + self + ' is not a version this Haku "
                                  f"runs (supported: {supported_versions_text()})'"),
            "message": f"{VERSION_FIELD} must be one of {supported_versions_text()}"}


def version_problem(version: str) -> str | None:
    """Why ``version`` is not one this operator runs, or None (the CRD's rule, again)."""
    if re.fullmatch(version_pattern(), version):
        return None
    return f"{version} is not a version this Haku runs (supported: {supported_versions_text()})"


@dataclass(frozen=True)
class RefusedFlag:
    """A flag ``spec.controlPlane.deployment.extraArgs`` refuses because it would weaken the
    tenant or reach past it (issue 12, "Tenants stay in their lane"; docs/security.md). The
    flags Haku wires itself have a rule of their own, derived from the renderer.

    ``name`` is a regular expression (RE2 and Python alike) for the flag without its ``--``;
    ``value``, when given, one its value must match for the flag to be refused (None: refused
    with any value, or none)."""

    name: str
    value: str | None
    shown: str  # how messages name it
    why: str

    @property
    def pattern(self) -> str:
        if self.value is None:
            return f"^--(?:{self.name})(=|$)"
        return f"^--(?:{self.name})=(?:{self.value})$"


_OTHER_TENANT_DATA = "it would reach storage other than the tenant's own"
_NOT_THE_TENANTS = ("it would point the component at an API server other than its tenant's, "
                    "with the tenant's credentials")

# The one list: the CRD's rules are generated from it (extra_args_rule), a unit test keeps
# them equal, and refused_flag() applies it in Python. The CRD item pattern already makes each
# item one "--flag" or "--flag=value" (no single dash, no '_', which pflag would turn into '-').
# --anonymous-auth stays allowed: true is kube-apiserver's default, and Haku's probes call
# /livez and /readyz anonymously; it opens nothing once AlwaysAllow is refused.
REFUSED_EXTRA_ARGS: dict[str, tuple[RefusedFlag, ...]] = {
    "apiServer": (
        RefusedFlag("authorization-mode", ".*AlwaysAllow.*",
                    "--authorization-mode with AlwaysAllow",
                    "every request, anonymous ones included, would be allowed everything"),
        RefusedFlag("etcd-servers-overrides", None, "--etcd-servers-overrides",
                    _OTHER_TENANT_DATA),
        RefusedFlag("insecure-[A-Za-z0-9-]+", None, "--insecure-*",
                    "it would serve the API without authentication or TLS"),
    ),
    "controllerManager": (
        RefusedFlag("master", None, "--master", _NOT_THE_TENANTS),
    ),
    "scheduler": (
        RefusedFlag("master", None, "--master", _NOT_THE_TENANTS),
    ),
    # kine: Haku wires its listener (a unix socket in the pod), its endpoint (from a Secret),
    # its TLS to the database and its metrics (off); none of them can be overridden.
    "kine": (
        RefusedFlag("endpoint", None, "--endpoint", _OTHER_TENANT_DATA),
        RefusedFlag("listen-address|peer-bind-address|peer-advertise-address", None,
                    "--listen-address, --peer-bind-address, --peer-advertise-address",
                    "kine would serve the tenant's data unauthenticated on the pod network"),
        RefusedFlag("metrics-bind-address|metrics-enable-profiling", None,
                    "--metrics-bind-address, --metrics-enable-profiling",
                    "kine would serve its metrics and profiling on the pod network"),
        RefusedFlag("ca-file|skip-verify", None, "--ca-file, --skip-verify",
                    "kine would stop verifying the database server Haku set up"),
    ),
}

EXTRA_ARGS_FIELD = "spec.controlPlane.deployment.extraArgs"


def refused_pattern(component: str) -> str:
    """One regular expression matching every extraArgs item refused for ``component``."""
    return "|".join(f.pattern for f in REFUSED_EXTRA_ARGS[component])


def refused_flag(component: str, arg: str) -> RefusedFlag | None:
    """The :class:`RefusedFlag` that refuses ``arg`` in ``extraArgs.<component>``, or None."""
    for flag in REFUSED_EXTRA_ARGS.get(component, ()):
        if re.match(flag.pattern, arg):
            return flag
    return None


def extra_args_rule(component: str) -> dict[str, str]:
    """The CRD's x-kubernetes-validations rule refusing :data:`REFUSED_EXTRA_ARGS` in
    ``extraArgs.<component>``, its message naming the field and the first refused flag."""
    flags = REFUSED_EXTRA_ARGS[component]
    field_ = f"{EXTRA_ARGS_FIELD}.{component}"

    def said(flag: RefusedFlag) -> str:
        if flag.value is None:
            return f'f.split("=")[0] + ": {flag.why}"'
        return f'"{flag.shown}: {flag.why}"'

    why = said(flags[-1])
    for flag in reversed(flags[:-1]):
        why = f"(f.matches('{flag.pattern}') ? {said(flag)} : {why})"
    pattern = refused_pattern(component)
    return {
        "rule": f"self.all(a, !a.matches('{pattern}'))",
        "messageExpression": (f"self.filter(a, a.matches('{pattern}'))"
                              f'.map(f, "{field_} must not set " + {why})[0]'),
        "message": (f"{field_} must not set {', '.join(f.shown for f in flags)}: they would "
                    "weaken the tenant or reach past it"),
    }


def service_cidr_problem(cidr: str) -> str | None:
    """Why ``cidr`` cannot be a tenant's service range, or None: the CRD's rule, again.

    kube-apiserver (v1.37) refuses a primary range of fewer than 8 addresses
    (``ServiceIPRange``), and its IP allocator an IPv6 range wider than /64; the first
    address after the network address is the in-cluster ``kubernetes`` Service."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return f"{cidr!r} is not a CIDR"
    if net.num_addresses < 8:
        return (f"{cidr} holds {net.num_addresses} address(es); a service range needs at least "
                "8 (IPv4: /29 or a shorter prefix; IPv6: /64 to /125)")
    if net.version == 6 and net.prefixlen < 64:
        return f"{cidr} is wider than /64, the widest IPv6 service range kube-apiserver takes"
    return None


@dataclass(frozen=True)
class Metadata:
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: dict[str, Any] | None) -> Metadata:
        data = data or {}
        return cls(dict(data.get("labels") or {}), dict(data.get("annotations") or {}))


@dataclass(frozen=True)
class Gateway:
    """spec.controlPlane.gateway (Kamaji's shape): a Gateway API TLSRoute to the Service.
    ``hostname`` as given (a DNS name, optionally ``:port``); ``parent_refs`` the Gateway API
    ParentReferences as given (the CRD admits exactly one)."""

    hostname: str
    parent_refs: tuple[dict[str, Any], ...] = ()
    metadata: Metadata = field(default_factory=Metadata)

    @classmethod
    def parse(cls, data: dict[str, Any] | None) -> Gateway | None:
        if data is None:
            return None
        return cls(hostname=str(data.get("hostname") or ""),
                   parent_refs=tuple(copy.deepcopy(data.get("parentRefs") or ())),
                   metadata=Metadata.parse(data.get("additionalMetadata")))

    @property
    def host(self) -> str:
        """The host name without a port."""
        return self.hostname.rsplit(":", 1)[0]

    @property
    def port_given(self) -> int | None:
        """The port after the host name, if one is given."""
        host, sep, port = self.hostname.rpartition(":")
        return int(port) if sep and host and port.isdigit() else None


@dataclass(frozen=True)
class Components:
    """A value per control-plane component (extra args, resources)."""

    api_server: Any = None
    controller_manager: Any = None
    scheduler: Any = None
    kine: Any = None

    @classmethod
    def parse(cls, data: dict[str, Any] | None, empty: Any) -> Components:
        data = data or {}
        return cls(data.get("apiServer", empty), data.get("controllerManager", empty),
                   data.get("scheduler", empty), data.get("kine", empty))


@dataclass(frozen=True)
class Addon:
    """An addon Haku installs in the tenant (Kamaji's shape). ``None`` on the spec = absent."""

    image_repository: str
    image_tag: str

    def image(self, name: str) -> str:
        return f"{self.image_repository}/{name}:{self.image_tag}"


COREDNS_REPOSITORY = "registry.k8s.io/coredns"
KUBE_PROXY_REPOSITORY = "registry.k8s.io"


# The CoreDNS release kubeadm v1.37 installs (`kubeadm config images list`).
COREDNS_TAG = "v1.14.6"


# Konnectivity (kubernetes-sigs/apiserver-network-proxy): the release this operator runs by
# default, for every Kubernetes version it supports. Kamaji defaults to v0.<minor>.0 of the
# tenant's Kubernetes; Haku pins one release it has built and tested (the protocol between
# kube-apiserver, server and agent is stable across releases).
KONNECTIVITY_VERSION = "v0.36.0"
KONNECTIVITY_SERVER_IMAGE = "registry.k8s.io/kas-network-proxy/proxy-server"
KONNECTIVITY_AGENT_IMAGE = "registry.k8s.io/kas-network-proxy/proxy-agent"
KONNECTIVITY_PORT = 8132
KONNECTIVITY_AGENT_TOLERATIONS = ({"key": "CriticalAddonsOnly", "operator": "Exists"},)


@dataclass(frozen=True)
class KonnectivityServer:
    """The proxy-server, a container of the control-plane pod (``addons.konnectivity.server``).
    ``port`` is where agents connect (and the Service's ``konnectivity-server`` port);
    ``port_given`` is None when the spec left it to the default."""

    port: int = KONNECTIVITY_PORT
    port_given: int | None = None
    image: str = KONNECTIVITY_SERVER_IMAGE
    version: str = KONNECTIVITY_VERSION
    resources: dict[str, Any] | None = None
    extra_args: tuple[str, ...] = ()

    @property
    def image_ref(self) -> str:
        return f"{self.image}:{self.version}"

    @classmethod
    def parse(cls, data: dict[str, Any] | None) -> KonnectivityServer:
        data = data or {}
        port = data.get("port")
        return cls(port=int(port or KONNECTIVITY_PORT), port_given=int(port) if port else None,
                   image=data.get("image") or KONNECTIVITY_SERVER_IMAGE,
                   version=data.get("version") or KONNECTIVITY_VERSION,
                   resources=data.get("resources"),
                   extra_args=tuple(data.get("extraArgs") or ()))


@dataclass(frozen=True)
class KonnectivityAgent:
    """The proxy-agent, run inside the tenant (``addons.konnectivity.agent``): a DaemonSet (one
    per node) or a Deployment of ``replicas``."""

    image: str = KONNECTIVITY_AGENT_IMAGE
    version: str = KONNECTIVITY_VERSION
    tolerations: tuple[dict[str, Any], ...] = KONNECTIVITY_AGENT_TOLERATIONS
    extra_args: tuple[str, ...] = ()
    host_network: bool = False
    mode: str = "DaemonSet"
    replicas: int = 1  # Deployment mode only

    @property
    def image_ref(self) -> str:
        return f"{self.image}:{self.version}"

    @classmethod
    def parse(cls, data: dict[str, Any] | None) -> KonnectivityAgent:
        data = data or {}
        tolerations = data.get("tolerations")
        return cls(image=data.get("image") or KONNECTIVITY_AGENT_IMAGE,
                   version=data.get("version") or KONNECTIVITY_VERSION,
                   tolerations=(KONNECTIVITY_AGENT_TOLERATIONS if tolerations is None
                                else tuple(tolerations)),
                   extra_args=tuple(data.get("extraArgs") or ()),
                   host_network=bool(data.get("hostNetwork", False)),
                   mode=data.get("mode") or "DaemonSet",
                   replicas=int(data.get("replicas") or 1))


@dataclass(frozen=True)
class Konnectivity:
    """``spec.addons.konnectivity``: kube-apiserver's traffic to the tenant's nodes, pods and
    Services goes through tunnels the agents open from inside the tenant."""

    server: KonnectivityServer = field(default_factory=KonnectivityServer)
    agent: KonnectivityAgent = field(default_factory=KonnectivityAgent)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Konnectivity:
        return cls(KonnectivityServer.parse(data.get("server")),
                   KonnectivityAgent.parse(data.get("agent")))


@dataclass(frozen=True)
class Addons:
    core_dns: Addon | None = None
    kube_proxy: Addon | None = None
    konnectivity: Konnectivity | None = None

    @classmethod
    def parse(cls, data: dict[str, Any] | None, version: str) -> Addons:
        data = data or {}
        dns, proxy = data.get("coreDNS"), data.get("kubeProxy")
        konnectivity = data.get("konnectivity")
        return cls(
            core_dns=None if dns is None else Addon(
                dns.get("imageRepository") or COREDNS_REPOSITORY,
                dns.get("imageTag") or COREDNS_TAG),
            kube_proxy=None if proxy is None else Addon(
                proxy.get("imageRepository") or KUBE_PROXY_REPOSITORY,
                proxy.get("imageTag") or version),
            konnectivity=None if konnectivity is None else Konnectivity.parse(konnectivity))


@dataclass(frozen=True)
class WritePermissions:
    """``spec.writePermissions``: which writes the tenant's API server refuses (a freeze)."""

    block_creation: bool = False
    block_update: bool = False
    block_deletion: bool = False

    @classmethod
    def parse(cls, data: dict[str, Any] | None) -> WritePermissions:
        data = data or {}
        return cls(bool(data.get("blockCreation")), bool(data.get("blockUpdate")),
                   bool(data.get("blockDeletion")))

    @property
    def operations(self) -> tuple[str, ...]:
        """The admission operations refused, in Kubernetes' words."""
        return tuple(op for op, on in (("CREATE", self.block_creation),
                                       ("UPDATE", self.block_update),
                                       ("DELETE", self.block_deletion)) if on)

    @property
    def limited(self) -> bool:
        return bool(self.operations)


@dataclass(frozen=True)
class TenantControlPlaneSpec:
    name: str
    namespace: str
    uid: str
    generation: int
    version: str
    data_store: str | None
    data_store_schema: str
    data_store_username: str
    replicas: int
    strategy: dict[str, Any] | None
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    affinity: dict[str, Any] | None
    topology_spread: list[dict[str, Any]]
    runtime_class: str | None
    service_account: str | None
    resources: Components
    extra_args: Components
    registry: str
    images: dict[str, str]  # component -> image name (without registry and tag)
    tag_suffix: str
    deployment_metadata: Metadata
    pod_metadata: Metadata
    service_type: str
    service_metadata: Metadata
    ingress_class: str | None
    ingress_hostname: str | None
    ingress_metadata: Metadata
    address: str
    port: int
    cert_sans: tuple[str, ...]
    service_cidrs: tuple[str, ...]
    pod_cidrs: tuple[str, ...]
    dns_service_ips: tuple[str, ...]
    cluster_domain: str
    admission_plugins: tuple[str, ...]
    preferred_address_types: tuple[str, ...]
    addons: Addons = field(default_factory=Addons)
    # kubernetes.kubelet: cgroupfs (Kamaji's name for the kubelet's cgroupDriver; None: unset)
    # and configurationJSONPatches (RFC 6902 operations on the KubeletConfiguration served to
    # joining nodes, as given: haku.render.tenant_bootstrap applies them).
    kubelet_cgroupfs: str | None = None
    kubelet_patches: tuple[dict[str, Any], ...] = ()
    # spec.writePermissions (Kamaji's shape): the kinds of write the tenant's API refuses.
    write_permissions: WritePermissions = field(default_factory=lambda: WritePermissions())
    # networkProfile.port as given (None: not set, the NodePort is allocated by the API server)
    port_given: int | None = None
    advertise_address: str = ""
    allow_address_as_external_ip: bool = False
    load_balancer_source_ranges: tuple[str, ...] = ()
    load_balancer_class: str | None = None
    allocate_load_balancer_node_ports: bool | None = None
    additional_ports: tuple[dict[str, Any], ...] = ()
    pod_security_context: dict[str, Any] | None = None
    container_security_contexts: Components = field(default_factory=Components)
    automount_service_account_token: bool = False  # Haku's default; Kamaji leaves it unset
    # Where service_cidrs came from, for messages: serviceCidrs (a list) or serviceCidr.
    service_cidrs_field: str = "spec.networkProfile.serviceCidr"
    pod_cidrs_field: str = "spec.networkProfile.podCidr"
    # spec.controlPlane.gateway (None: not set).
    gateway: Gateway | None = None

    def at_version(self, version: str) -> TenantControlPlaneSpec:
        """This spec for another Kubernetes version (what the in-tenant objects carry while
        an upgrade rolls the control plane): kube-proxy's tag follows when it was derived."""
        if version == self.version:
            return self
        proxy = self.addons.kube_proxy
        if proxy is not None and proxy.image_tag == self.version:
            proxy = replace(proxy, image_tag=version)
        return replace(self, version=version, addons=replace(self.addons, kube_proxy=proxy))

    @classmethod
    def parse(cls, obj: dict[str, Any]) -> TenantControlPlaneSpec:
        meta = obj["metadata"]
        spec = obj.get("spec") or {}
        cp = spec.get("controlPlane") or {}
        dep = cp.get("deployment") or {}
        svc = cp.get("service") or {}
        ing = cp.get("ingress") or {}
        net = spec.get("networkProfile") or {}
        k8s = spec.get("kubernetes") or {}
        reg = dep.get("registrySettings") or {}
        uid = meta.get("uid", "")
        service_cidrs = tuple(net.get("serviceCidrs")
                              or [net.get("serviceCidr") or DEFAULT_SERVICE_CIDR])
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace", "default"),
            uid=uid,
            generation=int(meta.get("generation") or 0),
            version=k8s["version"],
            data_store=spec.get("dataStore"),
            data_store_schema=spec.get("dataStoreSchema") or uid,
            data_store_username=spec.get("dataStoreUsername") or uid,
            replicas=int(dep.get("replicas", 2)),
            strategy=dep.get("strategy"),
            node_selector=dict(dep.get("nodeSelector") or {}),
            tolerations=list(dep.get("tolerations") or []),
            affinity=dep.get("affinity"),
            topology_spread=list(dep.get("topologySpreadConstraints") or []),
            runtime_class=dep.get("runtimeClassName"),
            service_account=dep.get("serviceAccountName"),
            resources=Components.parse(dep.get("resources"), None),
            extra_args=Components.parse(dep.get("extraArgs"), []),
            registry=reg.get("registry") or "registry.k8s.io",
            images={
                "kube-apiserver": reg.get("apiServerImage") or "kube-apiserver",
                "kube-controller-manager": reg.get("controllerManagerImage")
                or "kube-controller-manager",
                "kube-scheduler": reg.get("schedulerImage") or "kube-scheduler",
            },
            tag_suffix=reg.get("tagSuffix") or "",
            deployment_metadata=Metadata.parse(dep.get("additionalMetadata")),
            pod_metadata=Metadata.parse(dep.get("podAdditionalMetadata")),
            service_type=svc.get("serviceType", "ClusterIP"),
            service_metadata=Metadata.parse(svc.get("additionalMetadata")),
            ingress_class=ing.get("ingressClassName"),
            ingress_hostname=ing.get("hostname"),
            ingress_metadata=Metadata.parse(ing.get("additionalMetadata")),
            address=net.get("address") or "",
            port=int(net.get("port") or 6443),
            cert_sans=tuple(net.get("certSANs") or ()),
            service_cidrs=service_cidrs,
            pod_cidrs=tuple(net.get("podCidrs") or [net.get("podCidr") or "10.244.0.0/16"]),
            dns_service_ips=tuple(net.get("dnsServiceIPs") or default_dns_ips(service_cidrs)),
            cluster_domain=net.get("clusterDomain") or "cluster.local",
            admission_plugins=tuple(k8s.get("admissionControllers")
                                    or DEFAULT_ADMISSION_PLUGINS),
            preferred_address_types=tuple((k8s.get("kubelet") or {}).get("preferredAddressTypes")
                                          or ("InternalIP", "ExternalIP", "Hostname")),
            addons=Addons.parse(spec.get("addons"), k8s["version"]),
            kubelet_cgroupfs=(k8s.get("kubelet") or {}).get("cgroupfs") or None,
            kubelet_patches=tuple(copy.deepcopy(
                (k8s.get("kubelet") or {}).get("configurationJSONPatches") or ())),
            write_permissions=WritePermissions.parse(spec.get("writePermissions")),
            port_given=int(net["port"]) if net.get("port") else None,
            advertise_address=net.get("advertiseAddress") or "",
            allow_address_as_external_ip=bool(net.get("allowAddressAsExternalIP")),
            load_balancer_source_ranges=tuple(net.get("loadBalancerSourceRanges") or ()),
            load_balancer_class=net.get("loadBalancerClass") or None,
            allocate_load_balancer_node_ports=svc.get("allocateLoadBalancerNodePorts"),
            additional_ports=tuple(svc.get("additionalPorts") or ()),
            pod_security_context=dep.get("podSecurityContext") or None,
            container_security_contexts=Components.parse(
                dep.get("containerSecurityContexts"), None),
            automount_service_account_token=bool(dep.get("automountServiceAccountToken",
                                                         False)),
            service_cidrs_field=("spec.networkProfile.serviceCidrs" if net.get("serviceCidrs")
                                 else "spec.networkProfile.serviceCidr"),
            pod_cidrs_field=("spec.networkProfile.podCidrs" if net.get("podCidrs")
                             else "spec.networkProfile.podCidr"),
            gateway=Gateway.parse(cp.get("gateway")),
        )

    def image(self, component: str) -> str:
        return f"{self.registry}/{self.images[component]}:{self.version}{self.tag_suffix}"

    def service_cidr_field(self, index: int) -> str:
        """The spec path of ``service_cidrs[index]``."""
        if self.service_cidrs_field.endswith("serviceCidrs"):
            return f"{self.service_cidrs_field}[{index}]"
        return self.service_cidrs_field

    def pod_cidr_field(self, index: int) -> str:
        """The spec path of ``pod_cidrs[index]``."""
        if self.pod_cidrs_field.endswith("podCidrs"):
            return f"{self.pod_cidrs_field}[{index}]"
        return self.pod_cidrs_field

    @property
    def kubernetes_service_ips(self) -> list[str]:
        """The first address of each service CIDR: the in-cluster ``kubernetes`` Service.
        ValueError for a CIDR that cannot be a service range (:func:`service_cidr_problem`;
        renderers report it as ``haku.render.InvalidSpec``)."""
        ips = []
        for cidr in self.service_cidrs:
            problem = service_cidr_problem(cidr)
            if problem:
                raise ValueError(problem)
            ips.append(str(ipaddress.ip_network(cidr, strict=False).network_address + 1))
        return ips


def default_dns_ips(service_cidrs: tuple[str, ...]) -> list[str]:
    """Kamaji's default: the network address + 10 (IPv4) or + 0x10 (IPv6). A CIDR that does
    not parse gets none here (the CRD refuses it; renderers report it)."""
    ips = []
    for cidr in service_cidrs:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue
        ips.append(str(net.network_address + (10 if net.version == 4 else 0x10)))
    return ips
