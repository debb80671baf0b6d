"""What Haku applies inside a tenant so that nodes can join it (pure).

The objects are the ones ``kubeadm init`` leaves in a cluster (its ``upload-config``,
``bootstrap-token`` and ``addon`` phases), rendered for a tenant whose control plane runs
elsewhere: the ClusterConfiguration and KubeletConfiguration nodes download when they join,
the RBAC that lets a bootstrap token post a CSR and get it approved, the ``cluster-info``
ConfigMap anonymous discovery reads, and the kube-proxy and CoreDNS addons.

Four groups: ``core`` (always) and one per addon (empty when the addon is absent from the
spec): kube-proxy, CoreDNS and the Konnectivity agents (render/konnectivity.py). Every object
carries ``haku.dev/addon: <group>`` and ``app.kubernetes.io/managed-by: haku`` so that a
removed addon takes exactly its own objects with it.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import urlsplit

import yaml

from haku.api.tenantcontrolplane import Addon, TenantControlPlaneSpec
from haku.render import InvalidSpec, jsonpatch
from haku.render import konnectivity as konnectivity_render

ADDON_LABEL = "haku.dev/addon"
MANAGED_BY = {"app.kubernetes.io/managed-by": "haku"}
CORE, KUBE_PROXY, COREDNS = "core", "kube-proxy", "coredns"
# On the addons' pod templates: the fingerprint of the CAs the tenant trusts.
TRUST_ANNOTATION = "haku.dev/trust-bundle"
KONNECTIVITY = konnectivity_render.GROUP

KUBE_SYSTEM, KUBE_PUBLIC = "kube-system", "kube-public"
RBAC = "rbac.authorization.k8s.io"
# The group every token made by `haku join-command` (and `kubeadm token create`) is in.
NODE_BOOTSTRAPPERS = "system:bootstrappers:kubeadm:default-node-token"
NODES = "system:nodes"
# The CN of the tenant's apiserver-kubelet-client certificate (render/tenant_pki.py).
APISERVER_KUBELET_CLIENT = "kube-apiserver-kubelet-client"
PKI_DIR = "/etc/kubernetes/pki"
KUBE_PROXY_DIR = "/var/lib/kube-proxy"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

Object = dict[str, Any]


def _meta(name: str, group: str, namespace: str | None = None,
          labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name,
                            "labels": {**(labels or {}), ADDON_LABEL: group, **MANAGED_BY}}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def _config_map(name: str, namespace: str, group: str, data: dict[str, str],
                labels: dict[str, str] | None = None) -> Object:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(name, group, namespace, labels), "data": data}


def _subject(kind: str, name: str, namespace: str | None = None) -> dict[str, str]:
    if kind == "ServiceAccount":
        return {"kind": kind, "name": name, "namespace": namespace or KUBE_SYSTEM}
    return {"apiGroup": RBAC, "kind": kind, "name": name}


def _cluster_role(name: str, group: str, rules: list[dict[str, Any]]) -> Object:
    return {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRole",
            "metadata": _meta(name, group), "rules": rules}


def _cluster_role_binding(name: str, group: str, role: str,
                          subjects: list[dict[str, str]]) -> Object:
    return {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRoleBinding",
            "metadata": _meta(name, group),
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
            "subjects": subjects}


def _config_map_reader(name: str, namespace: str, group: str, config_map: str,
                       subjects: list[dict[str, str]]) -> list[Object]:
    """A Role allowing ``get`` on one ConfigMap and its RoleBinding, both named ``name``."""
    return [
        {"apiVersion": f"{RBAC}/v1", "kind": "Role",
         "metadata": _meta(name, group, namespace),
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"],
                    "resourceNames": [config_map]}]},
        {"apiVersion": f"{RBAC}/v1", "kind": "RoleBinding",
         "metadata": _meta(name, group, namespace),
         "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": name},
         "subjects": subjects},
    ]


def _yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def _host_port(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    return parts.netloc or endpoint


# ---------------------------------------------------------------------------- core


def cluster_configuration(spec: TenantControlPlaneSpec, endpoint: str) -> dict[str, Any]:
    """kubeadm's ClusterConfiguration for the tenant, as ``kubeadm-config`` holds it."""
    dns = spec.addons.core_dns
    proxy = spec.addons.kube_proxy
    return {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "ClusterConfiguration",
        "clusterName": spec.name,
        "kubernetesVersion": spec.version,
        "controlPlaneEndpoint": _host_port(endpoint),
        "certificatesDir": PKI_DIR,
        "imageRepository": spec.registry,
        "networking": {"dnsDomain": spec.cluster_domain,
                       "serviceSubnet": ",".join(spec.service_cidrs),
                       "podSubnet": ",".join(spec.pod_cidrs)},
        "apiServer": {"certSANs": list(spec.cert_sans)} if spec.cert_sans else {},
        "controllerManager": {},
        "scheduler": {},
        "dns": ({"disabled": True} if dns is None else
                {"imageRepository": dns.image_repository, "imageTag": dns.image_tag}),
        "proxy": {"disabled": proxy is None},
    }


