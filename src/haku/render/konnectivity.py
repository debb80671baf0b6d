"""Konnectivity for a tenant (pure): kube-apiserver's traffic towards the tenant's cluster
(kubelets for logs/exec/port-forward/attach, webhooks, aggregated APIs, the proxy
subresources) goes through tunnels that agents inside the tenant open to a proxy-server beside
kube-apiserver, so the control plane needs no route to the tenant's nodes and the nodes may sit
behind NAT.

Admin side, in the control-plane pod: the ``konnectivity-server`` container (upstream's
proxy-server) listens for agents on ``addons.konnectivity.server.port`` (served by the tenant's
Service as port ``konnectivity-server``) and for kube-apiserver on a Unix socket in a shared
``emptyDir``; kube-apiserver's ``EgressSelectorConfiguration`` sends its ``cluster`` egress
there. Agents authenticate with a ServiceAccount token of audience
``system:konnectivity-server``, which the server checks with a TokenReview against the tenant
API as user ``system:konnectivity-server`` (its own kubeconfig). Agents check the server
against the tenant CA; the server presents kube-apiserver's certificate, which already holds
every name of the endpoint.

Tenant side (addon group ``konnectivity``, applied by the bootstrap step): ServiceAccount
``kube-system/konnectivity-agent``, the ClusterRoleBinding that lets the server review
tokens, and the agents as a DaemonSet (default) or a Deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from haku.api.tenantcontrolplane import Konnectivity
from haku.render.args import merge_args

GROUP = "konnectivity"  # the addon group in the tenant (render/tenant_bootstrap.py)
CONTAINER = "konnectivity-server"
SERVICE_PORT_NAME = "konnectivity-server"  # the Service's port (Kamaji's name)
PORT_NAME = "konnectivity"  # the container port (at most 15 characters), for NetworkPolicy
ADMIN_PORT, HEALTH_PORT = 8133, 8134  # Kamaji's; the admin port binds to localhost only

SOCKET_DIR = "/run/konnectivity"
SOCKET = f"{SOCKET_DIR}/konnectivity-server.socket"
EGRESS_DIR = "/etc/kubernetes/egress"  # kube-apiserver's mount
EGRESS_FILE = "egress-selector-configuration.yaml"
SERVER_DIR = "/etc/kubernetes/konnectivity"  # the server's kubeconfig
SERVER_PKI = "/etc/kubernetes/konnectivity-pki"  # the server's agent-facing certificate
KUBECONFIG_FILE = "konnectivity-server.conf"

SERVER_USER = "system:konnectivity-server"
AUDIENCE = "system:konnectivity-server"
AGENT = "konnectivity-agent"  # its ServiceAccount and workload, in kube-system
AGENT_NAMESPACE = "kube-system"
AGENT_LABELS = {"k8s-app": AGENT}
TOKEN_DIR = "/var/run/secrets/tokens"  # noqa: S105  (a path, no secret)
TOKEN_FILE = "konnectivity-agent-token"  # noqa: S105
TOKEN_SECONDS = 3600
SA_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"

def egress_selector_configuration() -> str:
    """kube-apiserver's EgressSelectorConfiguration: ``cluster`` egress over the socket; the
    control plane's own (``controlplane``) and storage (``etcd``) stay direct."""
    return yaml.safe_dump({
        "apiVersion": "apiserver.k8s.io/v1beta1",
        "kind": "EgressSelectorConfiguration",
        "egressSelections": [{
            "name": "cluster",
            "connection": {"proxyProtocol": "GRPC",
                           "transport": {"uds": {"udsName": SOCKET}}},
        }],
    }, sort_keys=False)


def apiserver_managed() -> dict[str, str]:
    """kube-apiserver's flag for the addon (managed: extraArgs cannot set it)."""
    return {"--egress-selector-config-file": f"{EGRESS_DIR}/{EGRESS_FILE}"}


def server_managed(addon: Konnectivity, server_count: int) -> dict[str, str]:
    """The proxy-server flags that wire it into the pod; extraArgs cannot set them."""
    return {
        "--uds-name": SOCKET,
        "--delete-existing-uds-file": "true",
        "--mode": "grpc",
        "--server-port": "0",
        "--agent-port": str(addon.server.port),
        "--admin-port": str(ADMIN_PORT),
        "--health-port": str(HEALTH_PORT),
        "--cluster-cert": f"{SERVER_PKI}/apiserver.crt",
        "--cluster-key": f"{SERVER_PKI}/apiserver.key",
        "--kubeconfig": f"{SERVER_DIR}/{KUBECONFIG_FILE}",
        "--authentication-audience": AUDIENCE,
        "--agent-namespace": AGENT_NAMESPACE,
        "--agent-service-account": AGENT,
        "--server-count": str(max(server_count, 1)),
    }


def server_defaults() -> dict[str, str]:
    """Flags extraArgs may override: requests for a node's kubelet go to the agent on that
    node (agents say their node's address), anything else to any agent."""
    return {"--proxy-strategies": "destHost,default"}


