"""The operator's container image, built without a registry or a Docker daemon.

Three layers, each cached in ``~/.cache/haku/operator-image`` by what it is made of:

1. ``rootfs``: Debian bookworm's essential packages plus ``python3`` (3.11) and
   ``ca-certificates``, made by ``mmdebstrap`` (no apt, docs, man pages or locales), with the
   standard library's bytecode rebuilt as unchecked-hash ``.pyc`` (valid whatever the files'
   dates) and the user ``haku`` (65532:65532) added. Keyed by the mmdebstrap command.
2. ``deps``: Haku's runtime dependencies at the versions installed beside this Haku, installed by
   the host's CPython 3.11 (ABI-compatible with bookworm's) into
   ``/usr/local/lib/python3.11/dist-packages``, precompiled. Keyed by that pinned set.
3. ``haku``: the project's wheel, installed the same way. Keyed by the project's sources.

The image (``ghcr.io/haku-dev/haku:<version>``) runs ``python3 -m haku operator run`` as
65532:65532 and writes nothing outside ``/tmp``, so it runs with a read-only root filesystem.
Import it into a dev cluster with ``images.import_images([built_image(*build_operator_image())],
socket)``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import haku
from haku.dev import layers, oci, packages, toolchain
from haku.dev.images import BuiltImage, archive_name
from haku.dev.versions import operator_image_name

Printer = Callable[[str], None]

SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
BASE_PACKAGES = ("ca-certificates", "libstdc++6", "python3")  # grpcio and protobuf need libstdc++
# Sets up merged /usr and installs usr-is-merged before the essential packages, which would
# otherwise pull in usrmerge and with it perl (init-system-helpers needs one of the two).
MERGED_USR_HOOKS = "/usr/share/mmdebstrap/hooks/merged-usr"
DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)
CUSTOMIZE_HOOKS = (
    'chroot "$1" python3 -m compileall -q -f -j0 --invalidation-mode unchecked-hash'
    " /usr/lib/python3.11 /usr/lib/python3/dist-packages",
    'rm -rf "$1"/var/log/* "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old',
)
PYTHON_VERSION = (3, 11)  # bookworm's python3
SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"
UID = GID = 65532
USER_NAME = "haku"
PASSWD_LINE = f"{USER_NAME}:x:{UID}:{GID}:{USER_NAME}:/nonexistent:/usr/sbin/nologin"
GROUP_LINE = f"{USER_NAME}:x:{GID}:"
ENTRYPOINT = ("python3", "-m", "haku")
CMD = ("operator", "run")
ENV = (
    *oci.DEFAULT_ENV,
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
)
LAYOUT = "1"  # bump when layer contents change for the same inputs


class OperatorImageError(toolchain.ToolchainError):
    """The operator image cannot be built here; the message says why."""


# ---------------------------------------------------------------------------------------------
# Pure parts: commands, keys, configuration


def mmdebstrap_command(out: Path) -> list[str]:
    command = [
        "mmdebstrap", "--variant=essential", f"--include={','.join(BASE_PACKAGES)}",
        f"--hook-dir={MERGED_USR_HOOKS}", "--aptopt=Acquire::Languages \"none\"",
        *(f"--dpkgopt={o}" for o in DPKG_OPTIONS),
        *(f"--customize-hook={h}" for h in CUSTOMIZE_HOOKS),
        "--format=tar", SUITE, str(out), *MIRRORS,
    ]
    return command


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def base_key() -> str:
    return _key(LAYOUT, mmdebstrap_command(Path("OUT")), PASSWD_LINE, GROUP_LINE)


def deps_key(pins: Sequence[str], python: tuple[int, int] = PYTHON_VERSION) -> str:
    return _key(LAYOUT, sorted(pins), list(python), sys.platform)


def add_line(text: bytes, line: str) -> bytes:
    """``text`` (an ``/etc/passwd`` or ``/etc/group``) with ``line``, unless its name is in."""
    name = line.split(":", 1)[0] + ":"
    lines = text.decode().splitlines()
    if any(existing.startswith(name) for existing in lines):
        return text
    return ("\n".join([*lines, line]) + "\n").encode()


def runtime_config(version: str = haku.__version__) -> dict[str, Any]:
    """The image's ``config``: what runs, as whom, with what environment."""
    return {
        "Entrypoint": list(ENTRYPOINT),
        "Cmd": list(CMD),
        "Env": list(ENV),
        "User": f"{UID}:{GID}",
        "WorkingDir": "/",
        "Labels": {
            "org.opencontainers.image.title": "haku",
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.licenses": "Apache-2.0",
        },
    }


def project_dependencies(pyproject: Path) -> list[str]:
    deps: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return deps


