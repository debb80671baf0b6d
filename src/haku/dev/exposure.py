"""``haku dev exposure up|down|hosts``: Traefik in the dev cluster, carrying tenants' Ingresses
(TLS passthrough) and Gateway API TLSRoutes to their API servers.

Opt-in, like the addons: a plain ``haku dev up`` starts none of it. :func:`up`

- builds Traefik (:mod:`haku.dev.toolchain`, pinned in :mod:`haku.dev.versions`) if it is not
  cached, writes its image ``docker.io/library/traefik:<v>`` (the binary at
  ``/usr/local/bin/traefik``, the host's CA bundle, user 65532) and imports it into the admin
  node's containerd, as the other dev images;
- installs the Gateway API CRDs of the standard channel (:mod:`haku.dev.gateway_api`, every
  CRD file of it: Traefik's Gateway provider watches HTTPRoute, GRPCRoute and
  BackendTLSPolicy besides TLSRoute);
- applies, in the namespace ``haku-exposure``: a ServiceAccount, a ClusterRole and binding
  (read what the two providers read, write the status of Ingresses and Gateway API objects),
  the IngressClass ``nginx`` (controller ``k8s.io/ingress-nginx``, what Kamaji's manifests
  name), the GatewayClass ``traefik`` and the Gateway ``haku-exposure/tenants`` with one
  listener ``kube-apiserver``: TLS, passthrough, any host name, TLSRoutes from every
  namespace;
- runs Traefik as a one-replica Deployment with ``hostNetwork`` on the admin node, its
  entryPoints bound to the node IP: ``ingress`` on :data:`INGRESS_PORT` (the Ingress NGINX
  provider: an Ingress annotated ``nginx.ingress.kubernetes.io/ssl-passthrough: "true"``
  becomes a TCP router by SNI to the Service's endpoints), ``gateway`` on
  :data:`GATEWAY_PORT` (the Gateway provider: a Gateway listener is served by the entryPoint
  of its port) and ``traefik`` on :data:`PING_PORT` (``/ping``, the readiness probe).

Workers reach the admin node IP from their network namespaces, so a tenant's host name that
resolves to it works from a worker, from the host and from the host's kubectl. Nothing here
serves DNS: :func:`set_hosts` writes the names into ``/etc/hosts`` (a block between marker
lines, replaced as a whole and removed by ``haku dev exposure hosts --remove`` or ``down``),
which the host's resolvers, the Go programs (kubeadm, the kubelet, kubectl) and the
hostNetwork pods of workers (the kubelet copies the node's ``/etc/hosts`` into them) read.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from haku.dev import gateway_api, images, oci, releases, toolchain
from haku.dev.layout import Layout
from haku.dev.versions import Versions
from haku.errors import HakuError

Printer = Callable[[str], None]

NAMESPACE = "haku-exposure"
NAME = "traefik"
INGRESS_PORT = 8443  # entryPoint "ingress": Ingress TLS passthrough
GATEWAY_PORT = 9443  # entryPoint "gateway": the Gateway's listener kube-apiserver
PING_PORT = 9100  # entryPoint "traefik": /ping
# What Kamaji's examples (and ingress-nginx) call the class and its controller; Traefik's
# Ingress NGINX provider takes IngressClasses of that controller by default.
INGRESS_CLASS = "nginx"
INGRESS_CONTROLLER = "k8s.io/ingress-nginx"
PASSTHROUGH_ANNOTATION = "nginx.ingress.kubernetes.io/ssl-passthrough"
GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_CLASS = "traefik"
GATEWAY_CONTROLLER = "traefik.io/gateway-controller"
GATEWAY = "tenants"
LISTENER = "kube-apiserver"
USER = "65532:65532"
BINARY = "/usr/local/bin/traefik"
MANAGED = {"app.kubernetes.io/managed-by": "haku-dev", "app.kubernetes.io/part-of": "exposure"}
SELECTOR = {"app.kubernetes.io/name": NAME}
READY_TIMEOUT = 180.0
HOSTS = Path("/etc/hosts")
HOSTS_BEGIN = "# haku dev exposure: begin (haku dev exposure hosts --remove takes it out)"
HOSTS_END = "# haku dev exposure: end"
KUBECTL_TIMEOUT = 120.0


class ExposureError(HakuError):
    """Traefik cannot be set up in the dev cluster, with what to do."""


def image_name(version: str) -> str:
    return f"docker.io/library/traefik:{version}"


def image(binary: Path, version: str) -> oci.ImageSpec:
    """``docker.io/library/traefik:<v>``: the binary and the host's CA bundle, as user 65532."""
    if not binary.is_file():
        raise ExposureError(f"{binary} is missing: build it with `haku dev build traefik`")
    files = [oci.LayerFile(BINARY, source=binary)]
    if Path(images.CA_BUNDLE).is_file():
        files.append(oci.LayerFile(images.CA_BUNDLE,
                                   source=Path(os.path.realpath(images.CA_BUNDLE)), mode=0o644))
    return oci.ImageSpec(name=image_name(version), entrypoint=(BINARY,), files=tuple(files),
                         user=USER)


