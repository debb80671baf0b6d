import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from haku.dev import images, oci, toolchain
from haku.dev.versions import Versions, coredns_image_name, kube_proxy_image_name

LDD_ONE = """\
\tlinux-vdso.so.1 (0x00007ffc0a7e1000)
\tlibxtables.so.12 => /lib/x86_64-linux-gnu/libxtables.so.12 (0x00007f2b1c1c0000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2b1bfdf000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f2b1c1f8000)
"""

LDD_MANY = """\
/usr/sbin/xtables-nft-multi:
\tlinux-vdso.so.1 (0x00007ffd4b5f5000)
\tlibmnl.so.0 => /lib/x86_64-linux-gnu/libmnl.so.0 (0x00007f0e1f0a2000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e1eec1000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0e1f0de000)
/usr/lib/x86_64-linux-gnu/xtables/libxt_comment.so:
\tlinux-vdso.so.1 (0x00007ffd7c3c4000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f6e0e9e1000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f6e0ebe4000)
/usr/local/bin/kube-proxy:
\tnot a dynamic executable
"""


def test_ldd_output_gives_libraries_and_the_loader_once_each() -> None:
    assert images.parse_ldd(LDD_ONE) == [
        "/lib/x86_64-linux-gnu/libxtables.so.12",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]
    assert images.parse_ldd(LDD_MANY) == [
        "/lib/x86_64-linux-gnu/libmnl.so.0",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]
    assert images.parse_ldd("\tstatically linked\n") == []


def test_a_library_ldd_cannot_find_is_an_error() -> None:
    text = LDD_ONE + "\tlibnftnl.so.11 => not found\n"
    with pytest.raises(images.ImageBuildError, match=r"libnftnl\.so\.11"):
        images.parse_ldd(text)


