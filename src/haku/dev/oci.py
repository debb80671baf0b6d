"""Write single-layer OCI image archives without a registry or a daemon.

The archive is an OCI image layout in a tar (``oci-layout``, ``index.json``, ``blobs/sha256``)
that ``ctr images import`` accepts. The index carries ``io.containerd.image.name`` so the
image is imported under its upstream name (``registry.k8s.io/kube-apiserver:v1.37.2``), and
manifests that name it run unchanged with ``imagePullPolicy: IfNotPresent``.

Archives are reproducible: entries are sorted, owned by root and dated at the epoch, so the
same inputs always give the same manifest digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

DEFAULT_ENV = ("PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin",)
BASE_DIRECTORIES = ("dev", "etc", "proc", "sys", "tmp", "var", "var/run")


@dataclass(frozen=True)
class LayerFile:
    """A file from the host (``source``) or from memory (``data``) placed at ``path``."""

    path: str
    source: Path | None = None
    data: bytes | None = None
    mode: int = 0o755

    def __post_init__(self) -> None:
        if (self.source is None) == (self.data is None):
            raise ValueError(f"{self.path}: give exactly one of source and data")
        if not PurePosixPath(self.path).is_absolute():
            raise ValueError(f"{self.path}: image paths must be absolute")


@dataclass(frozen=True)
class ImageSpec:
    name: str
    entrypoint: tuple[str, ...]
    files: tuple[LayerFile, ...]
    cmd: tuple[str, ...] = ()
    symlinks: tuple[tuple[str, str], ...] = ()  # (path in image, target)
    env: tuple[str, ...] = DEFAULT_ENV
    user: str = ""
    workdir: str = "/"
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if ":" not in self.name.rsplit("/", 1)[-1]:
            raise ValueError(f"image name {self.name!r} needs an explicit tag")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tarinfo(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _parents(path: str) -> list[str]:
    parts = PurePosixPath(path).relative_to("/").parts[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def write_layer(spec: ImageSpec, out: IO[bytes]) -> None:
    """The image's only layer, an uncompressed tar, so its digest is also its diff ID."""
    directories: set[str] = set(BASE_DIRECTORIES)
    for f in spec.files:
        directories.update(_parents(f.path))
    for link, _ in spec.symlinks:
        directories.update(_parents(link))
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(directories):
            tar.addfile(_tarinfo(d, tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755))
        for f in sorted(spec.files, key=lambda f: f.path):
            info = _tarinfo(f.path.lstrip("/"), mode=f.mode)
            if f.source is not None:
                info.size = f.source.stat().st_size
                with f.source.open("rb") as src:
                    tar.addfile(info, src)
            else:
                assert f.data is not None
                info.size = len(f.data)
                tar.addfile(info, io.BytesIO(f.data))
        for link, target in sorted(spec.symlinks):
            info = _tarinfo(link.lstrip("/"), tarfile.SYMTYPE, 0o777)
            info.linkname = target
            tar.addfile(info)