def traefik_args(node_ip: str) -> list[str]:
    """Traefik's static configuration, as flags."""
    return [
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        "--log.level=INFO",
        f"--entryPoints.ingress.address={node_ip}:{INGRESS_PORT}",
        f"--entryPoints.gateway.address={node_ip}:{GATEWAY_PORT}",
        f"--entryPoints.traefik.address={node_ip}:{PING_PORT}",
        "--ping=true",
        "--providers.kubernetesIngressNGINX=true",
        # Both kinds of Ingress router on the one entryPoint: passthrough TCP routers (by SNI)
        # come first; plain HTTP rules, which Haku does not make, would be served there too.
        "--providers.kubernetesIngressNGINX.httpsEntryPoint=ingress",
        "--providers.kubernetesIngressNGINX.httpEntryPoint=ingress",
        f"--providers.kubernetesIngressNGINX.publishStatusAddress={node_ip}",
        "--providers.kubernetesGateway=true",
        f"--providers.kubernetesGateway.statusAddress.ip={node_ip}",
    ]


def _meta(name: str, namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": dict(MANAGED)}
    if namespaced:
        meta["namespace"] = NAMESPACE
    return meta


def cluster_role_rules() -> list[dict[str, Any]]:
    """What the Ingress NGINX and Gateway providers read, and the status they write."""
    read = ["get", "list", "watch"]
    return [
        {"apiGroups": [""], "resources": ["services", "secrets", "configmaps", "namespaces",
                                          "nodes"], "verbs": read},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "ingressclasses"],
         "verbs": read},
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses/status"],
         "verbs": ["update"]},
        {"apiGroups": ["gateway.networking.k8s.io"],
         "resources": ["gatewayclasses", "gateways", "httproutes", "grpcroutes", "tlsroutes",
                       "tcproutes", "referencegrants", "backendtlspolicies"], "verbs": read},
        {"apiGroups": ["gateway.networking.k8s.io"],
         "resources": ["gatewayclasses/status", "gateways/status", "httproutes/status",
                       "grpcroutes/status", "tlsroutes/status", "tcproutes/status",
                       "backendtlspolicies/status"], "verbs": ["update"]},
    ]


