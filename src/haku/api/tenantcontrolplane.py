"""The TenantControlPlane spec as typed values, with the CRD's defaults applied again here so
renderers never depend on the API server having defaulted an object."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

DEFAULT_ADMISSION_PLUGINS = (
    "CertificateApproval", "CertificateSigning", "CertificateSubjectRestriction",
    "DefaultIngressClass", "DefaultStorageClass", "DefaultTolerationSeconds", "LimitRanger",
    "MutatingAdmissionWebhook", "NamespaceLifecycle", "PersistentVolumeClaimResize",
    "Priority", "ResourceQuota", "RuntimeClass", "ServiceAccount",
    "StorageObjectInUseProtection", "TaintNodesByCondition", "ValidatingAdmissionWebhook",
)


@dataclass(frozen=True)
class Metadata:
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: dict[str, Any] | None) -> Metadata:
        data = data or {}
        return cls(dict(data.get("labels") or {}), dict(data.get("annotations") or {}))


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


@dataclass(frozen=True)
class Addons:
    core_dns: Addon | None = None
    kube_proxy: Addon | None = None

    @classmethod
    def parse(cls, data: dict[str, Any] | None, version: str) -> Addons:
        data = data or {}
        dns, proxy = data.get("coreDNS"), data.get("kubeProxy")
        return cls(
            core_dns=None if dns is None else Addon(
                dns.get("imageRepository") or COREDNS_REPOSITORY,
                dns.get("imageTag") or COREDNS_TAG),
            kube_proxy=None if proxy is None else Addon(
                proxy.get("imageRepository") or KUBE_PROXY_REPOSITORY,
                proxy.get("imageTag") or version))


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
        service_cidrs = tuple(net.get("serviceCidrs") or [net.get("serviceCidr") or "10.96.0.0/16"])
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
        )

    def image(self, component: str) -> str:
        return f"{self.registry}/{self.images[component]}:{self.version}{self.tag_suffix}"

    @property
    def kubernetes_service_ips(self) -> list[str]:
        """The first address of each service CIDR: the in-cluster ``kubernetes`` Service."""
        return [str(next(ipaddress.ip_network(c, strict=False).hosts()))
                for c in self.service_cidrs]


def default_dns_ips(service_cidrs: tuple[str, ...]) -> list[str]:
    """Kamaji's default: the network address + 10 (IPv4) or + 0x10 (IPv6)."""
    ips = []
    for cidr in service_cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        ips.append(str(net.network_address + (10 if net.version == 4 else 0x10)))
    return ips
