"""A bootstrap that fails halfway still tells what the tenant holds: the addons applied
before the failure are recorded installed, an unfinished removal stays installed (so it is
retried)."""

from __future__ import annotations

from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from haku.tenant import bootstrap


class Tenant:
    """An API that accepts every apply but those of ``refused`` kinds/names."""

    def __init__(self, refuse: str) -> None:
        self.refuse, self.applied = refuse, []

    async def apply(self, obj: Any, force: bool = False) -> None:
        name = obj.metadata.name
        if name == self.refuse:
            response: Any = type("R", (), {"json": lambda self: {}, "status_code": 422})()
            raise ApiError(response=response, status=Status(code=422, message="refused"))
        self.applied.append(name)


def obj(kind: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind,
            "metadata": {"name": name, "namespace": "kube-system"}}


async def test_addons_done_before_a_failure_are_kept_as_installed() -> None:
    groups = {bootstrap.CORE: [obj("ConfigMap", "kubeadm-config")],
              "kube-proxy": [obj("ConfigMap", "kube-proxy")],
              "coredns": [obj("ConfigMap", "coredns")]}
    installed: dict[str, bool] = {}
    with pytest.raises(bootstrap.BootstrapFailed):
        await bootstrap.reconcile(Tenant(refuse="coredns"), groups, installed)  # type: ignore[arg-type]
    assert installed == {"kube-proxy": True}  # applied; CoreDNS never was
    assert bootstrap.status_from_installed(installed) == {"kubeProxy": {"enabled": True}}