def manifests(node_ip: str, version: str) -> list[dict[str, Any]]:
    """Every object of the setup, in the order to apply (the CRDs come before, separately)."""
    rbac = "rbac.authorization.k8s.io/v1"
    container = {
        "name": NAME,
        "image": image_name(version),
        "imagePullPolicy": "IfNotPresent",
        "args": traefik_args(node_ip),
        "ports": [{"name": "ingress", "containerPort": INGRESS_PORT},
                  {"name": "gateway", "containerPort": GATEWAY_PORT},
                  {"name": "ping", "containerPort": PING_PORT}],
        "readinessProbe": {"httpGet": {"path": "/ping", "port": PING_PORT},
                           "periodSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/ping", "port": PING_PORT},
                          "periodSeconds": 10, "failureThreshold": 6},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(NAMESPACE, False)},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME)},
        {"apiVersion": rbac, "kind": "ClusterRole", "metadata": _meta(f"haku-dev-{NAME}", False),
         "rules": cluster_role_rules()},
        {"apiVersion": rbac, "kind": "ClusterRoleBinding",
         "metadata": _meta(f"haku-dev-{NAME}", False),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": f"haku-dev-{NAME}"},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]},
        {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
         "metadata": _meta(INGRESS_CLASS, False), "spec": {"controller": INGRESS_CONTROLLER}},
        {"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "GatewayClass",
         "metadata": _meta(GATEWAY_CLASS, False), "spec": {"controllerName": GATEWAY_CONTROLLER}},
        {"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "Gateway", "metadata": _meta(GATEWAY),
         "spec": {"gatewayClassName": GATEWAY_CLASS, "listeners": [{
             "name": LISTENER, "port": GATEWAY_PORT, "protocol": "TLS",
             "tls": {"mode": "Passthrough"},
             "allowedRoutes": {"namespaces": {"from": "All"},
                               "kinds": [{"group": GATEWAY_GROUP, "kind": "TLSRoute"}]}}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(NAME),
         "spec": {
             "replicas": 1,
             # One pod on the node's ports: the old one goes before the new one binds them.
             "strategy": {"type": "Recreate"},
             "selector": {"matchLabels": dict(SELECTOR)},
             "template": {
                 "metadata": {"labels": {**SELECTOR, **MANAGED}},
                 "spec": {
                     "serviceAccountName": NAME,
                     "hostNetwork": True,
                     "dnsPolicy": "Default",  # the node's resolver; Traefik needs no DNS
                     "securityContext": {"runAsUser": 65532, "runAsGroup": 65532},
                     "terminationGracePeriodSeconds": 5,
                     "containers": [container],
                 }}}},
    ]


def parent_ref(port: int | None = GATEWAY_PORT) -> dict[str, Any]:
    """The parentRef of a tenant's spec.controlPlane.gateway for the dev cluster's Gateway."""
    ref: dict[str, Any] = {"name": GATEWAY, "namespace": NAMESPACE, "sectionName": LISTENER}
    if port is not None:
        ref["port"] = port
    return ref


def ingress_spec(hostname: str) -> dict[str, Any]:
    """A tenant's spec.controlPlane.ingress for the dev cluster's Traefik (Kamaji's shape):
    class ``nginx``, the passthrough annotation, the host name on :data:`INGRESS_PORT`."""
    return {"hostname": f"{hostname}:{INGRESS_PORT}", "ingressClassName": INGRESS_CLASS,
            "additionalMetadata": {"annotations": {PASSTHROUGH_ANNOTATION: "true"}}}


def gateway_spec(hostname: str) -> dict[str, Any]:
    """A tenant's spec.controlPlane.gateway for the dev cluster's Gateway: the host name,
    and the listener kube-apiserver on :data:`GATEWAY_PORT` (the port clients dial)."""
    return {"hostname": hostname, "parentRefs": [parent_ref()]}


# ---------------------------------------------------------------------------------------------
# /etc/hosts


def hosts_text(current: str, names: Iterable[str], address: str) -> str:
    """``current`` (an /etc/hosts) with Haku's block holding ``names`` -> ``address`` (pure).
    The block replaces the one there; without names it is removed."""
    lines = current.splitlines()
    if HOSTS_BEGIN in lines and HOSTS_END in lines[lines.index(HOSTS_BEGIN):]:
        start = lines.index(HOSTS_BEGIN)
        end = lines.index(HOSTS_END, start)
        del lines[start:end + 1]
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", name):
            raise ExposureError(f"{name!r} is not a host name")
    if wanted:
        lines += [HOSTS_BEGIN, *(f"{address} {name}" for name in wanted), HOSTS_END]
    return "\n".join(lines) + "\n"


def hosts_names(current: str) -> list[str]:
    """The names in Haku's block of ``current``."""
    lines = current.splitlines()
    if HOSTS_BEGIN not in lines:
        return []
    start = lines.index(HOSTS_BEGIN)
    names = []
    for line in lines[start + 1:]:
        if line == HOSTS_END:
            break
        names += line.split()[1:]
    return names


def set_hosts(names: Iterable[str], address: str, path: Path = HOSTS) -> list[str]:
    """Make Haku's block of ``path`` map exactly ``names`` to ``address`` (none: remove it).
    Written in place (``/etc/hosts`` may be a bind mount). Returns the names it holds."""
    wanted = list(dict.fromkeys(names))
    current = path.read_text()
    text = hosts_text(current, wanted, address)
    if text != current:
        with path.open("r+") as f:
            f.write(text)
            f.truncate()
    return wanted


def add_hosts(names: Iterable[str], address: str, path: Path = HOSTS) -> list[str]:
    """Add ``names`` to Haku's block (keeping those there); the names it holds after."""
    return set_hosts([*hosts_names(path.read_text()), *names], address, path)


# ---------------------------------------------------------------------------------------------
# The cluster


def _kubectl(layout: Layout, *args: str, stdin: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(layout.bin / "kubectl"), f"--kubeconfig={layout.admin_kubeconfig}", *args]
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False,
                              timeout=KUBECTL_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise ExposureError(f"kubectl {' '.join(args)} took over {KUBECTL_TIMEOUT:.0f}s") from e
    if check and done.returncode != 0:
        raise ExposureError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return done


def apply(layout: Layout, objects: list[dict[str, Any]]) -> None:
    """Server-side apply (the CRDs are too large for kubectl's client-side annotation)."""
    _kubectl(layout, "apply", "--server-side", "--force-conflicts", "--field-manager=haku-dev",
             "-f", "-", stdin=yaml.safe_dump_all(objects, sort_keys=False))


def gateway_crds(progress: Printer | None = None) -> list[dict[str, Any]]:
    """Every CustomResourceDefinition of the cached standard channel (fetched if missing)."""
    where = gateway_api.ensure(progress=progress)
    found = []
    for path in sorted(where.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                found.append(doc)
    return found


@dataclass
class Report:
    built: bool = False  # Traefik compiled by this call
    imported: bool = False  # its image imported (not there already)
    crds: int = 0
    seconds: float = 0.0
    node_ip: str = ""


def _wait(what: str, check: Callable[[], str | None], timeout: float,
          diagnose: Callable[[], str]) -> None:
    """Until ``check`` answers None (it answers why not yet); ExposureError after timeout."""
    deadline = time.monotonic() + timeout
    why = check()
    while why is not None:
        if time.monotonic() > deadline:
            raise ExposureError(f"{what} not within {timeout:.0f}s: {why}\n{diagnose()}")
        time.sleep(1.0)
        why = check()


def _condition(obj: dict[str, Any], ctype: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return str(c.get("status"))
    return None


def _get(layout: Layout, *args: str) -> dict[str, Any] | None:
    done = _kubectl(layout, "get", *args, "-o", "json", check=False)
    if done.returncode != 0:
        return None
    got: dict[str, Any] = json.loads(done.stdout)
    return got


def _deployment_ready(layout: Layout) -> str | None:
    got = _get(layout, "-n", NAMESPACE, "deployment", NAME)
    if got is None:
        return "no Deployment"
    status = got.get("status") or {}
    if status.get("observedGeneration") != got["metadata"].get("generation"):
        return "not observed yet"
    if (status.get("updatedReplicas") or 0) < 1 or (status.get("readyReplicas") or 0) < 1 \
            or (status.get("replicas") or 0) != 1:
        return f"ready {status.get('readyReplicas') or 0}/1"
    return None


def _gateway_programmed(layout: Layout) -> str | None:
    got = _get(layout, "-n", NAMESPACE, "gateway", GATEWAY)
    if got is None:
        return "no Gateway"
    if _condition(got, "Programmed") != "True":
        return f"Gateway {NAMESPACE}/{GATEWAY} not Programmed: {(got.get('status') or {})}"
    return None


def _diagnose(layout: Layout) -> str:
    pods = _kubectl(layout, "-n", NAMESPACE, "describe", "pods", check=False).stdout
    logs = _kubectl(layout, "-n", NAMESPACE, "logs", f"deployment/{NAME}", "--tail=30",
                    check=False)
    return f"--- pods ---\n{pods[-2500:]}\n--- logs ---\n{(logs.stdout or logs.stderr)[-2500:]}"


def up(layout: Layout, printer: Printer | None = None, *, versions: Versions | None = None,
       cache: Path | None = None) -> Report:
    """Traefik in the dev cluster (safe to run again): built if missing, its image imported,
    the Gateway API CRDs, RBAC, classes, Gateway and Deployment applied; returns once its pod
    is Ready and the Gateway Programmed."""
    out = printer or (lambda line: print(line, flush=True))
    versions = versions or Versions.from_env()
    cache = cache or toolchain.cache_root()
    started = time.monotonic()
    report = Report(node_ip=layout.node_ip)
    down = releases.admin_not_up(layout)
    if down:
        raise ExposureError(down)
    component = toolchain.components(versions)["traefik"]
    report.built = not component.is_built(cache)
    directory = toolchain.ensure(["traefik"], versions, cache, progress=out)["traefik"]
    built = images.build_archives([image(directory / "traefik", versions.traefik)], cache)
    report.imported = bool(images.import_images(built, layout.containerd_socket))
    out(f"  image {built[0].name}: {'imported' if report.imported else 'there already'}")
    crds = gateway_crds(out)
    apply(layout, crds)
    for crd in crds:
        _kubectl(layout, "wait", "--for=condition=Established", "--timeout=60s",
                 f"crd/{crd['metadata']['name']}")
    report.crds = len(crds)
    out(f"  Gateway API {gateway_api.VERSION} CRDs (standard channel): {len(crds)} established")
    apply(layout, manifests(layout.node_ip, versions.traefik))
    _wait("Traefik's pod Ready", lambda: _deployment_ready(layout), READY_TIMEOUT,
          lambda: _diagnose(layout))
    _wait("the Gateway Programmed", lambda: _gateway_programmed(layout), 60.0,
          lambda: _diagnose(layout))
    report.seconds = time.monotonic() - started
    out(f"  Traefik {versions.traefik} Ready on {layout.node_ip}: Ingress (class "
        f"{INGRESS_CLASS}, TLS passthrough) :{INGRESS_PORT}, Gateway {NAMESPACE}/{GATEWAY} "
        f"(listener {LISTENER}) :{GATEWAY_PORT}")
    return report


def down(layout: Layout, hosts: Path = HOSTS) -> list[str]:
    """Delete what :func:`up` applied (only objects labelled as its; not the Gateway API CRDs,
    which tenants' routes may still use), and Haku's block of ``/etc/hosts``. What was
    deleted."""
    gone = []
    selector = ",".join(f"{k}={v}" for k, v in MANAGED.items())
    kinds = ["namespaces", "clusterrolebindings", "clusterroles", "ingressclasses"]
    if _get(layout, "crd", f"gatewayclasses.{GATEWAY_GROUP}") is not None:
        kinds.append(f"gatewayclasses.{GATEWAY_GROUP}")
    for kind in kinds:
        done = _kubectl(layout, "delete", kind, "-l", selector, "--ignore-not-found",
                        "--wait=true", "-o", "name", check=False)
        if done.returncode != 0:
            raise ExposureError(f"kubectl delete {kind} -l {selector} failed: "
                                f"{done.stderr.strip()[-1000:]}")
        gone += done.stdout.split()
    if hosts.is_file() and hosts_names(hosts.read_text()):
        set_hosts([], layout.node_ip, hosts)
        gone.append(f"{hosts} entries")
    return gone
