"""What a TenantControlPlane's author may ask of the pod the operator creates for it, on a real
kube-apiserver: the CRD refuses flags that weaken the tenant or reach past it, and the
ValidatingAdmissionPolicy (src/haku/api/policies) refuses privileged or root pods, unsafe
sysctls, images from registries not allowed and externalIP capture, each naming the field;
its settings (ConfigMap haku-system/haku-admission) take effect, podRules: "off" turns the pod
rules off and only them, and the Kamaji sample still passes."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import ConfigMap
from lightkube.types import PatchType

from haku.api import policies
from haku.api.resources import TenantControlPlane as TCP
from haku.controller.operator import install_crds
from haku.dev.cluster import DevCluster
from tests.api.test_tcp_admission import KAMAJI_SAMPLE

NS = "tcp-policy"
OPERATOR_NS = "haku-system"
DENIED = "ValidatingAdmissionPolicy 'haku-tenantcontrolplanes'"
DEP = "spec.controlPlane.deployment"
PSC = f"{DEP}.podSecurityContext"
CSC = f"{DEP}.containerSecurityContexts"

PRIVILEGED = {"spec__controlPlane__deployment__containerSecurityContexts": {
    "apiServer": {"privileged": True}}}
OTHER_REGISTRY = {"spec__controlPlane__deployment__registrySettings": {
    "registry": "ghcr.io/example"}}
CAPTURE = {"spec__controlPlane__service__serviceType": "NodePort",
           "spec__networkProfile": {"address": "192.0.2.7", "allowAddressAsExternalIP": True}}


def manifest(name: str = "tenant", **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(KAMAJI_SAMPLE)
    doc["metadata"] = {"name": name, "namespace": NS}
    for path, value in changes.items():
        node = doc
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return doc


async def refusal(client: AsyncClient, obj: dict[str, Any]) -> str | None:
    """The API server's message refusing to create ``obj`` (a dry run), or None."""
    try:
        await client.create(from_dict(obj), dry_run=True)
    except ApiError as e:
        return str(e.status.message)
    return None


