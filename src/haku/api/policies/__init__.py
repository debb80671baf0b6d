"""The admission policy for TenantControlPlanes, shipped as package data (and, byte for
byte, as deploy/admission-policy.yaml): a ValidatingAdmissionPolicy, its binding and the
ConfigMap of its settings. docs/security.md says what each rule stops."""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import yaml
from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict

FILE = "admission-policy.yaml"
POLICY = BINDING = "haku-tenantcontrolplanes"
PARAMS = "haku-admission"  # the ConfigMap, in the operator's namespace
NAMESPACE = "haku-system"  # where the shipped manifests put it

# The ConfigMap's keys. PODS_OFF in PODS_KEY turns the pod rules off; the registry and
# externalIP rules stay.
REGISTRIES_KEY, EXTERNAL_IPS_KEY, PODS_KEY, PODS_OFF = (
    "allowedRegistries", "allowedExternalIPs", "podRules", "off")

# registry.k8s.io: the default of the control-plane, CoreDNS and kube-proxy images;
# docker.io/rancher: the operator's kine image (OperatorConfig.kine_image).
DEFAULT_ALLOWED_REGISTRIES = ("registry.k8s.io", "docker.io/rancher")

# The Pod Security "baseline" safe sysctls of Kubernetes v1.37 (pod-security-admission,
# policy/check_sysctls.go, sysctlsAllowedV1Dot37); the policy's list is this one.
SAFE_SYSCTLS = (
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_notsent_lowat",
)


def text() -> str:
    return resources.files(__name__).joinpath(FILE).read_text()


def documents(namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """The policy, its binding and its ConfigMap, the ConfigMap (and the binding's
    reference to it) in ``namespace``."""
    docs = [copy.deepcopy(d) for d in yaml.safe_load_all(text()) if d]
    for doc in docs:
        if doc["kind"] == "ValidatingAdmissionPolicyBinding":
            doc["spec"]["paramRef"]["namespace"] = namespace
        elif doc["kind"] == "ConfigMap":
            doc["metadata"]["namespace"] = namespace
    return docs


def of_kind(kind: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    (doc,) = (d for d in documents(namespace) if d["kind"] == kind)
    return doc


async def install_policies(client: AsyncClient, namespace: str = NAMESPACE) -> None:
    """Apply the policy and its binding, and create the ConfigMap of its settings in
    ``namespace`` (which must exist) unless it is there: an administrator's settings are
    kept. The API server enforces a new policy a moment later, not at once."""
    docs = documents(namespace)
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            try:
                await client.create(from_dict(doc))
            except ApiError as e:
                if e.status.code != 409:
                    raise
    for doc in docs:
        if doc["kind"] != "ConfigMap":
            await client.apply(from_dict(doc), force=True)