KUBELET_API_VERSION, KUBELET_KIND = "kubelet.config.k8s.io/v1beta1", "KubeletConfiguration"
KUBELET_FIELD = "spec.kubernetes.kubelet"
CGROUP_DRIVERS = ("systemd", "cgroupfs")


def kubelet_configuration(spec: TenantControlPlaneSpec) -> dict[str, Any]:
    """The KubeletConfiguration joining nodes download (kubeadm's ``kubelet-config``):
    kubeadm's settings for this tenant, ``cgroupDriver`` from ``kubelet.cgroupfs`` (default
    ``systemd``, kubeadm's), then ``kubelet.configurationJSONPatches`` applied in order, all
    or nothing (RFC 6902). A patch that fails, or leaves something that is no longer a
    KubeletConfiguration, is :class:`InvalidSpec` naming the patch."""
    base = _base_kubelet_configuration(spec)
    if not spec.kubelet_patches:
        return base
    field = f"{KUBELET_FIELD}.configurationJSONPatches"
    try:
        patched = jsonpatch.apply(base, spec.kubelet_patches)
    except jsonpatch.PatchError as e:
        op = spec.kubelet_patches[e.index]
        said = (f"{op.get('op')} {op.get('path')!r}" if isinstance(op, dict) else "")
        raise InvalidSpec(f"{field}[{e.index}]",
                          f"{said + ': ' if said else ''}{e.reason} (the patches apply all or "
                          "none: what was served before stays until they do)") from None
    if not isinstance(patched, dict) or patched.get("apiVersion") != KUBELET_API_VERSION \
            or patched.get("kind") != KUBELET_KIND:
        raise InvalidSpec(field, "the patched document is no longer a "
                          f"{KUBELET_API_VERSION} {KUBELET_KIND} (apiVersion and kind must "
                          "stay as they are)")
    return patched


def _base_kubelet_configuration(spec: TenantControlPlaneSpec) -> dict[str, Any]:
    driver = spec.kubelet_cgroupfs or "systemd"
    if driver not in CGROUP_DRIVERS:
        raise InvalidSpec(f"{KUBELET_FIELD}.cgroupfs",
                          f"{driver!r} is not one of {', '.join(CGROUP_DRIVERS)}")
    return {
        "apiVersion": KUBELET_API_VERSION,
        "kind": KUBELET_KIND,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True, "cacheTTL": "0s"},
            "x509": {"clientCAFile": f"{PKI_DIR}/ca.crt"},
        },
        "authorization": {"mode": "Webhook",
                          "webhook": {"cacheAuthorizedTTL": "0s",
                                      "cacheUnauthorizedTTL": "0s"}},
        "cgroupDriver": driver,
        "clusterDNS": list(spec.dns_service_ips),
        "clusterDomain": spec.cluster_domain,
        "rotateCertificates": True,
        "staticPodPath": "/etc/kubernetes/manifests",
    }


