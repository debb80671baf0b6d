"""The conformance test images: mmdebstrap commands, and the archives assembled from stand-in
layers and files (the real Debian layers are built by `haku dev conformance images`)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from haku.dev import oci, test_images
from haku.dev.test_images import AGNHOST_ROOT, NGINX_ROOT, Context, DebianRoot
from haku.dev.versions import Versions


def test_mmdebstrap_commands() -> None:
    cmd = AGNHOST_ROOT.command(Path("/o/r.tar"))
    assert cmd[:2] == ["mmdebstrap", "--variant=essential"]
    assert "--include=bind9-dnsutils,curl,netcat-openbsd,iproute2,iperf,bash,util-linux," \
           "socat,ca-certificates" in cmd
    assert any(a.startswith("--hook-dir=") for a in cmd)  # merged /usr on bookworm
    assert cmd[cmd.index("--format=tar") + 1:][:2] == ["bookworm", "/o/r.tar"]
    assert "deb http://deb.debian.org/debian bookworm main" in cmd
    assert any("listen" in a for a in NGINX_ROOT.command(Path("x")))
    # the key follows the command and the users
    assert AGNHOST_ROOT.key() != DebianRoot("agnhost", "bookworm", ("bash",)).key()
    assert AGNHOST_ROOT.key() == AGNHOST_ROOT.key()


def test_users_and_groups_are_added_once() -> None:
    passwd = b"root:x:0:0:root:/root:/bin/bash\n"
    once = test_images._add_lines(passwd, AGNHOST_ROOT.passwd)
    assert once.decode().splitlines()[1].startswith("user-defined-in-image:x:1000:1000:")
    assert test_images._add_lines(once, AGNHOST_ROOT.passwd) == once
    group = test_images._add_lines(b"root:x:0:\n", AGNHOST_ROOT.group).decode()
    assert "group-defined-in-image:x:50000:user-defined-in-image" in group


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Context:
    """Stand-ins: a tiny 'Debian' layer, agnhost and coredns binaries, the k8s source files."""
    bins = tmp_path / "bins"
    (bins / "agnhost").mkdir(parents=True)
    (bins / "agnhost" / "agnhost").write_bytes(b"\x7fELF agnhost")
    (bins / "agnhost" / "agnhost").chmod(0o755)
    (bins / "agnhost" / "agnhost.version").write_text("2.66.1\n")
    (bins / "coredns").mkdir()
    (bins / "coredns" / "coredns").write_bytes(b"\x7fELF coredns")
    (bins / "coredns" / "coredns").chmod(0o755)
    source = tmp_path / "k8s"
    porter = source / "test/images/agnhost/porter"
    porter.mkdir(parents=True)
    (porter / "localhost.crt").write_text("CERT")
    (porter / "localhost.key").write_text("KEY")
    for name, picture in (("nautilus", "nautilus.jpg"), ("kitten", "kitten.jpg")):
        html = source / f"test/images/{name}/html"
        html.mkdir(parents=True)
        (html / picture).write_bytes(b"JPEG " + name.encode())
        (html / "data.json").write_text(f'{{"image": "{name}"}}')

    def fake_debian(root: DebianRoot, directory: Path, printer: object) -> oci.Layer:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"rootfs-{root.name}.tar"
        with tarfile.open(path, "w") as tar:
            info = tarfile.TarInfo("usr/bin/dig")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"dig"))
        return oci.layer_of(path)

    monkeypatch.setattr(test_images, "debian_layer", fake_debian)
    context = Context(tmp_path / "cache", Versions(), lambda _: None,
                      {"agnhost": bins / "agnhost", "coredns": bins / "coredns"})
    context._source = source
    return context


def _top(archive: Path) -> dict[str, tarfile.TarInfo]:
    summary = oci.read_layered_archive(archive)
    with tarfile.open(archive) as outer:
        blob = outer.extractfile("blobs/sha256/" + summary.layers[-1].split(":")[1])
        assert blob is not None
        with tarfile.open(fileobj=io.BytesIO(blob.read())) as inner:
            return {m.name: m for m in inner.getmembers()}


def test_agnhost_as_upstream_lays_it_out(ctx: Context) -> None:
    built = test_images.agnhost_images(ctx)
    assert [b.name for b in built] == ["registry.k8s.io/e2e-test-images/agnhost:2.66.1",
                                      "registry.k8s.io/e2e-test-images/agnhost:2.55"]
    first, prev = (oci.read_layered_archive(b.archive) for b in built)
    assert first.config["config"]["Entrypoint"] == ["/agnhost"]
    assert first.config["config"]["Cmd"] == ["pause"]
    assert first.layers == prev.layers and first.manifest_digest != prev.manifest_digest
    assert prev.config["config"]["Labels"]["org.opencontainers.image.version"] == "2.55"
    top = _top(built[0].archive)
    assert top["agnhost"].mode == 0o755 and top["agnhost-2"].linkname == "agnhost"
    assert top["coredns"].isfile() and top["localhost.key"].mode == 0o644
    assert top["uploads"].isdir() and top["usr/local/bin/iperf"].linkname == "/usr/bin/iperf"
    # cached: the same archives, not written again
    mtime = built[0].archive.stat().st_mtime_ns
    again = test_images.agnhost_images(ctx)
    assert [b.digest for b in again] == [b.digest for b in built]
    assert built[0].archive.stat().st_mtime_ns == mtime


def test_nautilus_and_kitten_are_agnhost_with_their_pictures(ctx: Context) -> None:
    agnhost = oci.read_layered_archive(test_images.agnhost_images(ctx)[0].archive)
    built = test_images.webserver_images(ctx)
    assert [b.name for b in built] == ["registry.k8s.io/e2e-test-images/nautilus:1.8",
                                      "registry.k8s.io/e2e-test-images/kitten:1.8"]
    kitten = oci.read_layered_archive(built[1].archive)
    assert kitten.layers[:2] == agnhost.layers
    assert kitten.config["config"]["Cmd"] == ["test-webserver"]
    assert set(_top(built[1].archive)) == {"kitten.jpg", "data.json"}


def test_busybox_and_nonewprivs(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    if not Path("/bin/busybox").is_file():
        pytest.skip("busybox-static is not installed")
    monkeypatch.setenv("HAKU_BUSYBOX", "host")
    busybox, nnp = test_images.busybox_images(ctx)
    assert busybox.name == "registry.k8s.io/e2e-test-images/busybox:1.37.0-2"
    summary = oci.read_archive(busybox.archive)
    members = summary.layer_members
    assert summary.config["config"]["Cmd"] == ["sh"]
    assert members["bin/sh"].linkname == "busybox" and members["bin/env"].linkname == "busybox"
    assert members["etc/passwd"].isfile()
    nonewprivs = oci.read_archive(nnp.archive)
    assert nnp.name == "registry.k8s.io/e2e-test-images/nonewprivs:1.4"
    assert nonewprivs.layer_members["usr/local/bin/nnp"].mode == 0o4755  # setuid root
    assert nonewprivs.config["config"]["Cmd"] == ["nnp"]


def test_unknown_groups_are_refused() -> None:
    with pytest.raises(test_images.TestImageError, match="unknown test images"):
        test_images.build(["agnhost", "perl"], Versions())


def test_every_conformance_image_is_provided() -> None:
    from haku.dev.conformance import CONFORMANCE_IMAGES

    provided = test_images.provided(Versions())
    assert [p.image.ref for p in CONFORMANCE_IMAGES if p.image.ref not in provided] == []
    assert set(provided.values()) == set(test_images.GROUPS)


def test_sample_apiserver_is_the_staging_module_alone(ctx: Context, tmp_path: Path) -> None:
    from haku.dev import toolchain

    component = toolchain.components(Versions())["sample-apiserver"]
    assert (component.version, toolchain.MODULES["sample-apiserver"]) == (
        "v0.37.2", "k8s.io/sample-apiserver")
    binary = tmp_path / "sa" / "sample-apiserver"
    binary.parent.mkdir()
    binary.write_bytes(b"\x7fELF sample-apiserver")
    ctx.bins["sample-apiserver"] = binary.parent
    built = test_images.sample_apiserver_image(ctx)
    summary = oci.read_archive(built.archive)
    assert built.name == "registry.k8s.io/e2e-test-images/sample-apiserver:1.29.2"
    assert summary.config["config"]["Entrypoint"] == ["/sample-apiserver"]
    assert summary.layer_members["sample-apiserver"].mode == 0o755
