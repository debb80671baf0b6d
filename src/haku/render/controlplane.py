"""The tenant control plane's Deployment, Service and Ingress, as plain manifests (pure).

Flags come in three kinds: *managed* ones wire the pod together (certificates, ports, storage);
the CRD refuses them in ``extraArgs`` and they win here too (for objects admitted before that
rule); *defaults* are Kamaji's and kubeadm's choices (and values from spec fields such as
admissionControllers) and yield to the user's ``extraArgs``; the user's extras follow
verbatim (repeatable flags stay repeated).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from haku.api.tenantcontrolplane import (
    EXTRA_ARGS_FIELD,
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    VERSION_FIELD,
    TenantControlPlaneSpec,
    refused_flag,
    service_cidr_problem,
    version_problem,
)
from haku.render import InvalidSpec, ca_rotation
from haku.render import kine as kine_render
from haku.render import konnectivity as konnectivity_render
from haku.render.args import flag_name, merge_args, with_feature_gates
from haku.render.storage import TenantConnection

PKI = "/etc/kubernetes/pki"
# The CAs the tenant trusts (ca.crt, and another during a rotation: render/ca_rotation.py);
# ca.crt alone is the CA that signs.
TRUST_BUNDLE = ca_rotation.BUNDLE
CONFIG = "/etc/kubernetes/config"
MANAGED_BY = "haku"
TENANT_LABEL = "haku.dev/tenant-control-plane"
CONTROLLER_MANAGER_PORT, SCHEDULER_PORT = 10257, 10259
# The name of the API port, on the Service and on the kube-apiserver container.
API_PORT_NAME = "kube-apiserver"

# kubeadm's static-pod probes (cmd/kubeadm/app/util/staticpod/utils.go, v1.37). On a node
# packed with tenants a probe can take seconds to answer: 15 s timeouts and 8 failures before a
# restart keep a slow but healthy control plane running. Readiness every second gates the
# Deployment status, and with it Ready. The startup probe keeps kubeadm's 4 minutes to start
# (240 x 1 s instead of 24 x 10 s): the same patience, but a pod that starts in 4 s is not
# held back until a first check at 10 s.
LIVENESS = {"initialDelaySeconds": 10, "timeoutSeconds": 15, "periodSeconds": 10,
            "failureThreshold": 8}
READINESS = {"initialDelaySeconds": 0, "timeoutSeconds": 15, "periodSeconds": 1,
             "failureThreshold": 3}
STARTUP = {"initialDelaySeconds": 0, "timeoutSeconds": 15, "periodSeconds": 1,
           "failureThreshold": 240}

# Pod-template annotations ``checksum.haku.dev/<what>``: one per Secret the pods mount (a change
# rolls them), e.g. ``datastore`` for the DataStore connection.
CHECKSUM_PREFIX = "checksum.haku.dev/"

# kube-apiserver's --shutdown-delay-duration and --shutdown-watch-termination-grace-period (see
# apiserver_args); together well within the pods' default 30 s grace period.
SHUTDOWN_DELAY = "5s"
SHUTDOWN_WATCH_GRACE = "10s"
# How long the kine sidecar waits before its own SIGTERM (a preStop sleep: Kubernetes 1.30+ on
# the admin cluster): kube-apiserver, stopped at once, has usually exited by then.
KINE_STOP_DELAY_SECONDS = 10

# Requests when spec.controlPlane.deployment.resources does not set a component's (no
# limits). Not kubeadm's (250m + 200m + 100m CPU assume a node of its own: 2 cores would hold
# 3 tenant pods): what an idle tenant control plane uses, so the scheduler packs by real use,
# the pods leave BestEffort (first to be evicted or OOM-killed) and the PriorityClass below
# protects them. Memory from the idle RSS of the same components (docs/benchmarks.md).
DEFAULT_RESOURCES: Mapping[str, Mapping[str, Mapping[str, str]]] = {
    "kube-apiserver": {"requests": {"cpu": "25m", "memory": "192Mi"}},
    "kube-controller-manager": {"requests": {"cpu": "10m", "memory": "48Mi"}},
    "kube-scheduler": {"requests": {"cpu": "5m", "memory": "24Mi"}},
    "kine": {"requests": {"cpu": "5m", "memory": "24Mi"}},
    "konnectivity-server": {"requests": {"cpu": "5m", "memory": "24Mi"}},
}

# Leader election of the tenant's kube-controller-manager and kube-scheduler (defaults, so
# extraArgs override them). client-go's defaults, which kubeadm keeps (15 s lease, 10 s renew
# deadline, 2 s retry), make a leader that cannot renew its Lease for 10 s exit; on a node
# packed with tenants (docs/benchmarks.md, Density) one slow API server past ~15 tenants made
# its controller-manager and scheduler restart, and the restarts' CPU slowed the others in
# turn: a collapse. The lease duration and renew deadline are OpenShift's for nearly every
# lease it runs (library-go pkg/config/leaderelection, LeaderElectionDefaulting;
# openshift/enhancements CONVENTIONS.md, "Handling kube-apiserver disruption"), which
# HyperShift's hosted control planes use too (openshift/hypershift support/config/constants.go,
# RecommendedLeaseDuration, RecommendedRenewDeadline): a leader rides out 107 s of API server
# trouble and 30 s of clock skew. (HyperShift's own hosted kube-controller-manager keeps
# OpenShift's 12 s / 3 s; widening it, openshift/hypershift#6529, was proposed for restarts
# under load and closed unmerged.)
# The retry period is not OpenShift's 26 s but 5 s: it is also how often a candidate tries
# to take the Lease (client-go jitters it up to 2.2 times), and a component's first try fails
# at every pod start (its API server is not up yet, or has not made its RBAC roles:
# "forbidden"). With 26 s a new tenant's controller-manager started its controllers 26-57 s
# after the try, about 30 s after the tenant was Ready, so a node joining at once waited that
# long for its bootstrap token's signature. With 5 s that is 5-11 s. The leader also renews
# every retry period: a Lease write every 5 s instead of 2 s (client-go) or 26 s.
# Hand-over: a leader that stops without releasing its Lease is replaced only when the Lease
# expires, up to lease duration + retry period later (142 s against 17 s with client-go's).
# So both release theirs when stopped: kube-scheduler always does on a clean exit;
# kube-controller-manager does with the gate below (alpha since v1.36, off by default; without
# it every rollout paused the tenant's controllers, DaemonSets and bootstrap tokens included,
# for up to 163 s, and the node tier's upgrade test timed out on it). The next leader then
# takes the Lease at its next try, 5-11 s later.
# A leader that crashes or is killed still holds its Lease until it expires.
LEADER_ELECT_LEASE_DURATION = "137s"
LEADER_ELECT_RENEW_DEADLINE = "107s"
LEADER_ELECT_RETRY_PERIOD = "5s"
# Turned on in every kube-controller-manager Haku runs (a user's --feature-gates adds to it, and
# "ControllerManagerReleaseLeaderElectionLockOnExit=false" there turns it off). Every minor in
# SUPPORTED_MINORS knows it (v1.36+); revisit when a minor where it is removed is added.
CONTROLLER_MANAGER_FEATURE_GATES: Mapping[str, bool] = {
    "ControllerManagerReleaseLeaderElectionLockOnExit": True,
}
LEADER_ELECTION: Mapping[str, str] = {
    "--leader-elect": "true",
    "--leader-elect-lease-duration": LEADER_ELECT_LEASE_DURATION,
    "--leader-elect-renew-deadline": LEADER_ELECT_RENEW_DEADLINE,
    "--leader-elect-retry-period": LEADER_ELECT_RETRY_PERIOD,
}

# The control-plane pods' PriorityClass (deploy/priorityclass.yaml, priority_class()).
DEFAULT_PRIORITY_CLASS = "haku-control-plane"
PRIORITY = 100_000_000  # below system-cluster-critical (2,000,000,000) and its 1e9 user cap


def names(tcp: str) -> dict[str, str]:
    """Every object Haku makes for TenantControlPlane ``tcp`` (all in its namespace)."""
    return {
        "deployment": tcp,
        "service": tcp,
        "ingress": tcp,
        "network-policy": tcp,
        "pki": f"{tcp}-pki",
        "kubeconfigs": f"{tcp}-kubeconfigs",
        "admin-kubeconfig": f"{tcp}-admin-kubeconfig",
        "datastore": f"{tcp}-datastore",
    }


def check_name(spec: TenantControlPlaneSpec) -> None:
    """InvalidSpec unless the TenantControlPlane's name can name its Service (the CRD's rule)."""
    if len(spec.name) > NAME_MAX_LENGTH:
        raise InvalidSpec("metadata.name", f"{len(spec.name)} characters; at most "
                          f"{NAME_MAX_LENGTH}: it is also the name of the tenant's Service")
    if not re.fullmatch(NAME_PATTERN, spec.name):
        raise InvalidSpec("metadata.name", f"{spec.name!r} is not a DNS-1035 label: it is "
                          "also the name of the tenant's Service")


def check_version(spec: TenantControlPlaneSpec) -> None:
    """InvalidSpec unless spec.kubernetes.version is one this operator runs (the CRD's rule,
    for objects admitted before it)."""
    problem = version_problem(spec.version)
    if problem:
        raise InvalidSpec(VERSION_FIELD, problem)


def kubernetes_service_ips(spec: TenantControlPlaneSpec) -> list[str]:
    """The first address of each service CIDR (the tenant's ``kubernetes`` Service);
    InvalidSpec for a CIDR that cannot be a service range."""
    for i, cidr in enumerate(spec.service_cidrs):
        problem = service_cidr_problem(cidr)
        if problem:
            raise InvalidSpec(spec.service_cidr_field(i), problem)
    return spec.kubernetes_service_ips


def check_extra_args(spec: TenantControlPlaneSpec) -> None:
    """InvalidSpec for an extraArgs flag the CRD refuses (REFUSED_EXTRA_ARGS): an object
    admitted before the rule existed must not weaken its tenant either."""
    for component, attr in (("apiServer", "api_server"),
                            ("controllerManager", "controller_manager"),
                            ("scheduler", "scheduler"), ("kine", "kine")):
        for i, arg in enumerate(getattr(spec.extra_args, attr) or ()):
            flag = refused_flag(component, str(arg))
            if flag is not None:
                raise InvalidSpec(f"{EXTRA_ARGS_FIELD}.{component}[{i}]",
                                  f"{flag.shown} is refused: {flag.why}")


def check_ports(spec: TenantControlPlaneSpec) -> None:
    """InvalidSpec if an additional Service port repeats a name, or a port and protocol, of
    the API port or of another additional port (the CRD's rules)."""
    names_seen = {"kube-apiserver": "the API port"}
    ports_seen: dict[tuple[Any, str], str] = {
        (spec.port, "TCP"): "the API port (spec.networkProfile.port)"}
    konnectivity = spec.addons.konnectivity
    if konnectivity is not None:
        if konnectivity.server.port == spec.port:
            raise InvalidSpec("spec.addons.konnectivity.server.port",
                              f"{spec.port} is already the API port (spec.networkProfile.port)")
        names_seen[konnectivity_render.SERVICE_PORT_NAME] = "the Konnectivity port"
        ports_seen[(konnectivity.server.port, "TCP")] = \
            "the Konnectivity port (spec.addons.konnectivity.server.port)"
    for i, p in enumerate(spec.additional_ports):
        where = f"spec.controlPlane.service.additionalPorts[{i}]"
        name, number = p.get("name"), p.get("port")
        protocol = p.get("protocol") or "TCP"
        if name in names_seen:
            raise InvalidSpec(f"{where}.name", f"{name!r} is already the name of "
                              f"{names_seen[name]}")
        if (number, protocol) in ports_seen:
            raise InvalidSpec(f"{where}.port", f"{number}/{protocol} is already "
                              f"{ports_seen[(number, protocol)]}")
        names_seen[str(name)] = f"additionalPorts[{i}]"
        ports_seen[(number, protocol)] = f"additionalPorts[{i}]"


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


def apiserver_managed(spec: TenantControlPlaneSpec, storage: TenantConnection,
                      advertise_address: str, secure_port: int | None = None) -> dict[str, str]:
    """Flags that wire kube-apiserver into the pod; the CRD refuses them in extraArgs."""
    managed = {
        "--advertise-address": advertise_address,
        "--bind-address": "0.0.0.0",  # noqa: S104  (inside the pod)
        "--secure-port": str(secure_port or spec.port),
        "--client-ca-file": f"{PKI}/{TRUST_BUNDLE}",
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
    if spec.addons.konnectivity is not None:
        managed |= konnectivity_render.apiserver_managed()
    return managed


def apiserver_args(spec: TenantControlPlaneSpec, storage: TenantConnection,
                   advertise_address: str, secure_port: int | None = None) -> list[str]:
    managed = apiserver_managed(spec, storage, advertise_address, secure_port)
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
        # On SIGTERM (a rollout replacing the pod) /readyz fails at once and the server goes
        # on answering for this long, while its endpoint leaves the Service: no client sees a
        # refused connection.
        "--shutdown-delay-duration": SHUTDOWN_DELAY,
        # Then it ends its watches (their clients watch again, on a new pod) and exits once
        # they are gone, waiting for them at most this long. Without it the HTTP server's
        # shutdown waits on the open watch streams until the kubelet kills the pod at the end
        # of its 30 s grace period: every rollout left the old pods serving from their old
        # connection that long (and a migration waits for them before lifting its freeze).
        "--shutdown-watch-termination-grace-period": SHUTDOWN_WATCH_GRACE,
    }
    if any(flag_name(a) == "--authorization-config" for a in spec.extra_args.api_server):
        defaults.pop("--authorization-mode")  # the two flags exclude each other
    return merge_args(managed, defaults, list(spec.extra_args.api_server))


def controller_manager_managed(spec: TenantControlPlaneSpec) -> dict[str, str]:
    kc = f"{CONFIG}/controller-manager.conf"
    return {
        "--kubeconfig": kc,
        "--authentication-kubeconfig": kc,
        "--authorization-kubeconfig": kc,
        "--bind-address": "0.0.0.0",  # noqa: S104  (inside the pod)
        "--client-ca-file": f"{PKI}/{TRUST_BUNDLE}",
        "--requestheader-client-ca-file": f"{PKI}/front-proxy-ca.crt",
        "--root-ca-file": f"{PKI}/{TRUST_BUNDLE}",
        "--service-account-private-key-file": f"{PKI}/sa.key",
        "--cluster-signing-cert-file": f"{PKI}/ca.crt",
        "--cluster-signing-key-file": f"{PKI}/ca.key",
        "--service-cluster-ip-range": ",".join(spec.service_cidrs),
        "--cluster-cidr": ",".join(spec.pod_cidrs),
        "--cluster-name": spec.name,
    }


_GO_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                      "h": 3600.0}
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def go_duration_seconds(text: str) -> float | None:
    """Seconds of a Go duration (``137s``, ``2m17s``, ``1.5h``), None if it is not one."""
    parts = _GO_DURATION.findall(text)
    if text == "0":
        return 0.0
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _GO_DURATION_UNITS[u] for n, u in parts)


