"""The container images of the local cluster, written by Haku and imported into containerd.

Each image carries its upstream name (``registry.k8s.io/kube-apiserver:v1.37.2``,
``docker.io/rancher/kine:v0.17.5``, ``registry.k8s.io/pause:3.10.2``), so the manifests Haku
renders for production run here unchanged with ``imagePullPolicy: IfNotPresent``.

Most images hold one static Go binary. kube-proxy's also holds what it execs: the host's Debian
iptables (``xtables-*-multi`` with its extension modules) and nft, copied with every shared
library ``ldd`` names and the dynamic loader, laid out as on the host (``/lib -> usr/lib``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from haku.dev import oci, packages
from haku.dev.versions import (
    BUSYBOX_IMAGE,
    Versions,
    coredns_image_name,
    etcd_image_tag,
    konnectivity_image_names,
    kube_proxy_image_name,
    metrics_server_image_name,
    parse_semver,
)
from haku.errors import CommandFailed, CommandTimedOut, HakuError, output_tail

# Timeouts of the commands below. An import of the largest archive (kube-apiserver, ~90 MB)
# takes about a second here; minutes mean containerd is stuck.
CTR_IMPORT_TIMEOUT = 5 * 60.0
CTR_LIST_TIMEOUT = 60.0
GCC_TIMEOUT = 5 * 60.0
CTR_HINT = ("containerd is not answering: see its log (<state>/logs/containerd.log), "
            "then run `haku dev down` and `haku dev up`")

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


# ---------------------------------------------------------------------------------------------
# kube-proxy: the binary plus the host's iptables and nft, with their shared libraries

KUBE_PROXY_PATH = "/usr/local/bin/kube-proxy"
# What kube-proxy's iptables mode execs (k8s.io/kubernetes/pkg/util/iptables). Conntrack
# cleanup goes over netlink, so no conntrack binary; nft is exec'd by knftables (nftables mode,
# and the cleanup of nftables rules the iptables mode runs at start).
IPTABLES_TOOLS = (
    "iptables", "iptables-save", "iptables-restore",
    "ip6tables", "ip6tables-save", "ip6tables-restore",
)
SBIN = "/usr/sbin"
XTABLES_MULTI = {"nft": "xtables-nft-multi", "legacy": "xtables-legacy-multi"}
XTABLES_MODULES = "/usr/lib/x86_64-linux-gnu/xtables"
NFT = "/usr/sbin/nft"
# Protocol names (-p tcp) fall back to getprotobyname(); glibc's built-in files NSS reads these.
KUBE_PROXY_ETC = ("/etc/protocols",)
# The lock legacy iptables takes; kubeadm's DaemonSet mounts the host's over it. Shipping the
# (empty) file also gives the image its /run directory.
XTABLES_LOCK = "/run/xtables.lock"


class ImageBuildError(HakuError):
    """An image whose inputs are missing or broken on this host."""


def parse_ldd(text: str) -> list[str]:
    """The library paths in ``ldd`` output (one file or several), loader included, in order.

    Raises for a library ldd reports as ``not found``: the image would not run.
    """
    paths: list[str] = []
    missing: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or (line.endswith(":") and not raw[:1].isspace()):
            continue  # blank, or the "/path/to/file:" header of a multi-file listing
        if "=>" in line:
            name, _, where = line.partition("=>")
            where = where.strip()
            if where.startswith("not found"):
                missing.append(name.strip())
                continue
            path = where.split(" (", 1)[0].strip()
        else:
            # the loader: "/lib64/ld-linux-x86-64.so.2 (0x...)"
            path = line.split(" (", 1)[0].strip()
        if path.startswith("/") and path not in paths:
            paths.append(path)
    if missing:
        raise ImageBuildError(f"ldd: shared libraries not found: {', '.join(sorted(set(missing)))}")
    return paths


def shared_libraries(binaries: Sequence[Path]) -> list[str]:
    """Every shared library (and the loader) ``binaries`` need, by one ``ldd`` run."""
    if not binaries:
        return []
    result = subprocess.run(
        ["ldd", *map(str, binaries)], capture_output=True, text=True, check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
    )
    libraries = parse_ldd(result.stdout)
    if result.returncode != 0 and not libraries:
        raise ImageBuildError(f"ldd {' '.join(map(str, binaries))} failed: "
                              f"{(result.stderr or result.stdout).strip()}")
    return libraries


def host_tree(
    paths: Iterable[str], root: Path = Path("/")
) -> tuple[tuple[oci.LayerFile, ...], tuple[tuple[str, str], ...]]:
    """Copy host files into an image at the same paths, as the loader will look them up.

    Each file's content is that of its final target, stored under its own name in its
    directory's real location (``/lib/x86_64-linux-gnu/libc.so.6`` is stored at
    ``/usr/lib/x86_64-linux-gnu/libc.so.6`` on a merged-/usr host), and the symlinked
    directories on the way (``/lib -> usr/lib``, ``/lib64 -> usr/lib64``) become symlinks in
    the image, so every path the host uses resolves the same way inside it. ``root`` is where
    the host's ``/`` is (tests point it at a fake tree).
    """
    root_real = Path(os.path.realpath(root))

    def inside(p: str) -> PurePosixPath:
        real = Path(os.path.realpath(root / p.lstrip("/")))
        try:
            return PurePosixPath("/") / real.relative_to(root_real)
        except ValueError:
            raise ImageBuildError(f"{p} resolves outside {root}: {real}") from None

    files: dict[str, oci.LayerFile] = {}
    links: dict[str, str] = {}
    for path in paths:
        posix = PurePosixPath(path)
        if not posix.is_absolute():
            raise ImageBuildError(f"{path}: host paths must be absolute")
        host = root / path.lstrip("/")
        if not host.is_file():
            raise ImageBuildError(f"{path} is not a file on this host")
        for ancestor in list(reversed(posix.parents))[1:]:  # top-down, / itself excluded
            host_ancestor = root / str(ancestor).lstrip("/")
            if host_ancestor.is_symlink():
                links[str(ancestor)] = os.readlink(host_ancestor)
                break
        target = str(inside(str(posix.parent)) / posix.name)
        source = Path(os.path.realpath(host))
        files[target] = oci.LayerFile(target, source=source,
                                      mode=stat.S_IMODE(source.stat().st_mode))
    clashes = [link for link in links if link in files]
    if clashes:
        raise ImageBuildError(f"paths are both a file and a symlink in the image: {clashes}")
    return (
        tuple(files[k] for k in sorted(files)),
        tuple(sorted(links.items())),
    )


def backend_command(tool: str, backend: str) -> str:
    """Backend-specific names: ``iptables-save`` -> ``iptables-nft-save``, ``iptables`` ->
    ``iptables-nft``."""
    family, _, rest = tool.partition("-")
    return f"{family}-{backend}" + (f"-{rest}" if rest else "")


def xtables_symlinks(default: str, backends: Iterable[str]) -> list[tuple[str, str]]:
    """``/usr/sbin`` symlinks: the plain names to ``default``'s multi-binary, and each
    backend's explicit names (``iptables-nft-save``, ``iptables-legacy``, ...) to its own."""
    available = sorted(set(backends))
    if default not in available:
        raise ImageBuildError(f"iptables backend {default!r} is not among {available}")
    links = [(f"{SBIN}/{tool}", XTABLES_MULTI[default]) for tool in IPTABLES_TOOLS]
    for backend in available:
        links += [(f"{SBIN}/{backend_command(tool, backend)}", XTABLES_MULTI[backend])
                  for tool in IPTABLES_TOOLS]
    return sorted(links)