def _merged_usr(root: Path) -> Path:
    """A Debian 12 style tree: /lib -> usr/lib, /lib64 -> usr/lib64, versioned libraries."""
    lib = root / "usr/lib/x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (root / "usr/lib64").mkdir()
    (root / "usr/sbin").mkdir()
    (root / "lib").symlink_to("usr/lib")
    (root / "lib64").symlink_to("usr/lib64")
    (lib / "libc.so.6").write_bytes(b"libc")
    (lib / "libc.so.6").chmod(0o755)
    (lib / "libmnl.so.0.2.0").write_bytes(b"libmnl")
    (lib / "libmnl.so.0.2.0").chmod(0o644)
    (lib / "libmnl.so.0").symlink_to("libmnl.so.0.2.0")
    (lib / "ld-linux-x86-64.so.2").write_bytes(b"loader")
    (lib / "ld-linux-x86-64.so.2").chmod(0o755)
    (root / "usr/lib64/ld-linux-x86-64.so.2").symlink_to(
        "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    (root / "usr/sbin/xtables-nft-multi").write_bytes(b"multi")
    (root / "usr/sbin/xtables-nft-multi").chmod(0o755)
    (root / "usr/sbin/iptables").symlink_to("xtables-nft-multi")
    return root


def test_host_files_keep_their_lookup_paths_with_real_content(tmp_path: Path) -> None:
    root = _merged_usr(tmp_path)
    files, links = images.host_tree(
        ["/usr/sbin/xtables-nft-multi", *images.parse_ldd(LDD_MANY)], root)
    by_path = {f.path: f for f in files}
    assert sorted(by_path) == [
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libmnl.so.0",  # the soname, holding the versioned file
        "/usr/lib64/ld-linux-x86-64.so.2",  # the loader's ELF path, via /lib64 -> usr/lib64
        "/usr/sbin/xtables-nft-multi",
    ]
    lib = root / "usr/lib/x86_64-linux-gnu"
    assert by_path["/usr/lib/x86_64-linux-gnu/libmnl.so.0"].source == lib / "libmnl.so.0.2.0"
    assert by_path["/usr/lib64/ld-linux-x86-64.so.2"].source == lib / "ld-linux-x86-64.so.2"
    assert by_path["/usr/lib/x86_64-linux-gnu/libmnl.so.0"].mode == 0o644
    assert by_path["/usr/lib64/ld-linux-x86-64.so.2"].mode == 0o755
    assert links == (("/lib", "usr/lib"), ("/lib64", "usr/lib64"))


def test_host_files_that_are_missing_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(images.ImageBuildError, match="not a file"):
        images.host_tree(["/usr/sbin/nope"], _merged_usr(tmp_path))


def test_iptables_names_point_at_the_hosts_backend(tmp_path: Path) -> None:
    assert images.backend_command("iptables", "nft") == "iptables-nft"
    assert images.backend_command("ip6tables-restore", "legacy") == "ip6tables-legacy-restore"
    links = dict(images.xtables_symlinks("nft", ["nft", "legacy"]))
    for tool in images.IPTABLES_TOOLS:
        assert links[f"/usr/sbin/{tool}"] == "xtables-nft-multi"
    assert links["/usr/sbin/iptables-legacy-save"] == "xtables-legacy-multi"
    assert links["/usr/sbin/ip6tables-nft-restore"] == "xtables-nft-multi"
    assert len(links) == 3 * len(images.IPTABLES_TOOLS)
    with pytest.raises(images.ImageBuildError):
        images.xtables_symlinks("legacy", ["nft"])
    root = _merged_usr(tmp_path)
    assert images.iptables_backend(root) == "nft"
    (root / "usr/sbin/iptables").unlink()
    (root / "usr/sbin/iptables").symlink_to("xtables-legacy-multi")
    assert images.iptables_backend(root) == "legacy"


def test_kube_proxy_image_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _merged_usr(tmp_path / "host")
    (root / "usr/lib/x86_64-linux-gnu/xtables").mkdir()
    module = root / "usr/lib/x86_64-linux-gnu/xtables/libxt_comment.so"
    module.write_bytes(b"module")
    binary = tmp_path / "kube-proxy"
    binary.write_bytes(b"kube-proxy")
    asked: list[list[Path]] = []

    def fake_ldd(paths: list[Path]) -> list[str]:
        asked.append(list(paths))
        return images.parse_ldd(LDD_MANY)

    monkeypatch.setattr(images, "shared_libraries", fake_ldd)
    spec = images.kube_proxy_image(binary, "v1.37.2", root)
    assert spec.name == "registry.k8s.io/kube-proxy:v1.37.2"
    assert spec.entrypoint == ("/usr/local/bin/kube-proxy",)
    assert asked == [[root / "usr/sbin/xtables-nft-multi", module]]  # no nft on this host
    paths = {f.path for f in spec.files}
    assert {"/usr/local/bin/kube-proxy", "/run/xtables.lock",
            "/usr/lib/x86_64-linux-gnu/xtables/libxt_comment.so",
            "/usr/lib64/ld-linux-x86-64.so.2"} <= paths
    links = dict(spec.symlinks)
    assert links["/lib64"] == "usr/lib64"
    assert links["/usr/sbin/iptables-save"] == "xtables-nft-multi"
    summary_path = tmp_path / "kp.tar"
    oci.write_image(spec, summary_path)
    members = oci.read_archive(summary_path).layer_members
    assert members["run/xtables.lock"].mode == 0o600
    assert members["lib"].issym() and members["usr/lib64"].isdir()


def test_kube_proxy_image_needs_iptables(tmp_path: Path) -> None:
    binary = tmp_path / "kube-proxy"
    binary.write_bytes(b"kube-proxy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="iptables"):
        images.kube_proxy_image(binary, "v1.37.2", tmp_path / "empty")


def test_coredns_image_is_upstreams_layout(tmp_path: Path) -> None:
    binary = tmp_path / "coredns"
    binary.write_bytes(b"coredns")
    spec = images.coredns_image(binary, "v1.14.6")
    assert spec.name == "registry.k8s.io/coredns/coredns:v1.14.6"
    assert spec.entrypoint == ("/coredns",) and spec.cmd == ()
    assert spec.user == images.COREDNS_USER
    assert spec.files[0].path == "/coredns" and spec.files[0].mode == 0o755
    assert images.coredns_image(binary, "v1.14.6", user="65532:65532").user == "65532:65532"
    with pytest.raises(images.ImageBuildError, match="haku dev build coredns"):
        images.coredns_image(tmp_path / "missing", "v1.14.6")


def test_image_names_follow_upstream_tags() -> None:
    assert kube_proxy_image_name("v1.37.2") == "registry.k8s.io/kube-proxy:v1.37.2"
    assert coredns_image_name("v1.14.6") == "registry.k8s.io/coredns/coredns:v1.14.6"


def test_image_specs_include_kube_proxy_and_coredns_when_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bins = {name: tmp_path / name for name in ("kubernetes", "etcd", "kine", "coredns")}
    for name, binaries in (("kubernetes", ("kube-apiserver", "kube-controller-manager",
                                           "kube-scheduler", "kube-proxy")),
                           ("etcd", ("etcd", "etcdctl")), ("kine", ("kine",)),
                           ("coredns", ("coredns",))):
        bins[name].mkdir()
        for b in binaries:
            (bins[name] / b).write_bytes(b.encode())
    pause = tmp_path / "pause"
    pause.write_bytes(b"pause")
    monkeypatch.setattr(images, "kube_proxy_image", lambda binary, tag: oci.ImageSpec(
        name=kube_proxy_image_name(tag), entrypoint=(), files=(oci.LayerFile(
            "/usr/local/bin/kube-proxy", source=binary),)))
    versions = Versions()
    names = [s.name for s in images.image_specs(bins, versions, pause)]
    assert "registry.k8s.io/kube-proxy:v1.37.2" in names
    assert "registry.k8s.io/coredns/coredns:v1.14.6" in names
    assert len(names) == len(set(names))
    without = dict(bins)
    del without["coredns"]  # callers that do not build coredns yet still get the rest
    names = [s.name for s in images.image_specs(without, versions, pause)]
    assert "registry.k8s.io/kube-proxy:v1.37.2" in names
    assert not any("coredns" in n for n in names)


# ---------------------------------------------------------------------------------------------
# The real images, run in a chroot: only as root, with the binaries cached and iptables here.


def _cached(component: str) -> Path | None:
    c = toolchain.components(Versions.from_env())[component]
    root = toolchain.cache_root()
    return c.directory(root) if c.is_built(root) else None


def _extract(archive: Path, into: Path) -> Path:
    """The image's only layer, unpacked as containerd would (our own archive: trusted)."""
    oci.read_archive(archive)  # checks every digest

    def member(tar: tarfile.TarFile, name: str) -> bytes:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()

    with tarfile.open(archive) as tar:
        index = json.loads(member(tar, "index.json"))
        digest = index["manifests"][0]["digest"].split(":")[1]
        manifest = json.loads(member(tar, f"blobs/sha256/{digest}"))
        layer = member(tar, "blobs/sha256/" + manifest["layers"][0]["digest"].split(":")[1])
    with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
        inner.extractall(into, filter="fully_trusted")  # noqa: S202
    return into


def _needs_root_chroot() -> None:
    if os.geteuid() != 0:
        pytest.skip("chrooting into the image needs root")
    if not (shutil.which("chroot") and shutil.which("unshare")):
        pytest.skip("chroot/unshare are not installed")


def _run(*argv: str) -> str:
    result = subprocess.run(["unshare", "--net", "chroot", *argv], capture_output=True,
                            text=True, timeout=30, env={"PATH": "/usr/sbin:/usr/bin"})
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout + result.stderr


def test_the_kube_proxy_image_runs_kube_proxy_and_iptables(tmp_path: Path) -> None:
    _needs_root_chroot()
    k8s = _cached("kubernetes")
    if k8s is None:
        pytest.skip("kubernetes binaries are not cached (make deps)")
    if not Path("/usr/sbin/xtables-nft-multi").is_file():
        pytest.skip("Debian's iptables is not installed (make deps)")
    version = Versions.from_env().kubernetes
    spec = images.kube_proxy_image(k8s / "kube-proxy", version)
    digest = oci.write_image(spec, tmp_path / "kp.tar")
    assert oci.write_image(spec, tmp_path / "again.tar") == digest  # reproducible
    root = _extract(tmp_path / "kp.tar", tmp_path / "root")
    assert version in _run(str(root), "/usr/local/bin/kube-proxy", "--version")
    assert "nf_tables" in _run(str(root), "iptables", "-V")
    assert "nf_tables" in _run(str(root), "ip6tables-save", "-V")
    # a fresh network namespace: exercises the extension modules without touching host rules
    rules = "*filter\n:KUBE-T - [0:0]\n-A KUBE-T -p tcp -m comment --comment t " \
            "-m conntrack --ctstate INVALID -j DROP\nCOMMIT\n"
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c",
         f"chroot {root} iptables-restore --noflush && chroot {root} iptables-save -t filter"],
        input=rules, capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/sbin:/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "-A KUBE-T -p tcp -m comment --comment t -m conntrack --ctstate INVALID -j DROP" \
        in result.stdout
    if (root / "usr/sbin/nft").exists():
        assert "nftables" in _run(str(root), "nft", "--version")


def test_the_coredns_image_runs_coredns(tmp_path: Path) -> None:
    _needs_root_chroot()
    coredns = _cached("coredns")
    if coredns is None:
        pytest.skip("the coredns binary is not cached (haku dev build coredns)")
    version = Versions.from_env().coredns
    oci.write_image(images.coredns_image(coredns / "coredns", version), tmp_path / "cd.tar")
    root = _extract(tmp_path / "cd.tar", tmp_path / "root")
    assert f"CoreDNS-{version.removeprefix('v')}" in _run(str(root), "/coredns", "-version")
