"""The TenantControlPlane's reconcile steps, in order (see haku.controller.pipeline).

=================  ======================  =====================================================
step               Condition               what it does / undoes on delete
=================  ======================  =====================================================
finalizer          —                       sets Haku's finalizer / removes it, last
network            NetworkIsolated         refuses ranges that overlap the admin cluster's;
                                           the NetworkPolicy around the control-plane pods
datastore          DataStoreReady          the tenant's user and space, owned by its uid / drops
                                           them once the pods are gone (or abandons them when
                                           the annotation says so)
restore            DataRestored            a tenant made by `haku restore` waits here until its
                                           data is loaded (informational; absent otherwise)
service            ControlPlaneAvailable   the Service and the endpoint derived from it
certificates       CertificatesReady       kubeadm's certificates and the kubeconfigs
deployment         ControlPlaneAvailable   the control-plane Deployment / stops its pods first
ingress            ControlPlaneAvailable   the Ingress, when the spec asks for one
gateway            ControlPlaneAvailable   the TLSRoute(s) of spec.controlPlane.gateway and
                                           whether the Gateway accepted them / deleted when
                                           the spec drops it
apiserver          APIServerReady          /readyz through the Service's endpoint
bootstrap          TenantBootstrapped      kubeadm's join objects and the addons, in the tenant
migration          Migrating               a move to the DataStore spec.dataStore now names:
                                           freeze, copy, verify, switch, unfreeze, drop the
                                           old space (informational; haku.render.migration)
write-permissions  WriteLimited            spec.writePermissions as a policy in the tenant / lifts
                                           it (informational; absent when there is none)
konnectivity       KonnectivityConnected   whether the Konnectivity agents are connected
                                           (informational: not part of Ready; absent when the
                                           addon is off)
ca-rotation        —                       a CA rotation's phases (status.certificates.caRotation)
version            —                       status.kubernetesResources.version and an upgrade's
                                           phases (control plane, then in-tenant objects)
=================  ======================  =====================================================
"""

from __future__ import annotations

from haku.controller.pipeline import Step
from haku.controller.steps.apiserver import APIServerStep
from haku.controller.steps.bootstrap import BootstrapStep
from haku.controller.steps.ca_rotation import CARotationStep
from haku.controller.steps.certificates import CertificatesStep
from haku.controller.steps.datastore import DataStoreStep
from haku.controller.steps.deployment import DeploymentStep
from haku.controller.steps.deps import Deps
from haku.controller.steps.exposure import IngressStep, ServiceStep
from haku.controller.steps.finalizer import FinalizerStep
from haku.controller.steps.gateway import GatewayStep
from haku.controller.steps.konnectivity import KonnectivityStep
from haku.controller.steps.migration import MigrationStep
from haku.controller.steps.network import NetworkStep
from haku.controller.steps.restore import RestoreStep
from haku.controller.steps.version import VersionStep
from haku.controller.steps.write_permissions import WritePermissionsStep

__all__ = ["STEPS", "Deps", "pipeline"]

# The steps of a TenantControlPlane, in the order they apply.
STEPS = (FinalizerStep, NetworkStep, DataStoreStep, RestoreStep, ServiceStep, CertificatesStep,
         DeploymentStep, IngressStep, GatewayStep, APIServerStep, BootstrapStep, MigrationStep,
         WritePermissionsStep, KonnectivityStep, CARotationStep, VersionStep)


def pipeline(deps: Deps) -> list[Step]:
    return [step(deps) for step in STEPS]
