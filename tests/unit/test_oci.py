import io
import json
import tarfile
from pathlib import Path

import pytest

from haku.dev import oci


def _spec(tmp_path: Path) -> oci.ImageSpec:
    binary = tmp_path / "tool"
    binary.write_bytes(b"\x7fELF pretend binary")
    return oci.ImageSpec(
        name="registry.k8s.io/kube-apiserver:v1.37.2",
        entrypoint=("/usr/local/bin/kube-apiserver",),
        files=(
            oci.LayerFile("/usr/local/bin/kube-apiserver", source=binary),
            oci.LayerFile("/etc/motd", data=b"hello\n", mode=0o644),
        ),
        symlinks=(("/bin/sh", "busybox"),),
        user="65535:65535",
    )


def test_archive_round_trips_with_digests_checked(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    digest = oci.write_image(spec, tmp_path / "img.tar")
    summary = oci.read_archive(tmp_path / "img.tar")
    assert summary.name == "registry.k8s.io/kube-apiserver:v1.37.2"
    assert summary.manifest_digest == digest
    assert summary.config["config"]["Entrypoint"] == ["/usr/local/bin/kube-apiserver"]
    assert summary.config["config"]["User"] == "65535:65535"
    members = summary.layer_members
    binary = members["usr/local/bin/kube-apiserver"]
    assert binary.mode == 0o755 and binary.size == len(b"\x7fELF pretend binary")
    assert members["etc/motd"].mode == 0o644
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    assert all(m.uid == 0 and m.mtime == 0 for m in members.values())


def test_archives_are_reproducible(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    first = oci.write_image(spec, tmp_path / "a.tar")
    second = oci.write_image(spec, tmp_path / "b.tar")
    assert first == second
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_index_names_the_image_for_containerd(tmp_path: Path) -> None:
    oci.write_image(_spec(tmp_path), tmp_path / "img.tar")
    with tarfile.open(tmp_path / "img.tar") as tar:
        names = tar.getnames()
        index_file = tar.extractfile("index.json")
        assert index_file is not None
        index = json.loads(index_file.read())
    assert names[:2] == ["oci-layout", "index.json"]
    annotations = index["manifests"][0]["annotations"]
    assert annotations["io.containerd.image.name"] == "registry.k8s.io/kube-apiserver:v1.37.2"
    assert annotations["org.opencontainers.image.ref.name"] == "v1.37.2"


def test_a_corrupted_blob_is_detected(tmp_path: Path) -> None:
    oci.write_image(_spec(tmp_path), tmp_path / "img.tar")
    with tarfile.open(tmp_path / "img.tar") as src, \
            tarfile.open(tmp_path / "bad.tar", "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "index.json":
                pass
            elif member.name.startswith("blobs/") and b"rootfs" in data:
                data = data.replace(b"amd64", b"arm64")
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(ValueError, match="does not match its digest"):
        oci.read_archive(tmp_path / "bad.tar")


def test_bad_specs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="explicit tag"):
        oci.ImageSpec(name="registry.k8s.io/pause", entrypoint=(), files=())
    with pytest.raises(ValueError, match="absolute"):
        oci.LayerFile("pause", data=b"")
    with pytest.raises(ValueError, match="exactly one"):
        oci.LayerFile("/pause", data=b"", source=tmp_path)
