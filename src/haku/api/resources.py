"""lightkube resource classes for Haku's CRDs and the names every layer shares (the API
group, the field manager). Below render, datastore, tenant and controller: imports nothing of
Haku's."""

from __future__ import annotations

from lightkube.generic_resource import create_global_resource, create_namespaced_resource

GROUP, VERSION = "haku.dev", "v1alpha1"
FIELD_MANAGER = "haku"

DataStore = create_global_resource(GROUP, VERSION, "DataStore", "datastores")
TenantControlPlane = create_namespaced_resource(GROUP, VERSION, "TenantControlPlane",
                                                "tenantcontrolplanes")