def cluster_info_kubeconfig(ca_crt: bytes, endpoint: str) -> dict[str, Any]:
    """kube-public/cluster-info's ``kubeconfig``: the endpoint and CA, no user (as kubeadm)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "", "cluster": {
            "server": endpoint,
            "certificate-authority-data": base64.b64encode(ca_crt).decode()}}],
        "contexts": None,
        "current-context": "",
        "preferences": {},
        "users": None,
    }


def core_objects(spec: TenantControlPlaneSpec, ca_crt: bytes, endpoint: str) -> list[Object]:
    bootstrappers = _subject("Group", NODE_BOOTSTRAPPERS)
    nodes = _subject("Group", NODES)
    return [
        # upload-config: what `kubeadm join` reads from kube-system.
        _config_map("kubeadm-config", KUBE_SYSTEM, CORE,
                    {"ClusterConfiguration": _yaml(cluster_configuration(spec, endpoint))}),
        *_config_map_reader("kubeadm:nodes-kubeadm-config", KUBE_SYSTEM, CORE,
                            "kubeadm-config", [bootstrappers, nodes]),
        _config_map("kubelet-config", KUBE_SYSTEM, CORE,
                    {"kubelet": _yaml(kubelet_configuration(spec))}),
        *_config_map_reader("kubeadm:kubelet-config", KUBE_SYSTEM, CORE, "kubelet-config",
                            [nodes, bootstrappers]),
        # bootstrap-token: a token may look up its Node, post a CSR, and get it approved;
        # a node's own renewals are approved too.
        _cluster_role("kubeadm:get-nodes", CORE,
                      [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]),
        _cluster_role_binding("kubeadm:get-nodes", CORE, "kubeadm:get-nodes", [bootstrappers]),
        _cluster_role_binding("kubeadm:kubelet-bootstrap", CORE, "system:node-bootstrapper",
                              [bootstrappers]),
        _cluster_role_binding(
            "kubeadm:node-autoapprove-bootstrap", CORE,
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            [bootstrappers]),
        _cluster_role_binding(
            "kubeadm:node-autoapprove-certificate-rotation", CORE,
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", [nodes]),
        # discovery: anonymous clients read cluster-info; the tenant's bootstrapsigner signs it.
        _config_map("cluster-info", KUBE_PUBLIC, CORE,
                    {"kubeconfig": _yaml(cluster_info_kubeconfig(ca_crt, endpoint))}),
        *_config_map_reader("kubeadm:bootstrap-signer-clusterinfo", KUBE_PUBLIC, CORE,
                            "cluster-info", [_subject("User", "system:anonymous")]),
        # admin.conf's group (it is not system:masters), and the API server's client identity
        # on the kubelets (logs, exec, port-forward).
        _cluster_role_binding("kubeadm:cluster-admins", CORE, "cluster-admin",
                              [_subject("Group", "kubeadm:cluster-admins")]),
        _cluster_role_binding("kubeadm:apiserver-kubelet-client", CORE,
                              "system:kubelet-api-admin",
                              [_subject("User", APISERVER_KUBELET_CLIENT)]),
    ]


# ---------------------------------------------------------------------------- kube-proxy


def kube_proxy_configuration(spec: TenantControlPlaneSpec) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "bindAddress": "0.0.0.0",  # noqa: S104  (a node-wide proxy)
        "clientConnection": {"kubeconfig": f"{KUBE_PROXY_DIR}/kubeconfig.conf"},
        "clusterCIDR": ",".join(spec.pod_cidrs),
        # 0 leaves the host's conntrack table size alone (setting it needs the initial
        # network namespace and CAP_NET_ADMIN over it, which a node in a namespace lacks).
        "conntrack": {"maxPerCore": 0},
        "mode": "",
    }


def kube_proxy_kubeconfig(endpoint: str) -> dict[str, Any]:
    """kube-proxy talks to the tenant API with its ServiceAccount token (as kubeadm)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "default", "cluster": {
            "certificate-authority": f"{SA_DIR}/ca.crt", "server": endpoint}}],
        "contexts": [{"name": "default", "context": {
            "cluster": "default", "namespace": "default", "user": "default"}}],
        "current-context": "default",
        "users": [{"name": "default", "user": {"tokenFile": f"{SA_DIR}/token"}}],
    }