def pinned_closure(requirements: Iterable[str]) -> list[str]:
    """``name==version`` for ``requirements`` and everything they need, at the versions
    installed here (what Haku is tested with). Raises if one is missing or out of range."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, frozenset[str]]] = [(r, frozenset()) for r in requirements]
    while todo:
        text, context = todo.pop()
        req = Requirement(text)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in context or {""}):
            continue
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise OperatorImageError(
                f"{req.name} is not installed here: install the project (`make venv`)") from None
        if not req.specifier.contains(dist.version, prereleases=True):
            raise OperatorImageError(f"{req.name} {dist.version} is installed, {text} is needed")
        pins[name] = dist.version
        todo += [(r, frozenset(req.extras)) for r in dist.requires or []]
    return [f"{n}=={v}" for n, v in sorted(pins.items())]


def source_key(project: Path) -> str:
    """Changes with any file the wheel is built from."""
    sha = hashlib.sha256()
    files = [project / "pyproject.toml", project / "README.md",
             *sorted((project / "src").rglob("*"))]
    for path in files:
        if path.is_file() and "__pycache__" not in path.parts:
            sha.update(str(path.relative_to(project)).encode() + b"\0" + path.read_bytes())
    return _key(LAYOUT, sha.hexdigest(), list(PYTHON_VERSION))


def find_project() -> Path:
    """The source tree this Haku runs from (an editable install, as ``make venv`` makes)."""
    root = Path(haku.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise OperatorImageError(f"no pyproject.toml at {root}: run from a source checkout")
    return root


# ---------------------------------------------------------------------------------------------
# Cached layers


@dataclass(frozen=True)
class CachedLayer:
    layer: oci.Layer
    file_bytes: int
    cached: bool


def _cached(directory: Path, kind: str, key: str) -> CachedLayer | None:
    path = directory / f"{kind}-{key}.tar"
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        if path.stat().st_size != meta["size"]:
            return None
    except (OSError, ValueError, KeyError):
        return None
    return CachedLayer(oci.Layer(path, meta["digest"], meta["size"]), meta["file_bytes"], True)


def _store(directory: Path, kind: str, key: str,
           write: Callable[[Path], layers.LayerStats]) -> CachedLayer:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}-{key}.tar"
    partial = path.with_suffix(".partial")
    stats = write(partial)
    partial.rename(path)
    layer = oci.layer_of(path)
    path.with_suffix(".json").write_text(json.dumps(
        {"digest": layer.digest, "size": layer.size, "file_bytes": stats.file_bytes,
         "entries": stats.entries}) + "\n")
    for old in directory.glob(f"{kind}-*.tar"):  # one of each kind is enough
        if old != path:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
    return CachedLayer(layer, stats.file_bytes, False)


def _run(args: list[str], what: str, cwd: Path | None = None) -> None:
    result = subprocess.run(args, capture_output=True, text=True, check=False, cwd=cwd)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-20:])
        raise OperatorImageError(f"{what} failed (exit {result.returncode}):\n{tail}")


def _python() -> list[str]:
    if sys.version_info[:2] != PYTHON_VERSION:
        raise OperatorImageError(
            f"installing into the image needs CPython {'.'.join(map(str, PYTHON_VERSION))} "
            f"(bookworm's python3), not {sys.version.split()[0]}")
    return [sys.executable]


def _rootfs_layer(directory: Path) -> CachedLayer:
    key = base_key()
    found = _cached(directory, "rootfs", key)
    if found:
        return found
    if shutil.which("mmdebstrap") is None:
        raise packages.MissingPackages(
            [r for r in packages.REQUIREMENTS if r.package == "mmdebstrap"])

    def write(out: Path) -> layers.LayerStats:
        with tempfile.TemporaryDirectory(dir=directory, prefix=".rootfs-") as tmp:
            tarball = Path(tmp) / "rootfs.tar"
            _run(mmdebstrap_command(tarball), "mmdebstrap")
            rewrite = {"etc/passwd": lambda b: add_line(b, PASSWD_LINE),
                       "etc/group": lambda b: add_line(b, GROUP_LINE)}
            with out.open("wb") as f:
                return layers.layer_from_tarball(tarball, f, rewrite)

    return _store(directory, "rootfs", key, write)


def _pip_layer(directory: Path, kind: str, key: str, install: list[str]) -> CachedLayer:
    """A layer of what ``pip install <install>`` puts in the image's dist-packages."""
    found = _cached(directory, kind, key)
    if found:
        return found
    python = _python()

    def write(out: Path) -> layers.LayerStats:
        with tempfile.TemporaryDirectory(dir=directory, prefix=f".{kind}-") as tmp:
            root = Path(tmp) / "root"
            site = root / SITE_PACKAGES
            _run([*python, "-m", "pip", "install", "--quiet", "--no-compile",
                  "--no-warn-script-location", "--disable-pip-version-check",
                  "--target", str(site), *install], f"pip install ({kind})")
            shutil.rmtree(site / "bin", ignore_errors=True)  # scripts for the host's python
            _run([*python, "-m", "compileall", "-q", "-j0", "--invalidation-mode",
                  "unchecked-hash", "-s", str(root), "-p", "/", str(site)],
                 f"compileall ({kind})")
            with out.open("wb") as f:
                return layers.layer_from_tree(root, f)

    return _store(directory, kind, key, write)