def iptables_backend(root: Path = Path("/")) -> str:
    """The backend the host's ``iptables`` alternative points at, so kube-proxy in the image
    writes rules where the host's kubelet and tools look (Debian 12 defaults to nft)."""
    real = os.path.basename(os.path.realpath(root / SBIN.lstrip("/") / "iptables"))
    for backend, multi in XTABLES_MULTI.items():
        if real == multi:
            return backend
    return "nft"


def kube_proxy_image(binary: Path, tag: str, root: Path = Path("/")) -> oci.ImageSpec:
    """``registry.k8s.io/kube-proxy:<tag>``: the binary, iptables (both backends when the host
    has them, the plain names on the host's choice), the xtables modules, nft, their libraries."""
    if not binary.is_file():
        raise ImageBuildError(f"{binary} is missing: build it with `haku dev build kubernetes`")
    sbin = root / SBIN.lstrip("/")
    backends = [b for b, multi in XTABLES_MULTI.items() if (sbin / multi).is_file()]
    if "nft" not in backends:
        raise packages.MissingPackages(
            [r for r in packages.REQUIREMENTS if r.package == "iptables"])
    modules_dir = root / XTABLES_MODULES.lstrip("/")
    modules = sorted(f"{XTABLES_MODULES}/{p.name}" for p in modules_dir.glob("*.so"))
    executables = [f"{SBIN}/{XTABLES_MULTI[b]}" for b in backends]
    if (root / NFT.lstrip("/")).is_file():
        executables.append(NFT)
    elf = executables + modules
    libraries = shared_libraries([root / p.lstrip("/") for p in elf])
    etc = [p for p in KUBE_PROXY_ETC if (root / p.lstrip("/")).is_file()]
    host_files, dir_links = host_tree([*elf, *libraries, *etc], root)
    files = (
        oci.LayerFile(KUBE_PROXY_PATH, source=binary),
        oci.LayerFile(XTABLES_LOCK, data=b"", mode=0o600),
        *host_files,
    )
    return oci.ImageSpec(
        name=kube_proxy_image_name(tag),
        # Upstream's image sets no entrypoint (kubeadm's DaemonSet gives `command:`); naming the
        # binary as the other control-plane images do changes nothing for such manifests.
        entrypoint=(KUBE_PROXY_PATH,),
        files=files,
        symlinks=(*dir_links, *xtables_symlinks(iptables_backend(root), backends)),
    )


