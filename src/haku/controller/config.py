"""The operator's settings that reach the reconcile (``haku operator run`` flags)."""

from __future__ import annotations

from dataclasses import dataclass

from haku.render import pki


@dataclass
class OperatorConfig:
    default_datastore: str | None = None
    kine_image: str = "docker.io/rancher/kine:v0.17.5"
    key_algorithm: pki.KeyAlgorithm = pki.KeyAlgorithm.RSA_2048
    node_address: str | None = None  # NodePort endpoint; default: a node's InternalIP
    ready_resync: float = 300.0
    watch_tenants: bool = True  # repair Haku's objects in a tenant as soon as they drift
    # PriorityClass of the tenant control-plane pods (shipped in deploy/); "" for none.
    priority_class: str = "haku-control-plane"
    # A reconcile that has not finished after this many seconds stops where it is.
    reconcile_deadline: float = 60.0
    # Reconciles that may change one DataStore at once.
    datastore_concurrency: int = 4
    # How long a provisioned tenant is trusted without asking the DataStore (a cheap
    # read-only check) whether its user and space are still there.
    verify_every: float = 600.0
    # A NetworkPolicy around every tenant control plane (haku.render.netpol); off only for a
    # cluster admin who isolates them by other means.
    tenant_network_policy: bool = True
    # Where tenants' nodes live (egress for logs/exec/webhooks); empty: every address outside
    # the admin cluster's ranges.
    tenant_networks: tuple[str, ...] = ()
    # The admin cluster's ranges, besides those the API tells (discover_admin_ranges).
    admin_service_cidrs: tuple[str, ...] = ()
    admin_pod_cidrs: tuple[str, ...] = ()
    admin_node_cidrs: tuple[str, ...] = ()
    discover_admin_ranges: bool = True