def kube_proxy_objects(spec: TenantControlPlaneSpec, endpoint: str) -> list[Object]:
    addon = spec.addons.kube_proxy
    if addon is None:
        return []
    labels = {"k8s-app": "kube-proxy"}
    sa = _subject("ServiceAccount", "kube-proxy", KUBE_SYSTEM)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": _meta("kube-proxy", KUBE_PROXY, KUBE_SYSTEM)},
        _cluster_role_binding("kubeadm:node-proxier", KUBE_PROXY, "system:node-proxier", [sa]),
        *_config_map_reader("kube-proxy", KUBE_SYSTEM, KUBE_PROXY, "kube-proxy",
                            [_subject("Group", NODE_BOOTSTRAPPERS)]),
        _config_map("kube-proxy", KUBE_SYSTEM, KUBE_PROXY, {
            "config.conf": _yaml(kube_proxy_configuration(spec)),
            "kubeconfig.conf": _yaml(kube_proxy_kubeconfig(endpoint)),
        }, labels={"app": "kube-proxy"}),
        kube_proxy_daemonset(addon, labels),
    ]


def kube_proxy_daemonset(addon: Addon, labels: dict[str, str]) -> Object:
    container = {
        "name": "kube-proxy",
        "image": addon.image("kube-proxy"),
        "imagePullPolicy": "IfNotPresent",
        "command": ["/usr/local/bin/kube-proxy",
                    f"--config={KUBE_PROXY_DIR}/config.conf",
                    "--hostname-override=$(NODE_NAME)"],
        "env": [{"name": "NODE_NAME",
                 "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}}],
        "securityContext": {"privileged": True},
        "volumeMounts": [
            {"name": "kube-proxy", "mountPath": KUBE_PROXY_DIR},
            {"name": "xtables-lock", "mountPath": "/run/xtables.lock"},
            {"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": True},
        ],
    }
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": _meta("kube-proxy", KUBE_PROXY, KUBE_SYSTEM, labels),
        "spec": {
            "selector": {"matchLabels": labels},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [container],
                    "hostNetwork": True,
                    "priorityClassName": "system-node-critical",
                    "serviceAccountName": "kube-proxy",
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "tolerations": [{"operator": "Exists"}],
                    "volumes": [
                        {"name": "kube-proxy", "configMap": {"name": "kube-proxy"}},
                        {"name": "xtables-lock",
                         "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}},
                        {"name": "lib-modules", "hostPath": {"path": "/lib/modules"}},
                    ],
                },
            },
        },
    }


# ---------------------------------------------------------------------------- CoreDNS


def corefile(cluster_domain: str) -> str:
    """kubeadm's Corefile for ``cluster_domain``."""
    return f""".:53 {{
    errors
    health {{
       lameduck 5s
    }}
    ready
    kubernetes {cluster_domain} in-addr.arpa ip6.arpa {{
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }}
    prometheus :9153
    forward . /etc/resolv.conf {{
       max_concurrent 1000
    }}
    cache 30 {{
       disable success {cluster_domain}
       disable denial {cluster_domain}
    }}
    loop
    reload
    loadbalance
}}
"""


def coredns_objects(spec: TenantControlPlaneSpec) -> list[Object]:
    addon = spec.addons.core_dns
    if addon is None:
        return []
    sa = _subject("ServiceAccount", "coredns", KUBE_SYSTEM)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": _meta("coredns", COREDNS, KUBE_SYSTEM)},
        _cluster_role("system:coredns", COREDNS, [
            {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
             "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
             "verbs": ["list", "watch"]},
        ]),
        _cluster_role_binding("system:coredns", COREDNS, "system:coredns", [sa]),
        _config_map("coredns", KUBE_SYSTEM, COREDNS, {"Corefile": corefile(spec.cluster_domain)}),
        coredns_deployment(addon),
        kube_dns_service(spec),
    ]


DNS_LABELS = {"k8s-app": "kube-dns"}