# ---------------------------------------------------------------------------------------------
# CoreDNS

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Upstream's image runs as 65532 and gives /coredns the file capability cap_net_bind_service so
# that, with the NET_BIND_SERVICE kubeadm's Deployment adds, a non-root process can bind :53.
# These archives carry no xattrs; the dev containerd's enable_unprivileged_ports (config.py)
# lets a pod bind :53 without it, so the image runs as upstream's user all the same.
COREDNS_USER = "65532:65532"


def coredns_image(binary: Path, tag: str, user: str = COREDNS_USER) -> oci.ImageSpec:
    """``registry.k8s.io/coredns/coredns:<tag>``: /coredns, entrypoint ["/coredns"], plus the
    host's CA bundle as upstream ships one (for forward over TLS)."""
    if not binary.is_file():
        raise ImageBuildError(f"{binary} is missing: build it with `haku dev build coredns`")
    files = [oci.LayerFile("/coredns", source=binary)]
    if Path(CA_BUNDLE).is_file():
        files.append(oci.LayerFile(CA_BUNDLE, source=Path(os.path.realpath(CA_BUNDLE)),
                                   mode=0o644))
    return oci.ImageSpec(
        name=coredns_image_name(tag),
        entrypoint=("/coredns",),
        files=tuple(files),
        user=user,
    )


# ---------------------------------------------------------------------------------------------
# Addon images: Konnectivity and metrics-server (built only on demand, see haku.dev.addons)

# Upstream's images are distroless: konnectivity's on static-debian12:nonroot (user 65532),
# metrics-server's on distroless/static with `USER 65534` (nobody, group 65534 from the base's
# /etc/passwd). Both have just the binary at the root, as the entrypoint.
KONNECTIVITY_USER = "65532:65532"
METRICS_SERVER_USER = "65534:65534"


def _distroless_files(binary: Path, path: str, what: str) -> tuple[oci.LayerFile, ...]:
    if not binary.is_file():
        raise ImageBuildError(f"{binary} is missing: build it with `haku dev addons {what}`")
    files = [oci.LayerFile(path, source=binary)]
    if Path(CA_BUNDLE).is_file():  # distroless ships the CA bundle
        files.append(oci.LayerFile(CA_BUNDLE, source=Path(os.path.realpath(CA_BUNDLE)),
                                   mode=0o644))
    return tuple(files)


def konnectivity_images(directory: Path, version: str,
                        user: str = KONNECTIVITY_USER) -> list[oci.ImageSpec]:
    """``registry.k8s.io/kas-network-proxy/proxy-server:<v>`` (``/proxy-server``) and
    ``…/proxy-agent:<v>`` (``/proxy-agent``), from the konnectivity component's directory."""
    server, agent = konnectivity_image_names(version)
    return [
        oci.ImageSpec(name=name, entrypoint=(f"/{binary}",),
                      files=_distroless_files(directory / binary, f"/{binary}", "konnectivity"),
                      user=user)
        for name, binary in ((server, "proxy-server"), (agent, "proxy-agent"))
    ]


