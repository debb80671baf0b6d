"""The Gateway API's CRDs (sigs.k8s.io/gateway-api, standard channel), fetched from the Go
module proxy like Haku's other upstream artifacts and cached under ``~/.cache/haku``
(``HAKU_CACHE``): ``gateway-api/<version>/standard/*.yaml``.

Haku itself needs only TLSRoute (spec.controlPlane.gateway); the API-tier tests install these
CRDs to show the routes it makes. No Gateway controller comes with them: nothing here makes a
TLSRoute carry traffic.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

from haku.dev.toolchain import GoBuilder, Progress, ToolchainError, cache_root

MODULE = "sigs.k8s.io/gateway-api"
# v1.6.3: TLSRoute served as gateway.networking.k8s.io/v1 in the standard channel (since
# v1.5; v1alpha2 and v1alpha3 kept in the CRD, not served). v1.7.0 needs Go 1.27 to download.
VERSION = "v1.6.3"
CRD_DIR = "config/crd/standard"
# The CRDs a TLSRoute needs to mean something: its parents and their classes, and the grants
# that let a route reach a Service in another namespace.
KINDS = ("gatewayclasses", "gateways", "tlsroutes", "referencegrants")
STAMP = ".complete"


def directory(version: str = VERSION, root: Path | None = None) -> Path:
    """Where the standard channel's CRDs of ``version`` are cached."""
    return (root or cache_root()) / "gateway-api" / version / "standard"


def crd_file(kind: str) -> str:
    return f"gateway.networking.k8s.io_{kind}.yaml"


def extract(zip_path: Path, version: str, into: Path) -> list[Path]:
    """Copy the standard channel's CRD files of the module zip ``zip_path`` into ``into``."""
    prefix = f"{MODULE}@{version}/{CRD_DIR}/"
    into.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with zipfile.ZipFile(zip_path) as z:
        for name in z.namelist():
            if name.startswith(prefix) and name.endswith(".yaml") and "/" not in \
                    name[len(prefix):]:
                target = into / name[len(prefix):]
                target.write_bytes(z.read(name))
                written.append(target)
    if not any(p.name == crd_file("tlsroutes") for p in written):
        raise ToolchainError(f"{zip_path} has no {prefix}{crd_file('tlsroutes')}: not the "
                             f"{MODULE} module zip of {version}?")
    return written


def ensure(version: str = VERSION, root: Path | None = None,
           progress: Progress | None = None) -> Path:
    """The cached CRD directory of ``version``, fetched first if it is not there
    (``go mod download``; the module zip is read, nothing is built)."""
    target = directory(version, root)
    if (target / STAMP).is_file():
        return target
    go = GoBuilder(progress)
    with tempfile.TemporaryDirectory(prefix="haku-gateway-api-") as tmp:
        work = Path(tmp)
        (work / "go.mod").write_text("module haku.dev/fetch\n\ngo 1.26\n")
        info = go.module_info(MODULE, version, work)
        zip_path = Path(info.get("Zip") or "")
        if not zip_path.is_file():
            raise ToolchainError(f"go mod download {MODULE}@{version} gave no module zip")
        staging = target.parent / f".standard-{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        extract(zip_path, version, staging)
        (staging / STAMP).write_text(f"{MODULE}@{version} {info.get('Sum', '')}\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target


def crds(version: str = VERSION, kinds: tuple[str, ...] = KINDS,
         root: Path | None = None, progress: Progress | None = None) -> list[dict[str, Any]]:
    """The CustomResourceDefinitions of ``kinds`` (plural names), as objects to apply."""
    where = ensure(version, root, progress)
    return [yaml.safe_load((where / crd_file(kind)).read_text()) for kind in kinds]
