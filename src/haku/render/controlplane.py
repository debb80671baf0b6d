"""The tenant control plane's Deployment, Service and Ingress, as plain manifests (pure).

Flags come in three kinds: *managed* ones wire the pod together (certificates, ports, storage);
the CRD refuses them in ``extraArgs`` and they win here too (for objects admitted before that
rule); *defaults* are Kamaji's and kubeadm's choices (and values from spec fields such as
admissionControllers) and yield to the user's ``extraArgs``; the user's extras follow
verbatim (repeatable flags stay repeated).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from haku.api.tenantcontrolplane import TenantControlPlaneSpec
from haku.render import kine as kine_render
from haku.render.storage import TenantConnection

PKI = "/etc/kubernetes/pki"
CONFIG = "/etc/kubernetes/config"
MANAGED_BY = "haku"
TENANT_LABEL = "haku.dev/tenant-control-plane"
CONTROLLER_MANAGER_PORT, SCHEDULER_PORT = 10257, 10259


def names(tcp: str) -> dict[str, str]:
    """Every object Haku makes for TenantControlPlane ``tcp`` (all in its namespace)."""
    return {
        "deployment": tcp,
        "service": tcp,
        "ingress": tcp,
        "pki": f"{tcp}-pki",
        "kubeconfigs": f"{tcp}-kubeconfigs",
        "admin-kubeconfig": f"{tcp}-admin-kubeconfig",
        "datastore": f"{tcp}-datastore",
    }


def labels(spec: TenantControlPlaneSpec, component: str) -> dict[str, str]:
    return {
        TENANT_LABEL: spec.name,
        "app.kubernetes.io/name": "tenant-control-plane",
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector(spec: TenantControlPlaneSpec) -> dict[str, str]:
    return {TENANT_LABEL: spec.name}


def _flag(arg: str) -> str:
    return arg.split("=", 1)[0]


def merge_args(managed: Mapping[str, str], defaults: Mapping[str, str],
               extras: list[str]) -> list[str]:
    user = [a for a in extras if _flag(a) not in managed]
    user_flags = {_flag(a) for a in user}
    owned = dict(managed) | {k: v for k, v in defaults.items()
                             if k not in user_flags and k not in managed}
    return [f"{k}={v}" for k, v in sorted(owned.items())] + user


def apiserver_managed(spec: TenantControlPlaneSpec, storage: TenantConnection,
                      advertise_address: str) -> dict[str, str]:
    """Flags that wire kube-apiserver into the pod; the CRD refuses them in extraArgs."""
    managed = {
        "--advertise-address": advertise_address,
        "--bind-address": "0.0.0.0",  # noqa: S104  (inside the pod)
        "--secure-port": str(spec.port),
        "--client-ca-file": f"{PKI}/ca.crt",
        "--tls-cert-file": f"{PKI}/apiserver.crt",
        "--tls-private-key-file": f"{PKI}/apiserver.key",
        "--kubelet-client-certificate": f"{PKI}/apiserver-kubelet-client.crt",
        "--kubelet-client-key": f"{PKI}/apiserver-kubelet-client.key",
        "--proxy-client-cert-file": f"{PKI}/front-proxy-client.crt",
        "--proxy-client-key-file": f"{PKI}/front-proxy-client.key",
        "--requestheader-allowed-names": "front-proxy-client",
        "--requestheader-client-ca-file": f"{PKI}/front-proxy-ca.crt",
        "--service-account-key-file": f"{PKI}/sa.pub",
        "--service-account-signing-key-file": f"{PKI}/sa.key",
        "--service-cluster-ip-range": ",".join(spec.service_cidrs),
    }
    for arg in kine_render.apiserver_storage_args(storage, tls_dir=f"{PKI}/datastore"):
        flag, value = arg.split("=", 1)
        managed[flag] = value
    return managed


def apiserver_args(spec: TenantControlPlaneSpec, storage: TenantConnection,
                   advertise_address: str) -> list[str]:
    managed = apiserver_managed(spec, storage, advertise_address)
    # From spec fields, but a user's extraArgs value wins (as in Kamaji).
    defaults = {
        "--kubelet-preferred-address-types": ",".join(spec.preferred_address_types),
        "--enable-admission-plugins": ",".join(spec.admission_plugins),
        "--allow-privileged": "true",
        "--authorization-mode": "Node,RBAC",
        "--enable-bootstrap-token-auth": "true",
        "--requestheader-extra-headers-prefix": "X-Remote-Extra-",
        "--requestheader-group-headers": "X-Remote-Group",
        "--requestheader-username-headers": "X-Remote-User",
        "--service-account-issuer": f"https://kubernetes.default.svc.{spec.cluster_domain}",
    }
    if any(_flag(a) == "--authorization-config" for a in spec.extra_args.api_server):
        defaults.pop("--authorization-mode")  # the two flags exclude each other
    return merge_args(managed, defaults, list(spec.extra_args.api_server))


def controller_manager_managed(spec: TenantControlPlaneSpec) -> dict[str, str]:
    kc = f"{CONFIG}/controller-manager.conf"
    return {
        "--kubeconfig": kc,
        "--authentication-kubeconfig": kc,
        "--authorization-kubeconfig": kc,
        "--bind-address": "0.0.0.0",  # noqa: S104  (inside the pod)
        "--client-ca-file": f"{PKI}/ca.crt",
        "--requestheader-client-ca-file": f"{PKI}/front-proxy-ca.crt",
        "--root-ca-file": f"{PKI}/ca.crt",
        "--service-account-private-key-file": f"{PKI}/sa.key",
        "--cluster-signing-cert-file": f"{PKI}/ca.crt",
        "--cluster-signing-key-file": f"{PKI}/ca.key",
        "--service-cluster-ip-range": ",".join(spec.service_cidrs),
        "--cluster-cidr": ",".join(spec.pod_cidrs),
        "--cluster-name": spec.name,
    }


def controller_manager_args(spec: TenantControlPlaneSpec) -> list[str]:
    managed = controller_manager_managed(spec)
    defaults = {
        "--allocate-node-cidrs": "true",
        "--controllers": "*,bootstrapsigner,tokencleaner",
        "--leader-elect": "true",
        "--use-service-account-credentials": "true",
    }
    return merge_args(managed, defaults, list(spec.extra_args.controller_manager))


def scheduler_managed() -> dict[str, str]:
    kc = f"{CONFIG}/scheduler.conf"
    return {
        "--kubeconfig": kc,
        "--authentication-kubeconfig": kc,
        "--authorization-kubeconfig": kc,
        "--bind-address": "0.0.0.0",  # noqa: S104  (inside the pod)
    }


def scheduler_args(spec: TenantControlPlaneSpec) -> list[str]:
    return merge_args(scheduler_managed(), {"--leader-elect": "true"},
                      list(spec.extra_args.scheduler))


def _probe(path: str, port: int, failure: int = 3, period: int = 10) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port, "scheme": "HTTPS"},
            "periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": failure}


def _container(name: str, image: str, args: list[str], mounts: list[dict[str, Any]],
               resources: Any, probe_path: str, port: int,
               security_context: Any = None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": [name],
        "args": args,
        "volumeMounts": mounts,
        "livenessProbe": _probe(probe_path.replace("readyz", "livez"), port, failure=8),
        # Readiness every second: it gates the Deployment status, and with it Ready.
        "readinessProbe": _probe(probe_path, port, period=1),
        "startupProbe": _probe(probe_path.replace("readyz", "livez"), port, failure=60,
                               period=1),
    }
    if resources:
        container["resources"] = resources
    if security_context:
        container["securityContext"] = security_context
    return container


def deployment(
    spec: TenantControlPlaneSpec,
    storage: TenantConnection,
    advertise_address: str,
    checksums: Mapping[str, str],
    kine_image: str,
) -> dict[str, Any]:
    """The control-plane Deployment. ``checksums`` (one per Secret it mounts) go into the pod
    template, so new certificates or credentials roll the pods."""
    n = names(spec.name)
    pki_mount = {"name": "pki", "mountPath": PKI, "readOnly": True}
    config_mount = {"name": "kubeconfigs", "mountPath": CONFIG, "readOnly": True}
    volumes: list[dict[str, Any]] = [
        {"name": "pki", "secret": {"secretName": n["pki"], "defaultMode": 0o400}},
        {"name": "kubeconfigs", "secret": {"secretName": n["kubeconfigs"],
                                           "defaultMode": 0o400}},
        {"name": "datastore", "secret": {"secretName": n["datastore"], "defaultMode": 0o400,
                                         "items": [{"key": k, "path": k}
                                                   for k in sorted(storage.files)]}},
    ]
    apiserver_mounts = [pki_mount]
    if storage.files:
        apiserver_mounts.append({"name": "datastore", "mountPath": f"{PKI}/datastore",
                                 "readOnly": True})
    containers = [
        _container("kube-apiserver", spec.image("kube-apiserver"),
                   apiserver_args(spec, storage, advertise_address), apiserver_mounts,
                   spec.resources.api_server, "/readyz", spec.port,
                   spec.container_security_contexts.api_server),
        _container("kube-controller-manager", spec.image("kube-controller-manager"),
                   controller_manager_args(spec), [pki_mount, config_mount],
                   spec.resources.controller_manager, "/healthz", CONTROLLER_MANAGER_PORT,
                   spec.container_security_contexts.controller_manager),
        _container("kube-scheduler", spec.image("kube-scheduler"), scheduler_args(spec),
                   [config_mount], spec.resources.scheduler, "/healthz", SCHEDULER_PORT,
                   spec.container_security_contexts.scheduler),
    ]
    containers[0]["ports"] = [{"name": "kube-apiserver", "containerPort": spec.port,
                               "protocol": "TCP"}]
    # For --advertise-address=$(POD_IP) when the endpoint is a host name, not an IP.
    containers[0]["env"] = [{"name": "POD_IP",
                             "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    if storage.driver != "etcd":
        volumes.append({"name": "kine-socket", "emptyDir": {"medium": "Memory"}})
        apiserver_mounts.append({"name": "kine-socket", "mountPath": kine_render.SOCKET_DIR})
        kine = kine_render.kine_container(storage, kine_image, n["datastore"])
        kine["args"] += list(spec.extra_args.kine)
        for mount in kine["volumeMounts"]:
            if mount["name"] == "kine-tls":
                mount["name"] = "datastore"
        if spec.resources.kine:
            kine["resources"] = spec.resources.kine
        containers.append(kine)
    pod_labels = {**spec.pod_metadata.labels, **labels(spec, "control-plane")}
    pod_annotations = {**spec.pod_metadata.annotations,
                       **{f"checksum.haku.dev/{k}": v for k, v in sorted(checksums.items())}}
    pod: dict[str, Any] = {
        "automountServiceAccountToken": spec.automount_service_account_token,
        "enableServiceLinks": False,
        "containers": containers,
        "volumes": volumes,
    }
    optional = {"nodeSelector": spec.node_selector, "tolerations": spec.tolerations,
                "affinity": spec.affinity, "topologySpreadConstraints": spec.topology_spread,
                "runtimeClassName": spec.runtime_class,
                "serviceAccountName": spec.service_account,
                "securityContext": spec.pod_security_context}
    pod |= {k: v for k, v in optional.items() if v}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": n["deployment"],
            "namespace": spec.namespace,
            "labels": {**spec.deployment_metadata.labels, **labels(spec, "control-plane")},
            "annotations": dict(spec.deployment_metadata.annotations),
        },
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector(spec)},
            # Blue/green by default: new pods come up before old ones go.
            "strategy": spec.strategy or {"type": "RollingUpdate", "rollingUpdate": {
                "maxUnavailable": 0, "maxSurge": "100%"}},
            "template": {"metadata": {"labels": pod_labels, "annotations": pod_annotations},
                         "spec": pod},
        },
    }


def service(spec: TenantControlPlaneSpec) -> dict[str, Any]:
    """The Service in front of kube-apiserver. For NodePort, ``nodePort`` is
    networkProfile.port only when the user set it; otherwise the API server allocates one
    (and keeps it), and the endpoint uses the allocated port."""
    port: dict[str, Any] = {"name": "kube-apiserver", "protocol": "TCP", "port": spec.port,
                            "targetPort": spec.port}
    if spec.service_type == "NodePort" and spec.port_given is not None:
        port["nodePort"] = spec.port_given
    ports = [port] + [_additional_port(p) for p in spec.additional_ports]
    body: dict[str, Any] = {"type": spec.service_type, "selector": selector(spec),
                            "ports": ports}
    if spec.service_type == "LoadBalancer":
        if spec.load_balancer_source_ranges:
            body["loadBalancerSourceRanges"] = list(spec.load_balancer_source_ranges)
        if spec.load_balancer_class:
            body["loadBalancerClass"] = spec.load_balancer_class
        if spec.allocate_load_balancer_node_ports is not None:
            body["allocateLoadBalancerNodePorts"] = spec.allocate_load_balancer_node_ports
    elif spec.allow_address_as_external_ip and spec.address:
        body["externalIPs"] = [spec.address]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": names(spec.name)["service"],
            "namespace": spec.namespace,
            "labels": {**spec.service_metadata.labels, **labels(spec, "control-plane")},
            "annotations": dict(spec.service_metadata.annotations),
        },
        "spec": body,
    }


def _additional_port(p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p["name"], "protocol": p.get("protocol") or "TCP",
                           "port": p["port"], "targetPort": p.get("targetPort", p["port"])}
    if p.get("appProtocol"):
        out["appProtocol"] = p["appProtocol"]
    return out


def ingress(spec: TenantControlPlaneSpec) -> dict[str, Any] | None:
    if not spec.ingress_hostname:
        return None
    body: dict[str, Any] = {"rules": [{
        "host": spec.ingress_hostname.rsplit(":", 1)[0],
        "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {
            "name": names(spec.name)["service"], "port": {"number": spec.port}}}}]},
    }]}
    if spec.ingress_class:
        body["ingressClassName"] = spec.ingress_class
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": names(spec.name)["ingress"],
            "namespace": spec.namespace,
            "labels": {**spec.ingress_metadata.labels, **labels(spec, "control-plane")},
            "annotations": dict(spec.ingress_metadata.annotations),
        },
        "spec": body,
    }