def metrics_server_image(binary: Path, version: str,
                         user: str = METRICS_SERVER_USER) -> oci.ImageSpec:
    """``registry.k8s.io/metrics-server/metrics-server:<v>``: ``/metrics-server``."""
    return oci.ImageSpec(
        name=metrics_server_image_name(version),
        entrypoint=("/metrics-server",),
        files=_distroless_files(binary, "/metrics-server", "metrics-server"),
        user=user,
    )


# The images of one Kubernetes release: its control plane (they run on the admin node, in the
# tenants' control-plane pods) and kube-proxy (a tenant's DaemonSet, on its workers).
CONTROL_PLANE_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


def control_plane_image_names(kubernetes_version: str) -> list[str]:
    """``registry.k8s.io/kube-apiserver:<v>``, ``…/kube-controller-manager:<v>``,
    ``…/kube-scheduler:<v>``."""
    parse_semver(kubernetes_version, what="kubernetes")
    return [f"registry.k8s.io/{name}:{kubernetes_version}" for name in CONTROL_PLANE_COMPONENTS]


def release_image_specs(directory: Path, kubernetes_version: str) -> list[oci.ImageSpec]:
    """The control-plane images and kube-proxy's of one release, from the binaries in its
    cache ``directory`` (``~/.cache/haku/bin/kubernetes-<v>``)."""
    specs = [control_plane_image(name, directory / name, kubernetes_version)
             for name in CONTROL_PLANE_COMPONENTS]
    specs.append(kube_proxy_image(directory / "kube-proxy", kubernetes_version))
    return specs


def image_specs(
    bins: dict[str, Path], versions: Versions, pause_binary: Path
) -> list[oci.ImageSpec]:
    """Every image the local cluster imports. ``bins`` maps component -> cache directory.

    ``bins["kubernetes"]``, ``["etcd"]`` and ``["kine"]`` are required; the CoreDNS image is
    included when ``bins`` has ``"coredns"`` (``toolchain.ensure([..., "coredns"])``).
    """
    specs = release_image_specs(bins["kubernetes"], versions.kubernetes)
    if "coredns" in bins:
        specs.append(coredns_image(bins["coredns"] / "coredns", versions.coredns))
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
    return compile_static(cache, "pause.c", "pause", "the pause image")


def compile_static(cache: Path, source_name: str, name: str, what: str) -> Path:
    """Compile the C program ``source_name`` (a file of this package) statically, once per
    source revision, into ``cache/bin/<name>-<digest>/<name>``."""
    source = resources.files("haku.dev").joinpath(source_name).read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:12]
    out = cache / "bin" / f"{name}-{digest}" / name
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.parent / source_name
    src.write_bytes(source)
    argv = ["gcc", "-static", "-Os", "-s", "-o", str(out.with_suffix(".tmp")), str(src)]
    hint = "gcc and libc6-dev (static libc) are needed: run `make deps`, then run this again"
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                timeout=GCC_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise CommandTimedOut(f"gcc ({what})", GCC_TIMEOUT, e.stderr, hint) from e
    except FileNotFoundError as e:
        raise ImageBuildError(f"gcc is not installed (it builds {what}): {hint}") from e
    if result.returncode != 0:
        raise CommandFailed(f"gcc -static {source_name} ({what})", result.returncode,
                            result.stderr or result.stdout, hint)
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
    listed = _ctr([*ctr, "images", "ls"], "ctr images ls", CTR_LIST_TIMEOUT)
    present = parse_ctr_images(listed)
    imported = []
    for image in images:
        if present.get(image.name) == image.digest:
            continue
        _ctr([*ctr, "images", "import", str(image.archive)],
             f"ctr images import {image.archive} ({image.name})", CTR_IMPORT_TIMEOUT)
        imported.append(image.name)
    return imported


def _ctr(argv: list[str], what: str, timeout: float) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise CommandTimedOut(what, timeout, e.stderr, CTR_HINT) from e
    except FileNotFoundError as e:
        raise ImageBuildError(f"{what}: ctr is not installed (package containerd): "
                              "run `make deps`, then run this again") from e
    if result.returncode != 0:
        raise ImageBuildError(
            f"{what} failed (exit {result.returncode}): "
            f"{output_tail(result.stderr or result.stdout) or 'no output'}; {CTR_HINT}")
    return result.stdout
