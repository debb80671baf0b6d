"""Tenant passwords live in a Secret and change only when asked."""

from __future__ import annotations

import base64

from lightkube import AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Secret

from haku.controller.credentials import PASSWORD_KEY, ensure_password
from haku.dev.cluster import DevCluster


async def test_password_is_made_once_kept_and_rotated_on_request(
    api_cluster: DevCluster,
) -> None:
    c = AsyncClient(KubeConfig.from_file(api_cluster.layout.admin_kubeconfig))
    try:
        first = await ensure_password(c, "default", "tenant-x-datastore",
                                      labels={"haku.dev/tenant": "x"})
        assert len(first) == 48 and int(first, 16) >= 0
        assert await ensure_password(c, "default", "tenant-x-datastore") == first
        stored = await c.get(Secret, "tenant-x-datastore", namespace="default")
        assert base64.b64decode(stored.data[PASSWORD_KEY]).decode() == first
        assert stored.metadata.labels == {"haku.dev/tenant": "x"}
        managers = {m.manager for m in stored.metadata.managedFields}
        assert managers == {"haku"}

        rotated = await ensure_password(c, "default", "tenant-x-datastore", rotate=True)
        assert rotated != first
        assert await ensure_password(c, "default", "tenant-x-datastore") == rotated

        # An operator may set its own password in the Secret; Haku takes it as it is.
        chosen = base64.b64encode(b"chosen-by-a-human").decode()
        await c.apply(from_dict({"apiVersion": "v1", "kind": "Secret",
                                 "metadata": {"name": "tenant-x-datastore",
                                              "namespace": "default"},
                                 "data": {PASSWORD_KEY: chosen}}),
                      field_manager="human", force=True)
        assert await ensure_password(c, "default", "tenant-x-datastore") == "chosen-by-a-human"
    finally:
        await c.delete(Secret, "tenant-x-datastore", namespace="default")
        await c.close()
