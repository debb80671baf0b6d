"""The container images of the local cluster, written by Haku and imported into containerd.

Each image carries its upstream name (``registry.k8s.io/kube-apiserver:v1.37.2``,
``docker.io/rancher/kine:v0.17.5``, ``registry.k8s.io/pause:3.10.2``), so the manifests Haku
renders for production run here unchanged with ``imagePullPolicy: IfNotPresent``.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from haku.dev import oci
from haku.dev.versions import BUSYBOX_IMAGE, Versions, etcd_image_tag

BUSYBOX_APPLETS = (
    "sh", "ls", "cat", "echo", "sleep", "ps", "id", "hostname", "ip", "wget", "nslookup",
    "mount", "env", "grep", "head", "tail", "true", "false", "nc", "date", "mkdir", "rm", "test",
)


def control_plane_image(name: str, binary: Path, tag: str) -> oci.ImageSpec:
    path = f"/usr/local/bin/{name}"
    return oci.ImageSpec(
        name=f"registry.k8s.io/{name}:{tag}",
        entrypoint=(path,),
        files=(oci.LayerFile(path, source=binary),),
    )


def image_specs(
    bins: dict[str, Path], versions: Versions, pause_binary: Path
) -> list[oci.ImageSpec]:
    """Every image the local cluster imports. ``bins`` maps component -> cache directory."""
    k8s = bins["kubernetes"]
    specs = [
        control_plane_image(name, k8s / name, versions.kubernetes)
        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
    ]
    specs.append(
        oci.ImageSpec(
            name=f"registry.k8s.io/etcd:{etcd_image_tag(versions.etcd)}",
            entrypoint=("/usr/local/bin/etcd",),
            files=(
                oci.LayerFile("/usr/local/bin/etcd", source=bins["etcd"] / "etcd"),
                oci.LayerFile("/usr/local/bin/etcdctl", source=bins["etcd"] / "etcdctl"),
            ),
        )
    )
    specs.append(
        oci.ImageSpec(
            name=f"docker.io/rancher/kine:{versions.kine}",
            entrypoint=("/bin/kine",),
            files=(oci.LayerFile("/bin/kine", source=bins["kine"] / "kine"),),
        )
    )
    specs.append(
        oci.ImageSpec(
            name=f"registry.k8s.io/pause:{versions.pause}",
            entrypoint=("/pause",),
            files=(oci.LayerFile("/pause", source=pause_binary),),
            user="65535:65535",
        )
    )
    specs.append(
        oci.ImageSpec(
            name=BUSYBOX_IMAGE,
            entrypoint=(),
            cmd=("sh",),
            files=(oci.LayerFile("/bin/busybox", source=Path("/bin/busybox")),),
            symlinks=tuple((f"/bin/{a}", "busybox") for a in BUSYBOX_APPLETS),
        )
    )
    return specs


def build_pause(cache: Path) -> Path:
    """Compile the static pause binary once per source revision."""
    source = resources.files("haku.dev").joinpath("pause.c").read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:12]
    out = cache / "bin" / f"pause-{digest}" / "pause"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.parent / "pause.c"
    src.write_bytes(source)
    subprocess.run(
        ["gcc", "-static", "-Os", "-s", "-o", str(out.with_suffix(".tmp")), str(src)],
        check=True, capture_output=True,
    )
    out.with_suffix(".tmp").rename(out)
    return out


def _spec_key(spec: oci.ImageSpec) -> str:
    """Changes whenever an input of the image changes (its sources' size and mtime included)."""
    parts = [spec.name, json.dumps(oci.image_config(spec, ""), sort_keys=True)]
    for f in spec.files:
        if f.source is not None:
            st = f.source.stat()
            parts.append(f"{f.path}:{f.source}:{st.st_size}:{st.st_mtime_ns}:{f.mode}")
        else:
            parts.append(f"{f.path}:{hashlib.sha256(f.data or b'').hexdigest()}:{f.mode}")
    parts += [f"{a}->{b}" for a, b in spec.symlinks]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class BuiltImage:
    name: str
    archive: Path
    digest: str


def archive_name(image: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", image) + ".tar"


def build_archives(specs: list[oci.ImageSpec], cache: Path) -> list[BuiltImage]:
    """Write each image archive into ``cache/images`` unless an up-to-date one is there."""
    directory = cache / "images"
    directory.mkdir(parents=True, exist_ok=True)
    built = []
    for spec in specs:
        archive = directory / archive_name(spec.name)
        meta = archive.with_suffix(".json")
        key = _spec_key(spec)
        try:
            recorded = json.loads(meta.read_text())
        except (OSError, ValueError):
            recorded = {}
        if recorded.get("key") == key and archive.is_file():
            built.append(BuiltImage(spec.name, archive, recorded["digest"]))
            continue
        digest = oci.write_image(spec, archive)
        meta.write_text(json.dumps({"key": key, "digest": digest, "name": spec.name}) + "\n")
        built.append(BuiltImage(spec.name, archive, digest))
    return built


def parse_ctr_images(text: str) -> dict[str, str]:
    """``ctr images ls`` output: image reference -> manifest (or index) digest."""
    images = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[2].startswith("sha256:"):
            images[fields[0]] = fields[2]
    return images


def import_images(images: list[BuiltImage], socket: Path) -> list[str]:
    """Import each archive into containerd's k8s.io namespace unless it is there already."""
    ctr = ["ctr", "--address", str(socket), "--namespace", "k8s.io"]
    listed = subprocess.run([*ctr, "images", "ls"], capture_output=True, text=True, check=True)
    present = parse_ctr_images(listed.stdout)
    imported = []
    for image in images:
        if present.get(image.name) == image.digest:
            continue
        result = subprocess.run(
            [*ctr, "images", "import", str(image.archive)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"importing {image.name} failed: {result.stderr.strip()}")
        imported.append(image.name)
    return imported