def image_config(spec: ImageSpec, layer_digest: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "Entrypoint": list(spec.entrypoint),
        "Env": list(spec.env),
        "WorkingDir": spec.workdir,
    }
    if spec.cmd:
        config["Cmd"] = list(spec.cmd)
    if spec.user:
        config["User"] = spec.user
    if spec.labels:
        config["Labels"] = dict(spec.labels)
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def write_image(spec: ImageSpec, out: Path) -> str:
    """Write ``spec`` as an OCI archive at ``out``; return the manifest digest."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".oci-") as tmp:
        layer_path = Path(tmp) / "layer.tar"
        with layer_path.open("wb") as raw:
            write_layer(spec, raw)
        layer = layer_of(layer_path)
        config = image_config(spec, layer.digest)
        return _write_archive(spec.name, config, [layer], out, Path(tmp))


# ---------------------------------------------------------------------------------------------
# Several layers, each an uncompressed tar already on disk (the operator image)


@dataclass(frozen=True)
class Layer:
    """An uncompressed layer tar on disk; its digest is also its diff ID."""

    path: Path
    digest: str
    size: int


def layer_of(path: Path) -> Layer:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return Layer(path, "sha256:" + sha.hexdigest(), path.stat().st_size)


def layered_config(config: dict[str, Any], layers: Sequence[Layer]) -> dict[str, Any]:
    """The image configuration document for the runtime ``config`` over ``layers``."""
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
    }


def write_layered_image(
    name: str, config: dict[str, Any], layers: Sequence[Layer], out: Path
) -> str:
    """Write an OCI archive of ``layers`` (bottom first) with the runtime ``config``
    (``Entrypoint``, ``Env``, ``User``, ...) at ``out``; return the manifest digest."""
    if ":" not in name.rsplit("/", 1)[-1]:
        raise ValueError(f"image name {name!r} needs an explicit tag")
    if not layers:
        raise ValueError("an image needs at least one layer")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".oci-") as tmp:
        return _write_archive(name, layered_config(config, layers), layers, out, Path(tmp))


def _write_archive(
    name: str, config_doc: dict[str, Any], layers: Sequence[Layer], out: Path, tmp: Path
) -> str:
    config = _json(config_doc)
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer.digest,
                    "size": layer.size,
                }
                for layer in layers
            ],
        }
    )
    manifest_digest = _digest(manifest)
    tag = name.rsplit(":", 1)[1]
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        }
    )
    partial = tmp / "image.tar"
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes) -> None:
            info = _tarinfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        add("blobs/sha256/" + manifest_digest.split(":")[1], manifest)
        add("blobs/sha256/" + _digest(config).split(":")[1], config)
        written: set[str] = set()
        for layer in layers:
            if layer.digest in written:  # the same layer twice is one blob
                continue
            written.add(layer.digest)
            info = _tarinfo("blobs/sha256/" + layer.digest.split(":")[1])
            info.size = layer.size
            with layer.path.open("rb") as layer_in:
                tar.addfile(info, layer_in)
    shutil.move(str(partial), str(out))
    return manifest_digest


@dataclass(frozen=True)
class ArchiveSummary:
    name: str
    manifest_digest: str
    config: dict[str, Any]
    layer_members: dict[str, tarfile.TarInfo]


def read_archive(path: Path) -> ArchiveSummary:
    """Read an archive back and check every digest: used by tests and by ``haku dev status``."""
    with tarfile.open(path) as tar:

        def blob(digest: str) -> bytes:
            member = tar.extractfile("blobs/sha256/" + digest.split(":")[1])
            assert member is not None
            data = member.read()
            if _digest(data) != digest:
                raise ValueError(f"{path}: blob {digest} does not match its digest")
            return data

        index_file = tar.extractfile("index.json")
        assert index_file is not None
        index = json.loads(index_file.read())
        entry = index["manifests"][0]
        manifest = json.loads(blob(entry["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        layer = blob(manifest["layers"][0]["digest"])
        if config["rootfs"]["diff_ids"] != [manifest["layers"][0]["digest"]]:
            raise ValueError(f"{path}: diff ID does not match the uncompressed layer")
        with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
            members = {m.name: m for m in inner.getmembers()}
        return ArchiveSummary(
            name=entry["annotations"]["io.containerd.image.name"],
            manifest_digest=entry["digest"],
            config=config,
            layer_members=members,
        )



@dataclass(frozen=True)
class LayeredSummary:
    name: str
    manifest_digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    layers: tuple[str, ...]  # layer digests, bottom first


def read_layered_archive(path: Path) -> LayeredSummary:
    """Read an archive of any number of layers back, checking every blob's digest (layers
    streamed, not held in memory)."""
    with tarfile.open(path) as tar:

        def verify(digest: str, keep: bool = True) -> bytes:
            member = tar.extractfile("blobs/sha256/" + digest.split(":")[1])
            assert member is not None
            sha, kept = hashlib.sha256(), bytearray()
            for chunk in iter(lambda: member.read(1 << 20), b""):
                sha.update(chunk)
                if keep:
                    kept += chunk
            if "sha256:" + sha.hexdigest() != digest:
                raise ValueError(f"{path}: blob {digest} does not match its digest")
            return bytes(kept)

        index_file = tar.extractfile("index.json")
        assert index_file is not None
        entry = json.loads(index_file.read())["manifests"][0]
        manifest = json.loads(verify(entry["digest"]))
        config = json.loads(verify(manifest["config"]["digest"]))
        layers = tuple(layer["digest"] for layer in manifest["layers"])
        for digest in set(layers):
            verify(digest, keep=False)
        if config["rootfs"]["diff_ids"] != list(layers):
            raise ValueError(f"{path}: diff IDs do not match the uncompressed layers")
        return LayeredSummary(
            name=entry["annotations"]["io.containerd.image.name"],
            manifest_digest=entry["digest"],
            manifest=manifest,
            config=config,
            layers=layers,
        )