def server_volumes(pki_secret: str, kubeconfigs_secret: str) -> list[dict[str, Any]]:
    """The pod's volumes for the addon. The server's files are readable by its user (the
    image runs as 65532, not root); each volume holds only what one container needs."""
    return [
        {"name": "konnectivity-uds", "emptyDir": {}},
        {"name": "egress-selector", "secret": {
            "secretName": kubeconfigs_secret, "defaultMode": 0o400,
            "items": [{"key": EGRESS_FILE, "path": EGRESS_FILE}]}},
        {"name": "konnectivity-kubeconfig", "secret": {
            "secretName": kubeconfigs_secret, "defaultMode": 0o444,
            "items": [{"key": KUBECONFIG_FILE, "path": KUBECONFIG_FILE}]}},
        {"name": "konnectivity-pki", "secret": {
            "secretName": pki_secret, "defaultMode": 0o444,
            "items": [{"key": k, "path": k} for k in ("apiserver.crt", "apiserver.key")]}},
    ]


def apiserver_mounts() -> list[dict[str, Any]]:
    return [{"name": "konnectivity-uds", "mountPath": SOCKET_DIR},
            {"name": "egress-selector", "mountPath": EGRESS_DIR, "readOnly": True}]


def server_container(addon: Konnectivity, args: list[str], resources: Any,
                     liveness: Mapping[str, int]) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": addon.server.image_ref,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/proxy-server"],
        "args": args,
        "ports": [{"name": PORT_NAME, "containerPort": addon.server.port, "protocol": "TCP"},
                  {"name": "konn-health", "containerPort": HEALTH_PORT, "protocol": "TCP"}],
        # Liveness only: the server is ready when an agent is connected, and agents connect
        # through the Service, which a readiness gate would keep them from.
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": HEALTH_PORT,
                                      "scheme": "HTTP"}, **liveness},
        "volumeMounts": [
            {"name": "konnectivity-uds", "mountPath": SOCKET_DIR},
            {"name": "konnectivity-kubeconfig", "mountPath": SERVER_DIR, "readOnly": True},
            {"name": "konnectivity-pki", "mountPath": SERVER_PKI, "readOnly": True},
        ],
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": True},
    }
    if resources:
        container["resources"] = resources
    return container


def service_port(addon: Konnectivity, node_port: bool) -> dict[str, Any]:
    """The Service's port for agents. For NodePort, the node port is server.port when the
    spec gives it, else allocated by the API server (and told to the agents)."""
    port: dict[str, Any] = {"name": SERVICE_PORT_NAME, "protocol": "TCP",
                            "port": addon.server.port, "targetPort": addon.server.port}
    if node_port and addon.server.port_given is not None:
        port["nodePort"] = addon.server.port_given
    return port


# ---------------------------------------------------------------------------- tenant side


def agent_managed(host: str, port: int) -> dict[str, str]:
    """The proxy-agent flags that point it at its tenant's server; extraArgs cannot set
    them."""
    return {
        "--ca-cert": SA_CA,
        "--proxy-server-host": host,
        "--proxy-server-port": str(port),
        "--admin-server-port": str(ADMIN_PORT),
        "--health-server-port": str(HEALTH_PORT),
        "--service-account-token-path": f"{TOKEN_DIR}/{TOKEN_FILE}",
        # The server sends requests for a node's address to the agent on that node.
        "--agent-identifiers": "ipv4=$(HOST_IP)",
    }


def agent_args(addon: Konnectivity, host: str, port: int) -> list[str]:
    return merge_args(agent_managed(host, port), {}, list(addon.agent.extra_args))


def agent_pod(addon: Konnectivity, host: str, port: int) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": AGENT,
        "image": addon.agent.image_ref,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/proxy-agent"],
        "args": agent_args(addon, host, port),
        "env": [{"name": "HOST_IP",
                 "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}],
        # Ready once connected to a server (upstream's /readyz): the workload's ready count
        # is the number of connected agents.
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": HEALTH_PORT},
                          "initialDelaySeconds": 15, "timeoutSeconds": 15},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": HEALTH_PORT},
                           "periodSeconds": 2},
        "volumeMounts": [{"name": "konnectivity-agent-token", "mountPath": TOKEN_DIR,
                          "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": True},
    }
    spec: dict[str, Any] = {
        "priorityClassName": "system-cluster-critical",
        "serviceAccountName": AGENT,
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [dict(t) for t in addon.agent.tolerations],
        "containers": [container],
        "volumes": [{"name": "konnectivity-agent-token", "projected": {"sources": [{
            "serviceAccountToken": {"path": TOKEN_FILE, "audience": AUDIENCE,
                                    "expirationSeconds": TOKEN_SECONDS}}]}}],
    }
    if addon.agent.host_network:
        spec["hostNetwork"] = True
        spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    return {"metadata": {"labels": dict(AGENT_LABELS)}, "spec": spec}


def agent_workload(addon: Konnectivity, host: str, port: int,
                   meta: dict[str, Any]) -> dict[str, Any]:
    """The agents: a DaemonSet, or a Deployment of ``agent.replicas``; ``meta`` is the
    object's metadata (name, namespace, Haku's labels)."""
    template = agent_pod(addon, host, port)
    body: dict[str, Any] = {"selector": {"matchLabels": dict(AGENT_LABELS)},
                            "template": template}
    if addon.agent.mode == "Deployment":
        body["replicas"] = addon.agent.replicas
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
                "spec": body}
    body["updateStrategy"] = {"type": "RollingUpdate"}
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta, "spec": body}