def coredns_deployment(addon: Addon) -> Object:
    container = {
        "name": "coredns",
        "image": addon.image("coredns"),
        "imagePullPolicy": "IfNotPresent",
        "args": ["-conf", "/etc/coredns/Corefile"],
        "resources": {"limits": {"memory": "170Mi"},
                      "requests": {"cpu": "100m", "memory": "70Mi"}},
        "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns",
                          "readOnly": True}],
        "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                  {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": 9153, "protocol": "TCP"}],
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                            "readOnlyRootFilesystem": True},
        "livenessProbe": {"httpGet": {"path": "/health", "port": 8080, "scheme": "HTTP"},
                          "initialDelaySeconds": 60, "timeoutSeconds": 5,
                          "successThreshold": 1, "failureThreshold": 5},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181, "scheme": "HTTP"}},
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta("coredns", COREDNS, KUBE_SYSTEM, DNS_LABELS),
        "spec": {
            "replicas": 2,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "selector": {"matchLabels": DNS_LABELS},
            "template": {
                "metadata": {"labels": DNS_LABELS},
                "spec": {
                    "priorityClassName": "system-cluster-critical",
                    "serviceAccountName": "coredns",
                    "affinity": {"podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [{
                            "weight": 100,
                            "podAffinityTerm": {
                                "labelSelector": {"matchExpressions": [{
                                    "key": "k8s-app", "operator": "In",
                                    "values": ["kube-dns"]}]},
                                "topologyKey": "kubernetes.io/hostname"}}]}},
                    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                                    {"key": "node-role.kubernetes.io/control-plane",
                                     "effect": "NoSchedule"}],
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "containers": [container],
                    "dnsPolicy": "Default",
                    "volumes": [{"name": "config-volume", "configMap": {
                        "name": "coredns",
                        "items": [{"key": "Corefile", "path": "Corefile"}]}}],
                },
            },
        },
    }


def kube_dns_service(spec: TenantControlPlaneSpec) -> Object:
    ips = list(spec.dns_service_ips)
    body: dict[str, Any] = {
        "selector": DNS_LABELS,
        "clusterIP": ips[0],
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                  {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                  {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}],
    }
    if len(ips) > 1:
        body |= {"clusterIPs": ips, "ipFamilyPolicy": "PreferDualStack"}
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            **_meta("kube-dns", COREDNS, KUBE_SYSTEM,
                    {**DNS_LABELS, "kubernetes.io/cluster-service": "true",
                     "kubernetes.io/name": "CoreDNS"}),
            "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"},
        },
        "spec": body,
    }


# ---------------------------------------------------------------------------- Konnectivity


def konnectivity_objects(spec: TenantControlPlaneSpec, endpoint: str,
                         port: int | None) -> list[Object]:
    """The agents and what they need, dialling the endpoint's host on ``port`` (the
    Service's Konnectivity port as reached from outside: a NodePort's node port)."""
    addon = spec.addons.konnectivity
    if addon is None:
        return []
    host = urlsplit(endpoint).hostname or endpoint
    agent = konnectivity_render.AGENT
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": _meta(agent, KONNECTIVITY, KUBE_SYSTEM)},
        # The server checks agents' tokens with a TokenReview, as this user.
        _cluster_role_binding(konnectivity_render.SERVER_USER, KONNECTIVITY,
                              "system:auth-delegator",
                              [_subject("User", konnectivity_render.SERVER_USER)]),
        konnectivity_render.agent_workload(
            addon, host, port or addon.server.port,
            _meta(agent, KONNECTIVITY, KUBE_SYSTEM, konnectivity_render.AGENT_LABELS)),
    ]


# ---------------------------------------------------------------------------- all


def bootstrap_objects(spec: TenantControlPlaneSpec, ca_crt: bytes, endpoint: str,
                      konnectivity_port: int | None = None) -> dict[str, list[Object]]:
    """Everything, by group; core first. An absent addon's group is empty. ``ca_crt`` is
    the CAs the tenant trusts (``cluster-info``'s; two during a CA rotation): the addons'
    pod templates carry its fingerprint, so that a new bundle restarts them onto it (their
    clients read the ServiceAccount's ca.crt once, at start)."""
    groups = {
        CORE: core_objects(spec, ca_crt, endpoint),
        KUBE_PROXY: kube_proxy_objects(spec, endpoint),
        COREDNS: coredns_objects(spec),
        KONNECTIVITY: konnectivity_objects(spec, endpoint, konnectivity_port),
    }
    trust = hashlib.sha256(ca_crt).hexdigest()[:16]
    for objects in groups.values():
        for obj in objects:
            if obj["kind"] in ("Deployment", "DaemonSet"):
                template = obj["spec"]["template"].setdefault("metadata", {})
                template.setdefault("annotations", {})[TRUST_ANNOTATION] = trust
    return groups


def object_key(obj: Object) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])