async def eventually(check: Callable[[], Awaitable[bool]], what: str,
                     timeout: float = 20.0) -> None:
    """Poll ``check`` until it holds: the API server takes a moment to enforce a new policy
    and to see its ConfigMap change."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not after {timeout:.0f}s: {what}")
        await asyncio.sleep(0.1)


async def refused(client: AsyncClient, obj: dict[str, Any]) -> bool:
    message = await refusal(client, obj)
    return message is not None and DENIED in message


async def accepted(client: AsyncClient, obj: dict[str, Any]) -> bool:
    return await refusal(client, obj) is None


async def set_params(client: AsyncClient, **data: str) -> None:
    """The shipped ConfigMap with ``data`` changed (server-side apply, so unset keys return
    to the shipped values)."""
    params = policies.of_kind("ConfigMap", OPERATOR_NS)
    params["data"].update(data)
    await client.apply(from_dict(params), force=True)


@pytest.fixture
async def client(api_cluster: DevCluster) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(KubeConfig.from_file(api_cluster.layout.admin_kubeconfig),
                    field_manager="haku-test")
    await install_crds(c, OPERATOR_NS)
    await policies.install_policies(c, OPERATOR_NS)
    await c.apply(from_dict({"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": NS}}), force=True)
    await set_params(c)  # the shipped settings, whatever a test before changed
    await eventually(lambda: refused(c, manifest(**PRIVILEGED)), "the policy is enforced")
    await eventually(lambda: refused(c, manifest(**OTHER_REGISTRY)), "the shipped settings")
    yield c
    async for tcp in c.list(TCP, namespace=NS):
        if tcp.metadata.finalizers:
            await c.patch(TCP, tcp.metadata.name, {"metadata": {"finalizers": None}},
                          namespace=NS, patch_type=PatchType.MERGE)
        await c.delete(TCP, tcp.metadata.name, namespace=NS)
    await set_params(c)
    await c.close()


# --- the CRD: flags that weaken the tenant or reach past it ---------------------------------

@pytest.mark.parametrize(("component", "arg", "named"), [
    ("apiServer", "--authorization-mode=AlwaysAllow", "--authorization-mode with AlwaysAllow"),
    ("apiServer", "--authorization-mode=Node,RBAC,AlwaysAllow",
     "--authorization-mode with AlwaysAllow"),
    ("apiServer", "--etcd-servers-overrides=/events#https://192.0.2.1:2379",
     "--etcd-servers-overrides"),
    ("apiServer", "--insecure-port=8080", "--insecure-port"),
    ("apiServer", "--insecure-bind-address=0.0.0.0", "--insecure-bind-address"),
    ("controllerManager", "--master=https://kubernetes.default.svc", "--master"),
    ("scheduler", "--master=https://10.96.0.1", "--master"),
    ("kine", "--endpoint=postgres://other@db/x", "--endpoint"),
    ("kine", "--listen-address=0.0.0.0:2379", "--listen-address"),
    ("kine", "--peer-bind-address=0.0.0.0:3380", "--peer-bind-address"),
    ("kine", "--metrics-bind-address=:8080", "--metrics-bind-address"),
    ("kine", "--ca-file=", "--ca-file"),
    ("kine", "--skip-verify", "--skip-verify"),
])
async def test_flags_that_weaken_the_tenant_are_refused_naming_field_and_flag(
    client: AsyncClient, component: str, arg: str, named: str
) -> None:
    obj = manifest(spec__controlPlane__deployment__extraArgs={
        component: ["--v=2", arg]})
    with pytest.raises(ApiError) as info:
        await client.create(from_dict(obj))
    message = info.value.status.message
    assert info.value.status.code == 422, message
    field = f"{DEP}.extraArgs.{component}"
    assert f"{field}: Invalid value" in message, message
    assert f"{field} must not set {named}: " in message, message


async def test_flags_next_to_the_refused_ones_are_accepted(client: AsyncClient) -> None:
    obj = manifest(spec__controlPlane__deployment__extraArgs={
        "apiServer": ["--authorization-mode=Node,RBAC", "--anonymous-auth=true",
                      "--etcd-healthcheck-timeout=5s", "--audit-log-path=-"],
        "controllerManager": ["--controllers=*,bootstrapsigner,tokencleaner",
                              "--master-ish=1"],
        "scheduler": ["--v=2"],
        "kine": ["--datastore-max-open-connections=5", "--compact-interval=5m",
                 "--endpoint-x=1"]})
    await client.create(from_dict(obj))


# --- the policy: the pod -----------------------------------------------------------------

@pytest.mark.parametrize(("changes", "named"), [
    ({"spec__controlPlane__deployment__podSecurityContext": {"runAsUser": 0}},
     f"{PSC}.runAsUser: 0 is root"),
    ({"spec__controlPlane__deployment__podSecurityContext": {"runAsNonRoot": False}},
     f"{PSC}.runAsNonRoot: false"),
    ({"spec__controlPlane__deployment__podSecurityContext": {"runAsGroup": 0}},
     f"{PSC}.runAsGroup: 0 is the root group"),
    ({"spec__controlPlane__deployment__podSecurityContext": {"fsGroup": 0}},
     f"{PSC}.fsGroup: 0"),
    ({"spec__controlPlane__deployment__podSecurityContext": {"supplementalGroups": [5, 0]}},
     f"{PSC}.supplementalGroups: 0"),
    ({"spec__controlPlane__deployment__podSecurityContext": {"sysctls": [
        {"name": "net.ipv4.tcp_syncookies", "value": "1"},
        {"name": "kernel.msgmax", "value": "65536"}]}},
     f"{PSC}.sysctls: kernel.msgmax is not one of the Pod Security baseline safe sysctls"),
    ({"spec__controlPlane__deployment__podSecurityContext": {"sysctls": [
        {"name": "net.ipv4.ip_forward", "value": "1"}]}}, f"{PSC}.sysctls: net.ipv4.ip_forward"),
    ({"spec__controlPlane__deployment__podSecurityContext": {
        "seccompProfile": {"type": "Unconfined"}}}, f"{PSC}.seccompProfile.type: Unconfined"),
    ({"spec__controlPlane__deployment__podSecurityContext": {
        "seLinuxOptions": {"type": "spc_t"}}}, f"{PSC}.seLinuxOptions.type"),
    ({"spec__controlPlane__deployment__podSecurityContext": {
        "windowsOptions": {"hostProcess": True}}}, f"{PSC}.windowsOptions.hostProcess"),
    (PRIVILEGED, f"{CSC}.apiServer.privileged: a privileged container is root on the node"),
    ({"spec__controlPlane__deployment__containerSecurityContexts": {
        "scheduler": {"allowPrivilegeEscalation": True}}},
     f"{CSC}.scheduler.allowPrivilegeEscalation: true"),
    ({"spec__controlPlane__deployment__containerSecurityContexts": {
        "controllerManager": {"capabilities": {"add": ["SYS_ADMIN", "NET_ADMIN"],
                                               "drop": ["ALL"]}}}},
     f"{CSC}.controllerManager.capabilities.add: SYS_ADMIN, NET_ADMIN would be added"),
    ({"spec__controlPlane__deployment__containerSecurityContexts": {
        "apiServer": {"runAsUser": 0}}}, f"{CSC}.apiServer.runAsUser: 0 is root"),
    ({"spec__controlPlane__deployment__containerSecurityContexts": {
        "apiServer": {"runAsNonRoot": False}}}, f"{CSC}.apiServer.runAsNonRoot: false"),
    ({"spec__controlPlane__deployment__containerSecurityContexts": {
        "scheduler": {"runAsGroup": 0}}}, f"{CSC}.scheduler.runAsGroup: 0"),
    ({"spec__controlPlane__deployment__containerSecurityContexts": {
        "apiServer": {"procMount": "Unmasked"}}}, f"{CSC}.apiServer.procMount"),
    ({"spec__controlPlane__deployment__containerSecurityContexts": {
        "apiServer": {"appArmorProfile": {"type": "Unconfined"}}}},
     f"{CSC}.apiServer.appArmorProfile.type: Unconfined"),
    ({"spec__controlPlane__deployment__containerSecurityContexts": {
        "scheduler": {"seLinuxOptions": {"user": "system_u"}}}},
     f"{CSC}.scheduler.seLinuxOptions: a user or role"),
    ({"spec__controlPlane__deployment__podAdditionalMetadata": {"annotations": {
        "container.apparmor.security.beta.kubernetes.io/kube-apiserver": "unconfined"}}},
     f"{DEP}.podAdditionalMetadata.annotations"
     "[container.apparmor.security.beta.kubernetes.io/kube-apiserver]: unconfined"),
    ({"spec__controlPlane__deployment__podAdditionalMetadata": {"annotations": {
        "seccomp.security.alpha.kubernetes.io/pod": "unconfined"}}},
     f"{DEP}.podAdditionalMetadata.annotations[seccomp.security.alpha.kubernetes.io/pod]"),
])
async def test_pod_settings_that_escape_are_refused_naming_the_field(
    client: AsyncClient, changes: dict[str, Any], named: str
) -> None:
    with pytest.raises(ApiError) as info:
        await client.create(from_dict(manifest(**changes)))
    message = info.value.status.message
    assert info.value.status.code == 403, message
    assert DENIED in message and named in message, message
    assert f"pod rules of ConfigMap {OPERATOR_NS}/{policies.PARAMS}" in message


async def test_every_problem_is_named_at_once(client: AsyncClient) -> None:
    message = await refusal(client, manifest(spec__controlPlane__deployment={
        "podSecurityContext": {"runAsUser": 0},
        "containerSecurityContexts": {"apiServer": {"privileged": True},
                                      "scheduler": {"privileged": True}}}))
    assert message is not None
    for named in (f"{PSC}.runAsUser", f"{CSC}.apiServer.privileged",
                  f"{CSC}.scheduler.privileged"):
        assert named in message, message


async def test_an_update_is_judged_like_a_create(client: AsyncClient) -> None:
    await client.create(from_dict(manifest()))
    with pytest.raises(ApiError) as info:
        await client.apply(from_dict(manifest(**PRIVILEGED)), force=True)
    assert f"{CSC}.apiServer.privileged" in info.value.status.message


# --- the policy: images and externalIPs ---------------------------------------------------

@pytest.mark.parametrize(("changes", "named"), [
    (OTHER_REGISTRY, f"{DEP}.registrySettings.registry: ghcr.io/example is not in an "
                     "allowed registry (registry.k8s.io, docker.io/rancher)"),
    ({"spec__controlPlane__deployment__registrySettings": {"registry": "registry.k8s.io.evil"}},
     f"{DEP}.registrySettings.registry: registry.k8s.io.evil"),
    ({"spec__controlPlane__deployment__registrySettings": {"registry": "docker.io/ranchers"}},
     f"{DEP}.registrySettings.registry: docker.io/ranchers"),
    ({"spec__controlPlane__deployment__registrySettings": {"registry": "docker.io"}},
     f"{DEP}.registrySettings.registry: docker.io is not"),
    ({"spec__addons__coreDNS": {"imageRepository": "quay.io/coredns"}},
     "spec.addons.coreDNS.imageRepository: quay.io/coredns"),
    ({"spec__addons__kubeProxy": {"imageRepository": "ghcr.io/proxy", "imageTag": "v1"}},
     "spec.addons.kubeProxy.imageRepository: ghcr.io/proxy"),
])
async def test_images_from_registries_not_allowed_are_refused(
    client: AsyncClient, changes: dict[str, Any], named: str
) -> None:
    message = await refusal(client, manifest(**changes))
    assert message is not None and DENIED in message, message
    assert named in message, message
    assert f"allowedRegistries of ConfigMap {OPERATOR_NS}/{policies.PARAMS}" in message


async def test_external_ip_capture_is_refused_naming_the_field(client: AsyncClient) -> None:
    message = await refusal(client, manifest(**CAPTURE))
    assert message is not None and DENIED in message, message
    assert ("spec.networkProfile.allowAddressAsExternalIP: true would publish "
            "spec.networkProfile.address 192.0.2.7 as an externalIP") in message, message
    # Not published, nothing captured: no address, or allowAddressAsExternalIP false.
    assert await accepted(client, manifest(
        spec__controlPlane__service__serviceType="NodePort",
        spec__networkProfile={"allowAddressAsExternalIP": True}))
    assert await accepted(client, manifest(
        spec__controlPlane__service__serviceType="NodePort",
        spec__networkProfile={"address": "192.0.2.7", "allowAddressAsExternalIP": False}))


async def test_allowed_specs_are_still_accepted(client: AsyncClient) -> None:
    kamaji = copy.deepcopy(KAMAJI_SAMPLE)
    kamaji["metadata"]["namespace"] = NS
    await client.create(from_dict(kamaji))
    restricted = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                  "fsGroup": 65532, "supplementalGroups": [1, 2],
                  "seccompProfile": {"type": "RuntimeDefault"},
                  "appArmorProfile": {"type": "RuntimeDefault"},
                  "seLinuxOptions": {"type": "container_t", "level": "s0:c1,c2"},
                  "sysctls": [{"name": n, "value": "1"} for n in policies.SAFE_SYSCTLS]}
    container = {"allowPrivilegeEscalation": False, "privileged": False,
                 "capabilities": {"drop": ["ALL"], "add": []}, "readOnlyRootFilesystem": True,
                 "runAsNonRoot": True, "runAsUser": 1000, "procMount": "Default",
                 "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"},
                 "windowsOptions": {"hostProcess": False}}
    await client.create(from_dict(manifest(
        "restricted",
        spec__controlPlane__deployment__podSecurityContext=restricted,
        spec__controlPlane__deployment__containerSecurityContexts={
            "apiServer": container, "controllerManager": container, "scheduler": container},
        spec__controlPlane__deployment__podAdditionalMetadata={"annotations": {
            "container.apparmor.security.beta.kubernetes.io/kube-apiserver": "runtime/default",
            "seccomp.security.alpha.kubernetes.io/pod": "localhost/p.json",
            "example.com/team": "a"}},
        spec__controlPlane__deployment__registrySettings={"registry": "registry.k8s.io"},
        spec__addons={"coreDNS": {"imageRepository": "registry.k8s.io/coredns"},
                      "kubeProxy": {"imageRepository": "registry.k8s.io/sub/path"}})))
    for registry in ("docker.io/rancher", "docker.io/rancher/hardened", ""):
        assert await accepted(client, manifest(
            spec__controlPlane__deployment__registrySettings={"registry": registry})), registry


# --- the settings ---------------------------------------------------------------------------

async def test_pod_rules_off_lets_the_pod_settings_through_and_nothing_else(
    client: AsyncClient
) -> None:
    await set_params(client, podRules=policies.PODS_OFF)
    await eventually(lambda: accepted(client, manifest(**PRIVILEGED)), "podRules off")
    assert await accepted(client, manifest(spec__controlPlane__deployment={
        "podSecurityContext": {"runAsUser": 0, "sysctls": [
            {"name": "net.ipv4.ip_forward", "value": "1"}]},
        "containerSecurityContexts": {"apiServer": {"capabilities": {"add": ["SYS_ADMIN"]}}}}))
    # The registry and externalIP rules stay.
    assert await refused(client, manifest(**OTHER_REGISTRY))
    assert await refused(client, manifest(**CAPTURE))
    # And so do the CRD's flag rules (they are not the policy's).
    assert await refusal(client, manifest(spec__controlPlane__deployment__extraArgs={
        "apiServer": ["--authorization-mode=AlwaysAllow"]})) is not None
    await set_params(client, podRules="on")
    await eventually(lambda: refused(client, manifest(**PRIVILEGED)), "podRules on again")


async def test_a_registry_or_address_added_to_the_settings_is_then_accepted(
    client: AsyncClient
) -> None:
    assert await refused(client, manifest(**OTHER_REGISTRY))
    await set_params(client, allowedRegistries="registry.k8s.io\ndocker.io/rancher\n"
                                               "ghcr.io/example/\n")
    await eventually(lambda: accepted(client, manifest(**OTHER_REGISTRY)),
                     "ghcr.io/example allowed")
    assert await accepted(client, manifest(spec__addons__coreDNS={
        "imageRepository": "ghcr.io/example/coredns"}))
    assert await refused(client, manifest(spec__addons__coreDNS={
        "imageRepository": "ghcr.io/other/coredns"}))
    # Comma-separated, and the default registry can be taken away.
    await set_params(client, allowedRegistries="ghcr.io/example, docker.io/rancher")
    kamaji = manifest()
    await eventually(lambda: refused(client, kamaji), "registry.k8s.io no longer allowed")
    message = await refusal(client, kamaji)
    assert message is not None
    assert (f"{DEP}.registrySettings.registry: registry.k8s.io is not in an allowed registry "
            "(ghcr.io/example, docker.io/rancher)") in message, message
    assert "spec.addons.coreDNS.imageRepository: registry.k8s.io/coredns" in message

    assert await refused(client, manifest(**CAPTURE))
    await set_params(client, allowedExternalIPs="198.51.100.1, 192.0.2.0/28")
    await eventually(lambda: accepted(client, manifest(**CAPTURE)), "192.0.2.0/28 allowed")
    outside = manifest(**CAPTURE)
    outside["spec"]["networkProfile"]["address"] = "192.0.2.99"
    assert await refused(client, outside)
    single = manifest(**CAPTURE)
    single["spec"]["networkProfile"]["address"] = "198.51.100.1"
    assert await accepted(client, single)


async def test_an_object_admitted_before_stays_finalizable_until_its_spec_changes(
    client: AsyncClient
) -> None:
    await set_params(client, podRules=policies.PODS_OFF)
    await eventually(lambda: accepted(client, manifest(**PRIVILEGED)), "podRules off")
    await client.create(from_dict(manifest("older", **PRIVILEGED)))
    await set_params(client, podRules="on")
    await eventually(lambda: refused(client, manifest(**PRIVILEGED)), "podRules on again")
    # Metadata only (the operator's finalizer, a label): not judged again.
    await client.patch(TCP, "older", {"metadata": {"finalizers": ["haku.dev/test"],
                                                   "labels": {"a": "b"}}},
                       namespace=NS, patch_type=PatchType.MERGE)
    await client.patch(TCP, "older", {"metadata": {"finalizers": None}},
                       namespace=NS, patch_type=PatchType.MERGE)
    # A spec change is judged whole, and names what must go.
    with pytest.raises(ApiError) as info:
        await client.patch(TCP, "older", {"spec": {"controlPlane": {"deployment": {
            "replicas": 1}}}}, namespace=NS, patch_type=PatchType.MERGE)
    assert f"{CSC}.apiServer.privileged" in info.value.status.message


async def test_without_its_configmap_every_create_is_refused(client: AsyncClient) -> None:
    await client.delete(ConfigMap, policies.PARAMS, namespace=OPERATOR_NS)
    try:
        await eventually(lambda: refused(client, manifest()), "refused without the ConfigMap")
        message = await refusal(client, manifest())
        assert message is not None and "no params found" in message, message
    finally:
        await policies.install_policies(client, OPERATOR_NS)  # creates it again
    await eventually(lambda: accepted(client, manifest()), "the ConfigMap is back")


async def test_install_keeps_an_administrators_settings(client: AsyncClient) -> None:
    await set_params(client, podRules=policies.PODS_OFF)
    await policies.install_policies(client, OPERATOR_NS)
    got = await client.get(ConfigMap, policies.PARAMS, namespace=OPERATOR_NS)
    assert got.data is not None and got.data[policies.PODS_KEY] == policies.PODS_OFF