def check_leader_election(args: list[str], component: str) -> None:
    """InvalidSpec when the leader-election timings in ``args`` (Haku's defaults with the
    user's extraArgs over them, one flag at a time) are a combination client-go refuses at
    start (the component would only crash-loop): the lease must outlast the renew deadline,
    which must exceed 1.2 retry periods (its JitterFactor)."""
    given = {flag_name(a): a.split("=", 1)[1] for a in args if "=" in a}
    if given.get("--leader-elect", "true").lower() in ("false", "f", "0"):
        return
    lease, renew, retry = (go_duration_seconds(given.get(f"--leader-elect-{f}", ""))
                           for f in ("lease-duration", "renew-deadline", "retry-period"))
    if lease is None or renew is None or retry is None:
        return  # not `--flag=duration`: the component judges it itself
    if not lease > renew > 1.2 * retry > 0:
        raise InvalidSpec(
            f"{EXTRA_ARGS_FIELD}.{component}",
            f"leader election needs lease duration > renew deadline > 1.2 x retry period, "
            f"here {given['--leader-elect-lease-duration']}, "
            f"{given['--leader-elect-renew-deadline']}, {given['--leader-elect-retry-period']}"
            f" (Haku's defaults: {LEADER_ELECT_LEASE_DURATION}, {LEADER_ELECT_RENEW_DEADLINE},"
            f" {LEADER_ELECT_RETRY_PERIOD}; set the three together)")


