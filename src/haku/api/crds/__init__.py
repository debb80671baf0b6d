"""The hand-written CRD manifests, shipped as package data."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

FILES = ("datastores.haku.dev.yaml", "tenantcontrolplanes.haku.dev.yaml")


def load(name: str) -> dict[str, Any]:
    text = resources.files(__name__).joinpath(name).read_text()
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def all_crds() -> list[dict[str, Any]]:
    return [load(f) for f in FILES]