def _haku_layer(directory: Path, project: Path) -> CachedLayer:
    key = source_key(project)
    found = _cached(directory, "haku", key)
    if found:
        return found
    with tempfile.TemporaryDirectory(dir=directory, prefix=".wheel-") as tmp:
        _run([*_python(), "-m", "pip", "wheel", "--quiet", "--no-deps",
              "--disable-pip-version-check", "-w", tmp, str(project)], "pip wheel")
        wheels = sorted(Path(tmp).glob("haku-*.whl"))
        if len(wheels) != 1:
            raise OperatorImageError(f"pip wheel made {wheels}, not one haku wheel")
        return _pip_layer(directory, "haku", key, ["--no-deps", str(wheels[0])])


# ---------------------------------------------------------------------------------------------
# The image


def _timed(printer: Printer, label: str, step: Callable[[], CachedLayer]) -> CachedLayer:
    start = time.monotonic()
    result = step()
    note = "cached" if result.cached else f"{result.layer.size / 1e6:.1f} MB"
    printer(f"  {label:<40} {note:>9} {time.monotonic() - start:6.1f}s")
    return result


def build_operator_image(
    cache: Path | None = None, printer: Printer = print, project: Path | None = None
) -> tuple[Path, str]:
    """Build (or reuse the cached layers of) the operator image; return its OCI archive and
    name. The archive goes to ``<cache>/images`` with the other images."""
    cache = cache or toolchain.cache_root()
    project = project or find_project()
    directory = cache / "operator-image"
    directory.mkdir(parents=True, exist_ok=True)
    name = operator_image_name()
    printer(f"operator image {name}")
    pins = pinned_closure(project_dependencies(project / "pyproject.toml"))
    base = _timed(printer, f"rootfs: Debian {SUITE} (mmdebstrap)",
                  lambda: _rootfs_layer(directory))
    deps = _timed(printer, f"deps: {len(pins)} Python packages",
                  lambda: _pip_layer(directory, "deps", deps_key(pins), pins))
    wheel = _timed(printer, f"haku: wheel of {project}",
                   lambda: _haku_layer(directory, project))
    start = time.monotonic()
    archive = cache / "images" / archive_name(name)
    parts = [base.layer, deps.layer, wheel.layer]
    digest = oci.write_layered_image(name, runtime_config(), parts, archive)
    archive.with_suffix(".json").write_text(json.dumps(
        {"key": digest, "digest": digest, "name": name,
         "rootfs_bytes": sum(p.file_bytes for p in (base, deps, wheel))}) + "\n")
    printer(f"  {'archive: ' + archive.name:<40} {archive.stat().st_size / 1e6:>6.1f} MB "
            f"{time.monotonic() - start:6.1f}s")
    return archive, name


def built_image(archive: Path, name: str) -> BuiltImage:
    """What :func:`haku.dev.images.import_images` takes, from ``build_operator_image``'s
    result."""
    meta = json.loads(archive.with_suffix(".json").read_text())
    if meta.get("name") != name:
        raise OperatorImageError(f"{archive} holds {meta.get('name')}, not {name}")
    return BuiltImage(name, archive, meta["digest"])


def unpack(archive: Path, dest: Path) -> None:
    """Apply the archive's layers in order under ``dest`` (for tests and the benchmark; the
    layers carry no whiteouts). Needs root to keep owners."""
    summary = oci.read_layered_archive(archive)
    with tarfile.open(archive) as outer:
        for digest in summary.layers:
            blob = outer.extractfile("blobs/sha256/" + digest.split(":")[1])
            assert blob is not None
            with tarfile.open(fileobj=blob, mode="r|") as layer:
                layer.extractall(dest, numeric_owner=True,  # noqa: S202 (our own archive)
                                 filter="fully_trusted")


def rootfs_bytes(archive: Path) -> int:
    """The uncompressed size of the image's files, as recorded when it was built."""
    value: int = json.loads(archive.with_suffix(".json").read_text())["rootfs_bytes"]
    return value


def environment() -> dict[str, str]:
    """The image's environment, as a dict (for running its rootfs under ``chroot``)."""
    return dict(e.split("=", 1) for e in ENV)


__all__ = [
    "OperatorImageError", "build_operator_image", "built_image", "operator_image_name",
    "runtime_config", "unpack",
]