def controller_manager_args(spec: TenantControlPlaneSpec) -> list[str]:
    managed = controller_manager_managed(spec)
    defaults = {
        "--allocate-node-cidrs": "true",
        "--controllers": "*,bootstrapsigner,tokencleaner",
        **LEADER_ELECTION,
        "--use-service-account-credentials": "true",
    }
    args = with_feature_gates(
        merge_args(managed, defaults, list(spec.extra_args.controller_manager)),
        CONTROLLER_MANAGER_FEATURE_GATES)
    check_leader_election(args, "controllerManager")
    return args


def scheduler_managed() -> dict[str, str]:
    kc = f"{CONFIG}/scheduler.conf"
    return {
        "--kubeconfig": kc,
        "--authentication-kubeconfig": kc,
        "--authorization-kubeconfig": kc,
        "--bind-address": "0.0.0.0",  # noqa: S104  (inside the pod)
    }


def scheduler_args(spec: TenantControlPlaneSpec) -> list[str]:
    args = merge_args(scheduler_managed(), dict(LEADER_ELECTION),
                      list(spec.extra_args.scheduler))
    check_leader_election(args, "scheduler")
    return args


def _probe(path: str, port: int, timing: Mapping[str, int]) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port, "scheme": "HTTPS"}, **timing}


def _resources(name: str, given: Any,
               defaults: Mapping[str, Mapping[str, Any]] | None) -> Any:
    """The spec's resources for container ``name`` when it sets them (``{}`` too: then
    none), else the default requests."""
    if given is not None:
        return given
    default = (defaults or {}).get(name)
    return {k: dict(v) for k, v in default.items()} if default else None


