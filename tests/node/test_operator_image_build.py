"""The operator image, really built: mmdebstrap's Debian rootfs, the dependencies and the wheel.

Needs no cluster (nor the ``node_cluster`` fixture): only mmdebstrap, Debian's mirror, PyPI and
root for ``chroot``. Layers are cached in ``~/.cache/haku/operator-image``; cold, the build takes
about a minute here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import haku
from haku.dev import oci
from haku.dev import operator_image as op

pytestmark = [
    pytest.mark.skipif(shutil.which("mmdebstrap") is None,
                       reason="mmdebstrap is not installed (apt-get install mmdebstrap)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot into the image needs root"),
]

USERSPEC = "--userspec=65532:65532"


@pytest.fixture(scope="module")
def built() -> tuple[Path, str]:
    return op.build_operator_image(printer=lambda line: print(line, flush=True))


@pytest.fixture(scope="module")
def rootfs(built: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("operator-image") / "rootfs"
    root.mkdir()
    op.unpack(built[0], root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _chroot(root: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chroot", USERSPEC, str(root), *command], capture_output=True,
                          text=True, check=False, env=op.environment(), timeout=120)


def test_archive_manifest_and_config(built: tuple[Path, str]) -> None:
    archive, name = built
    assert name == f"ghcr.io/haku-dev/haku:{haku.__version__}"
    summary = oci.read_layered_archive(archive)  # checks every digest
    assert summary.name == name
    assert len(summary.layers) == 3  # rootfs, dependencies, Haku
    assert summary.manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert summary.config["os"] == "linux" and summary.config["architecture"] == "amd64"
    config = summary.config["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["python3", "-m", "haku"]
    assert config["Cmd"] == ["operator", "run"]
    assert {"PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"} <= set(config["Env"])
    assert op.built_image(archive, name).digest == summary.manifest_digest


def test_no_setuid_files_nor_devices(built: tuple[Path, str]) -> None:
    archive, _ = built
    summary = oci.read_layered_archive(archive)
    offenders = []
    with tarfile.open(archive) as outer:
        for digest in summary.layers:
            blob = outer.extractfile("blobs/sha256/" + digest.split(":")[1])
            assert blob is not None
            with tarfile.open(fileobj=blob, mode="r|") as layer:
                for m in layer:
                    if (not m.isdir() and m.mode & 0o6000) or m.ischr() or m.isblk():
                        offenders.append(m.name)
                    assert m.mtime == 0, m.name
    assert offenders == []


def test_runs_as_65532(rootfs: Path) -> None:
    passwd = (rootfs / "etc/passwd").read_text()
    assert "haku:x:65532:65532:" in passwd
    assert "haku:x:65532:" in (rootfs / "etc/group").read_text()
    version = _chroot(rootfs, "python3", "-m", "haku", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"haku {haku.__version__}"
    who = _chroot(rootfs, "python3", "-c", "import os; print(os.getuid(), os.getgid())")
    assert who.stdout.split() == ["65532", "65532"], who.stderr


def test_dependencies_import(rootfs: Path) -> None:
    result = _chroot(rootfs, "python3", "-c",
                     "import haku, lightkube, cryptography, psycopg, grpc, aiomysql, yaml, aetcd;"
                     "import haku.cli, haku.controller.operator, ssl;"
                     "print(ssl.create_default_context().cert_store_stats()['x509_ca'])")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) > 50  # Debian's CA bundle is there


def test_read_only_root_with_tmp(rootfs: Path) -> None:
    """As in the Deployment: read-only root filesystem, an emptyDir (here a tmpfs) on /tmp."""
    script = (
        'set -e; mount --bind "$1" "$1"; mount -o remount,bind,ro "$1"; '
        'mount -t tmpfs -o mode=1777 tmpfs "$1/tmp"; '
        'exec chroot --userspec=65532:65532 "$1" python3 -c "$2"'
    )
    program = (
        "import tempfile, haku.cli, haku.controller.operator\n"
        "with tempfile.NamedTemporaryFile() as f: f.write(b'x')\n"
        "try:\n    open('/etc/haku-probe', 'w')\nexcept OSError as e: print(e.errno)\n"
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(rootfs), program],
        capture_output=True, text=True, check=False, env=op.environment(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("13", "30")  # EACCES as non-root, or EROFS