def _container(name: str, image: str, args: list[str], mounts: list[dict[str, Any]],
               resources: Any, probe_path: str, port: int,
               security_context: Any = None) -> dict[str, Any]:
    live = probe_path.replace("readyz", "livez")
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": [name],
        "args": args,
        "volumeMounts": mounts,
        "livenessProbe": _probe(live, port, LIVENESS),
        "readinessProbe": _probe(probe_path, port, READINESS),
        "startupProbe": _probe(live, port, STARTUP),
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
    priority_class: str | None = DEFAULT_PRIORITY_CLASS,
    default_resources: Mapping[str, Mapping[str, Any]] | None = DEFAULT_RESOURCES,
    secure_port: int | None = None,
) -> dict[str, Any]:
    """The control-plane Deployment. ``checksums`` (one per Secret it mounts) go into the pod
    template, so new certificates or credentials roll the pods. kube-apiserver listens on
    ``secure_port`` (default networkProfile.port; see :func:`secure_port`). The pods get
    ``priorityClassName: priority_class`` (None: none; the PriorityClass must exist, or the
    Priority admission plugin refuses the pods), and ``default_resources`` (per container
    name; None: none) for components whose resources the spec does not set.
    :class:`InvalidSpec` for a spec the CRD should have refused."""
    check_name(spec)
    check_version(spec)
    check_extra_args(spec)
    kubernetes_service_ips(spec)  # --service-cluster-ip-range must be a usable range
    n = names(spec.name)
    api_port = secure_port or spec.port
    pki_mount = {"name": "pki", "mountPath": PKI, "readOnly": True}
    config_mount = {"name": "kubeconfigs", "mountPath": CONFIG, "readOnly": True}
    volumes: list[dict[str, Any]] = [
        {"name": "pki", "secret": {"secretName": n["pki"], "defaultMode": 0o400}},
        # Only the components' own kubeconfigs: the Secret also holds the operator's
        # super-admin.conf, which the pods never need.
        {"name": "kubeconfigs", "secret": {"secretName": n["kubeconfigs"],
                                           "defaultMode": 0o400,
                                           "items": [{"key": k, "path": k} for k in (
                                               "controller-manager.conf",
                                               "scheduler.conf")]}},
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
                   apiserver_args(spec, storage, advertise_address, api_port),
                   apiserver_mounts,
                   _resources("kube-apiserver", spec.resources.api_server, default_resources),
                   "/readyz", api_port, spec.container_security_contexts.api_server),
        _container("kube-controller-manager", spec.image("kube-controller-manager"),
                   controller_manager_args(spec), [pki_mount, config_mount],
                   _resources("kube-controller-manager", spec.resources.controller_manager,
                              default_resources),
                   "/healthz", CONTROLLER_MANAGER_PORT,
                   spec.container_security_contexts.controller_manager),
        _container("kube-scheduler", spec.image("kube-scheduler"), scheduler_args(spec),
                   [config_mount],
                   _resources("kube-scheduler", spec.resources.scheduler, default_resources),
                   "/healthz", SCHEDULER_PORT, spec.container_security_contexts.scheduler),
    ]
    # Named: the NetworkPolicy admits the port by this name (render/netpol.py).
    containers[0]["ports"] = [{"name": API_PORT_NAME, "containerPort": api_port,
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
        # kine serves no health endpoint (its metrics listener is off), so it has no probes;
        # kube-apiserver's /readyz checks its storage through kine, so a kine that stops
        # answering takes the pod out of the Service.
        # On SIGTERM kine stops within 2 s, while kube-apiserver goes on answering for its
        # shutdown delay and then ends its watches: without this pause its last seconds had no
        # storage (reads timed out, and its shutdown hung until the pod's grace period ran out).
        kine["lifecycle"] = {"preStop": {"sleep": {"seconds": KINE_STOP_DELAY_SECONDS}}}
        kine_resources = _resources("kine", spec.resources.kine, default_resources)
        if kine_resources:
            kine["resources"] = kine_resources
        containers.append(kine)
    konnectivity = spec.addons.konnectivity
    if konnectivity is not None:
        volumes += konnectivity_render.server_volumes(n["pki"], n["kubeconfigs"])
        apiserver_mounts += konnectivity_render.apiserver_mounts()
        containers.append(konnectivity_render.server_container(
            konnectivity,
            merge_args(konnectivity_render.server_managed(konnectivity, spec.replicas),
                       konnectivity_render.server_defaults(),
                       list(konnectivity.server.extra_args)),
            _resources(konnectivity_render.CONTAINER, konnectivity.server.resources,
                       default_resources),
            LIVENESS))
    pod_labels = {**spec.pod_metadata.labels, **labels(spec, "control-plane")}
    pod_annotations = {**spec.pod_metadata.annotations,
                       **{f"{CHECKSUM_PREFIX}{k}": v for k, v in sorted(checksums.items())}}
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
    if priority_class:
        pod["priorityClassName"] = priority_class
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


def secure_port(spec: TenantControlPlaneSpec, node_port: int | None) -> int:
    """The port kube-apiserver listens on. It is also the port it advertises (the tenant's
    ``kubernetes`` Service endpoints are ``--advertise-address``:``--secure-port``; there is no
    separate advertised port), so it must be the port clients dial at the advertised address:
    for a NodePort Service whose node port the API server allocated (networkProfile.port not
    given), that node port; otherwise networkProfile.port."""
    if spec.service_type == "NodePort" and spec.port_given is None and node_port:
        return node_port
    return spec.port


def service(spec: TenantControlPlaneSpec, api_target_port: int | None = None) -> dict[str, Any]:
    """The Service in front of kube-apiserver. For NodePort, ``nodePort`` is
    networkProfile.port only when the user set it; otherwise the API server allocates one
    (and keeps it), the endpoint uses the allocated port, and kube-apiserver listens on it
    (``api_target_port``, :func:`secure_port`). :class:`InvalidSpec` for a spec the CRD should
    have refused."""
    check_name(spec)
    check_ports(spec)
    port: dict[str, Any] = {"name": API_PORT_NAME, "protocol": "TCP", "port": spec.port,
                            "targetPort": api_target_port or spec.port}
    if spec.service_type == "NodePort" and spec.port_given is not None:
        port["nodePort"] = spec.port_given
    ports = [port]
    if spec.addons.konnectivity is not None:
        ports.append(konnectivity_render.service_port(spec.addons.konnectivity,
                                                      spec.service_type == "NodePort"))
    ports += [_additional_port(p) for p in spec.additional_ports]
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


def priority_class(name: str = DEFAULT_PRIORITY_CLASS) -> dict[str, Any]:
    """The PriorityClass of the control-plane pods (shipped as deploy/priorityclass.yaml).

    Below system-cluster-critical, above any workload without a class (0): under pressure
    the scheduler places a tenant's control plane first, preempting lower-priority pods
    (PreemptLowerPriority), rather than leaving it Pending behind them."""
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "haku"}},
        "value": PRIORITY,
        "globalDefault": False,
        "preemptionPolicy": "PreemptLowerPriority",
        "description": "Tenant control planes run by Haku (kube-apiserver, "
                       "kube-controller-manager, kube-scheduler, kine).",
    }


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
