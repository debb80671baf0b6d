"""The conformance suite's test images, built by Haku and pushed to the dev cluster's registry.

``e2e.test`` names its images upstream (``registry.k8s.io/e2e-test-images/agnhost:2.66.1``, …)
and some tests pull them for real (``imagePullPolicy: Always``, image volumes). Haku writes each
as an OCI archive (:mod:`haku.dev.oci`) under that name, from what this machine can fetch: Go
modules Haku builds (:mod:`haku.dev.toolchain`), Debian packages (``mmdebstrap``, as the
operator image's base), small C programs; then pushes them byte for byte to the local registry
(:mod:`haku.dev.distribution`), where containerd's mirror configuration sends the pulls
(:mod:`haku.dev.registry`).

Everything is cached in ``~/.cache/haku/test-images``: each Debian root filesystem as a layer
keyed by its ``mmdebstrap`` command, each archive keyed by its inputs. A second run builds
nothing and pushes nothing the registry has.

The images (upstream's Dockerfiles in ``k8s.io/kubernetes/test/images`` are the reference):

- **agnhost** (2.66.1 and, for the tests that need a second agnhost, 2.55): Debian bookworm
  with the tools upstream's Alpine base adds (``bash curl dig nc ip ss iperf ipcs socat``), then
  ``/agnhost`` (the cached ``agnhost`` component), ``/agnhost-2``, ``/coredns`` (Haku's
  cached CoreDNS), the porter's ``/localhost.crt`` and ``/localhost.key``, ``/uploads``, and
  upstream's user ``user-defined-in-image`` (1000) in group ``group-defined-in-image`` (50000).
  The 2.55 tag differs only by a label (its own digest; the same layers).
- **busybox** 1.37.0-2: busybox 1.37.0 (the version upstream's image has) built from
  upstream's release tarball with its default configuration, static, every applet linked in
  ``/bin``. Not Debian's ``busybox-static``: Debian reverts upstream's ash change that passes
  environment names that are not shell names (``data-1``) on to children, and four
  Secret/ConfigMap environment tests run ``sh -c env`` and expect them.
- **pause** and **etcd**: Haku's own images (``images.image_specs``); etcd also under the tag
  ``e2e.test`` asks for.
- **glibc-dns-testing**: agnhost's Debian layer (``dig`` on glibc) and ``/coredns``.
- **nginx** 1.27.0-2: Debian's nginx-light serving ``/usr/share/nginx/html`` on port 80 in
  the foreground, logs to the container's output (as the official image).
- **nonewprivs**: a static ``/usr/local/bin/nnp`` (upstream's program, in C) installed setuid.
- **nautilus** / **kitten**: the agnhost image plus the picture and ``data.json`` of
  ``test/images/<name>/html``, ``CMD ["test-webserver"]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haku.dev import distribution, images, layers, oci, toolchain
from haku.dev.images import BuiltImage, archive_name
from haku.dev.operator_image import DPKG_OPTIONS, MERGED_USR_HOOKS, add_line
from haku.dev.versions import Versions, etcd_image_tag
from haku.errors import HakuError

Printer = Callable[[str], None]

E2E = "registry.k8s.io/e2e-test-images"
LAYOUT = "1"  # bump when what an image holds changes for the same inputs
MMDEBSTRAP_TIMEOUT = 20 * 60.0
DEBIAN = "http://deb.debian.org/debian"
SUITES = {
    "bookworm": (f"deb {DEBIAN} bookworm main", f"deb {DEBIAN} bookworm-updates main",
                 "deb http://deb.debian.org/debian-security bookworm-security main"),
}
# The e2e.test (v1.37.2) tags of the images Haku builds; docs/conformance.md has the table.
AGNHOST_TAGS = ("2.66.1", "2.55")
BUSYBOX_TAG = "1.37.0-2"
ETCD_E2E_TAG = "3.7.0-0"
GLIBC_DNS_TAG = "2.1.1"
NGINX_TAG = "1.27.0-2"
NONEWPRIVS_TAG = "1.4"
SAMPLE_APISERVER_TAG = "1.29.2"
WEBSERVER_TAGS = {"nautilus": ("1.8", "nautilus.jpg"), "kitten": ("1.8", "kitten.jpg")}


class TestImageError(HakuError):
    """A test image could not be built; the message says why."""


# ---------------------------------------------------------------------------------------------
# Debian root filesystems (mmdebstrap), each one cached layer


@dataclass(frozen=True)
class DebianRoot:
    """A root filesystem of Debian packages, one layer."""

    name: str
    suite: str
    packages: tuple[str, ...]
    variant: str = "essential"
    hooks: tuple[str, ...] = ()  # mmdebstrap --customize-hook, "$1" is the root
    passwd: tuple[str, ...] = ()  # lines added to /etc/passwd
    group: tuple[str, ...] = ()  # lines added to /etc/group (an existing name is kept)

    def command(self, out: Path) -> list[str]:
        argv = ["mmdebstrap", f"--variant={self.variant}", f"--include={','.join(self.packages)}",
                '--aptopt=Acquire::Languages "none"']
        if self.suite == "bookworm":
            argv.append(f"--hook-dir={MERGED_USR_HOOKS}")
        argv += [f"--dpkgopt={o}" for o in DPKG_OPTIONS]
        argv += [f"--customize-hook={h}" for h in (  # the clean-up first: then the image's
            'rm -rf "$1"/var/log/* "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old '
            '"$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/*',  # own hooks
            *self.hooks)]
        return [*argv, "--format=tar", self.suite, str(out), *SUITES[self.suite]]

    def key(self) -> str:
        return _key(LAYOUT, self.command(Path("OUT")), self.passwd, self.group)


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run(argv: list[str], what: str, timeout: float = MMDEBSTRAP_TIMEOUT) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise TestImageError(f"{what} took over {timeout:.0f}s") from e
    except FileNotFoundError as e:
        raise TestImageError(f"{what}: {argv[0]} is not installed (`make deps`)") from e
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-20:])
        raise TestImageError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result.stdout


def _rootfs_tarball(root: DebianRoot, into: Path) -> Path:
    tarball = into / f"{root.name}.rootfs.tar"
    _run(root.command(tarball), f"mmdebstrap ({root.name}, Debian {root.suite})")
    return tarball


def debian_layer(root: DebianRoot, directory: Path, printer: Printer) -> oci.Layer:
    """The cached layer of ``root``, made with mmdebstrap when missing."""
    key = root.key()
    path = directory / f"rootfs-{root.name}-{key}.tar"
    meta = path.with_suffix(".json")
    try:
        recorded = json.loads(meta.read_text())
        if path.stat().st_size == recorded["size"]:
            return oci.Layer(path, recorded["digest"], recorded["size"])
    except (OSError, ValueError, KeyError):
        pass
    started = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=f".{root.name}-") as tmp:
        tarball = _rootfs_tarball(root, Path(tmp))
        rewrite: dict[str, layers.Rewrite] = {}
        if root.passwd:
            rewrite["etc/passwd"] = lambda b: _add_lines(b, root.passwd)
        if root.group:
            rewrite["etc/group"] = lambda b: _add_lines(b, root.group)
        partial = path.with_suffix(".partial")
        with partial.open("wb") as f:
            layers.layer_from_tarball(tarball, f, rewrite)
        partial.rename(path)
    layer = oci.layer_of(path)
    meta.write_text(json.dumps({"digest": layer.digest, "size": layer.size}) + "\n")
    for old in directory.glob(f"rootfs-{root.name}-*.tar"):
        if old != path:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
    printer(f"  rootfs {root.name} (Debian {root.suite}): {layer.size / 1e6:.1f} MB "
            f"in {time.monotonic() - started:.0f}s")
    return layer


def _add_lines(text: bytes, lines: Sequence[str]) -> bytes:
    for line in lines:
        text = add_line(text, line)
    return text


AGNHOST_USER, AGNHOST_GROUP = "user-defined-in-image", "group-defined-in-image"
AGNHOST_ROOT = DebianRoot(
    "agnhost", "bookworm",
    # upstream's `apk add bind-tools curl netcat-openbsd iproute2 iperf bash util-linux-misc
    # socat`, by Debian's names
    ("bind9-dnsutils", "curl", "netcat-openbsd", "iproute2", "iperf", "bash", "util-linux",
     "socat", "ca-certificates"),
    passwd=(f"{AGNHOST_USER}:x:1000:1000::/home/{AGNHOST_USER}:/bin/sh",),
    group=(f"{AGNHOST_USER}:x:1000:", f"{AGNHOST_GROUP}:x:50000:{AGNHOST_USER}"),
)
NGINX_ROOT = DebianRoot(
    "nginx", "bookworm", ("nginx-light",),
    hooks=(
        # as the official image: its page in /usr/share/nginx/html, IPv4 :80, logs to the
        # container's output
        'sed -i -e "/listen \\[::\\]/d" -e "s#root /var/www/html;#root /usr/share/nginx/html;#" '
        '"$1"/etc/nginx/sites-available/default',
        'mkdir -p "$1"/usr/share/nginx/html && { [ -e "$1"/usr/share/nginx/html/index.html ] || '
        'cp "$1"/var/www/html/index.nginx-debian.html "$1"/usr/share/nginx/html/index.html; }',
        'mkdir -p "$1"/var/log/nginx && ln -sf /dev/stdout "$1"/var/log/nginx/access.log && '
        'ln -sf /dev/stderr "$1"/var/log/nginx/error.log',
    ),
)


# ---------------------------------------------------------------------------------------------
# Archives


@dataclass
class Context:
    cache: Path
    versions: Versions
    printer: Printer
    bins: dict[str, Path] = field(default_factory=dict)
    _source: Path | None = None

    @property
    def directory(self) -> Path:
        return self.cache / "test-images"

    def kubernetes_source(self) -> Path:
        """k8s.io/kubernetes at the Kubernetes version, from the Go module cache (downloaded
        through the module proxy if missing): the test images' files."""
        if self._source is None:
            with tempfile.TemporaryDirectory() as tmp:
                info = toolchain.GoBuilder(self.printer).module_info(
                    "k8s.io/kubernetes", self.versions.kubernetes, Path(tmp))
            self._source = Path(info["Dir"])
        return self._source


def _cached_archive(ctx: Context, name: str, key: str,
                    write: Callable[[Path], str]) -> BuiltImage:
    archive = ctx.directory / archive_name(name)
    meta = archive.with_suffix(".json")
    try:
        recorded = json.loads(meta.read_text())
        if recorded["key"] == key and archive.is_file():
            return BuiltImage(name, archive, recorded["digest"])
    except (OSError, ValueError, KeyError):
        pass
    ctx.directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    digest = write(archive)
    meta.write_text(json.dumps({"key": key, "digest": digest, "name": name}) + "\n")
    ctx.printer(f"  {name}: {archive.stat().st_size / 1e6:.1f} MB "
                f"in {time.monotonic() - started:.1f}s")
    return BuiltImage(name, archive, digest)


def _stat_key(*paths: Path) -> list[str]:
    out = []
    for p in paths:
        st = p.stat()
        out.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
    return out


def _tree_layer(files: dict[str, Path], links: dict[str, str], dirs: Sequence[str],
                out: Path) -> oci.Layer:
    """A layer of ``files`` (image path -> host file), ``links`` and empty ``dirs``."""
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tree-") as tmp:
        root = Path(tmp)
        for path, source in files.items():
            copy = root / path.lstrip("/")
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, copy)
            copy.chmod(0o755 if os.access(source, os.X_OK) else 0o644)
        for path, to in links.items():
            link = root / path.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(to)
        for directory in dirs:
            (root / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
        for made in (root, *[p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()]):
            made.chmod(0o755)
        with out.open("wb") as f:
            layers.layer_from_tree(root, f)
    return oci.layer_of(out)


def _runtime(entrypoint: Sequence[str] = (), cmd: Sequence[str] = (), user: str = "",
             labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"Env": list(oci.DEFAULT_ENV), "WorkingDir": "/"}
    if entrypoint:
        config["Entrypoint"] = list(entrypoint)
    if cmd:
        config["Cmd"] = list(cmd)
    if user:
        config["User"] = user
    if labels:
        config["Labels"] = dict(labels)
    return {**config, **extra}


def agnhost_top_files(ctx: Context) -> tuple[dict[str, Path], dict[str, str], list[str]]:
    """What upstream's Dockerfile adds over its base: files, symlinks, directories."""
    porter = ctx.kubernetes_source() / "test" / "images" / "agnhost" / "porter"
    files = {"/agnhost": ctx.bins["agnhost"] / "agnhost",
             "/localhost.crt": porter / "localhost.crt",
             "/localhost.key": porter / "localhost.key"}
    if "coredns" in ctx.bins:
        files["/coredns"] = ctx.bins["coredns"] / "coredns"
    links = {"/agnhost-2": "agnhost", "/usr/local/bin/iperf": "/usr/bin/iperf"}
    return files, links, ["/uploads", f"/home/{AGNHOST_USER}"]


def agnhost_layers(ctx: Context) -> tuple[list[oci.Layer], str]:
    """The agnhost image's two layers (Debian, agnhost's files) and their key."""
    base = debian_layer(AGNHOST_ROOT, ctx.directory, ctx.printer)
    files, links, dirs = agnhost_top_files(ctx)
    key = _key(LAYOUT, base.digest, _stat_key(*files.values()), links, dirs)
    top_path = ctx.directory / f"layer-agnhost-{key}.tar"
    if not top_path.is_file():
        top = _tree_layer(files, links, dirs, top_path.with_suffix(".partial"))
        top.path.rename(top_path)
    return [base, oci.layer_of(top_path)], key


def agnhost_images(ctx: Context) -> list[BuiltImage]:
    parts, key = agnhost_layers(ctx)
    built = []
    for tag in AGNHOST_TAGS:
        name = f"{E2E}/agnhost:{tag}"
        config = _runtime(("/agnhost",), ("pause",), labels={
            "org.opencontainers.image.version": tag,
            "haku.dev/agnhost-build": (ctx.bins["agnhost"] / "agnhost.version").read_text()
            .strip()})
        config["ExposedPorts"] = {f"{p}/tcp": {} for p in (80, 8080, 8081, 9376, 5000)}

        def write(out: Path, config: dict[str, Any] = config, name: str = name) -> str:
            return oci.write_layered_image(name, config, parts, out)

        built.append(_cached_archive(ctx, name, _key(key, config), write))
    return built


def webserver_images(ctx: Context) -> list[BuiltImage]:
    """nautilus and kitten: agnhost plus a picture and data.json, ``test-webserver``."""
    parts, key = agnhost_layers(ctx)
    built = []
    for image, (tag, picture) in WEBSERVER_TAGS.items():
        html = ctx.kubernetes_source() / "test" / "images" / image / "html"
        files = {f"/{picture}": html / picture, "/data.json": html / "data.json"}
        name = f"{E2E}/{image}:{tag}"
        ikey = _key(key, name, _stat_key(*files.values()))

        def write(out: Path, files: dict[str, Path] = files, name: str = name) -> str:
            top = _tree_layer(files, {}, [], out.with_suffix(".layer"))
            try:
                return oci.write_layered_image(
                    name, _runtime(("/agnhost",), ("test-webserver",)), [*parts, top], out)
            finally:
                top.path.unlink(missing_ok=True)

        built.append(_cached_archive(ctx, name, ikey, write))
    return built


def glibc_dns_image(ctx: Context) -> BuiltImage:
    base = debian_layer(AGNHOST_ROOT, ctx.directory, ctx.printer)
    files: dict[str, Path] = {}
    if "coredns" in ctx.bins:
        files["/coredns"] = ctx.bins["coredns"] / "coredns"
    name = f"{E2E}/glibc-dns-testing:{GLIBC_DNS_TAG}"

    def write(out: Path) -> str:
        top = _tree_layer(files, {}, [], out.with_suffix(".layer"))
        try:
            return oci.write_layered_image(name, _runtime(cmd=("bash",)), [base, top], out)
        finally:
            top.path.unlink(missing_ok=True)

    return _cached_archive(ctx, name, _key(LAYOUT, base.digest, _stat_key(*files.values())),
                           write)


def nginx_image(ctx: Context) -> BuiltImage:
    base = debian_layer(NGINX_ROOT, ctx.directory, ctx.printer)
    name = f"{E2E}/nginx:{NGINX_TAG}"
    config = _runtime(cmd=("nginx", "-g", "daemon off;"), StopSignal="SIGQUIT",
                      ExposedPorts={"80/tcp": {}})
    return _cached_archive(ctx, name, _key(LAYOUT, base.digest, config),
                           lambda out: oci.write_layered_image(name, config, [base], out))


# Upstream's busybox 1.37.0 release, unmodified: Debian's pool serves it as the "orig" tarball
# of its package (Debian's own build reverts upstream's ash change that passes environment
# names such as data-1 on to children, which four Conformance tests rely on).
BUSYBOX_VERSION = "1.37.0"
BUSYBOX_SOURCE = f"{DEBIAN}/pool/main/b/busybox/busybox_{BUSYBOX_VERSION}.orig.tar.bz2"
BUSYBOX_SHA256 = "3311dff32e746499f4df0d5df04d7eb396382d7e108bb9250e7b519b837043a4"
BUSYBOX_BUILD_TIMEOUT = 20 * 60.0


def busybox_binary(ctx: Context) -> Path:
    """busybox 1.37.0 built from upstream's release with its default configuration, static
    (as the official image the e2e image mirrors), cached; ``HAKU_BUSYBOX=host`` takes
    /bin/busybox."""
    if os.environ.get("HAKU_BUSYBOX") == "host":
        return Path("/bin/busybox")
    key = _key(LAYOUT, BUSYBOX_SOURCE, BUSYBOX_SHA256, "defconfig", "CONFIG_STATIC=y")
    out = ctx.directory / f"busybox-{key}" / "busybox"
    if out.is_file():
        return out
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        tarball = Path(tmp) / "busybox.tar.bz2"
        ctx.printer(f"  busybox {BUSYBOX_VERSION}: fetching upstream's release ({BUSYBOX_SOURCE})")
        try:
            with urllib.request.urlopen(BUSYBOX_SOURCE, timeout=300) as got, \
                    tarball.open("wb") as f:  # noqa: S310 - a fixed https/http URL, sha-checked
                shutil.copyfileobj(got, f)
        except OSError as e:
            raise TestImageError(f"downloading {BUSYBOX_SOURCE}: {e}") from e
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
        if digest != BUSYBOX_SHA256:
            raise TestImageError(f"{BUSYBOX_SOURCE} has sha256 {digest}, not {BUSYBOX_SHA256}")
        _run(["tar", "-xjf", str(tarball), "-C", tmp], "tar (busybox source)", 120)
        source = Path(tmp) / f"busybox-{BUSYBOX_VERSION}"
        _run(["make", "-C", str(source), "defconfig"], "busybox make defconfig", 300)
        config = source / ".config"
        config.write_text(config.read_text().replace("# CONFIG_STATIC is not set",
                                                     "CONFIG_STATIC=y"))
        ctx.printer(f"  busybox {BUSYBOX_VERSION}: make (1-2 min on 2 cores)")
        _run(["make", "-C", str(source), f"-j{os.cpu_count() or 2}"], "busybox make",
             BUSYBOX_BUILD_TIMEOUT)
        shutil.copyfile(source / "busybox", out.with_suffix(".tmp"))
        out.with_suffix(".tmp").chmod(0o755)
        out.with_suffix(".tmp").rename(out)
    ctx.printer(f"  busybox {BUSYBOX_VERSION} built from upstream's release in "
                f"{time.monotonic() - started:.0f}s")
    return out


def busybox_applets(binary: Path) -> list[str]:
    listed = _run([str(binary), "--list"], "busybox --list", 30).split()
    return sorted({a for a in listed if a and "/" not in a and a != "busybox"})


BUSYBOX_PASSWD = (b"root:x:0:0:root:/root:/bin/sh\n"
                  b"daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
                  b"nobody:x:65534:65534:nobody:/home:/bin/false\n")
BUSYBOX_GROUP = b"root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n"


def busybox_spec(binary: Path, name: str, extra: Sequence[oci.LayerFile] = (),
                 cmd: Sequence[str] = ("sh",)) -> oci.ImageSpec:
    """Upstream's busybox image: /bin/busybox, every applet beside it, a minimal /etc."""
    return oci.ImageSpec(
        name=name, entrypoint=(), cmd=tuple(cmd),
        files=(oci.LayerFile("/bin/busybox", source=binary),
               oci.LayerFile("/etc/passwd", data=BUSYBOX_PASSWD, mode=0o644),
               oci.LayerFile("/etc/group", data=BUSYBOX_GROUP, mode=0o644),
               *extra),
        symlinks=tuple((f"/bin/{a}", "busybox") for a in busybox_applets(binary)),
    )


def busybox_images(ctx: Context) -> list[BuiltImage]:
    binary = busybox_binary(ctx)
    nnp = images.compile_static(ctx.cache, "nnp.c", "nnp", "the nonewprivs image")
    specs = [
        busybox_spec(binary, f"{E2E}/busybox:{BUSYBOX_TAG}"),
        busybox_spec(binary, f"{E2E}/nonewprivs:{NONEWPRIVS_TAG}",
                     [oci.LayerFile("/usr/local/bin/nnp", source=nnp, mode=0o4755)],
                     cmd=("nnp",)),
    ]
    built = []
    for spec in specs:
        key = _key(LAYOUT, images._spec_key(spec))

        def write(out: Path, spec: oci.ImageSpec = spec) -> str:
            return oci.write_image(spec, out)

        built.append(_cached_archive(ctx, spec.name, key, write))
    return built


def sample_apiserver_image(ctx: Context) -> BuiltImage:
    """``/sample-apiserver`` (k8s.io/sample-apiserver at the Kubernetes version's staging
    version, the cached ``sample-apiserver`` component) as the entrypoint, as upstream's."""
    spec = oci.ImageSpec(
        name=f"{E2E}/sample-apiserver:{SAMPLE_APISERVER_TAG}",
        entrypoint=("/sample-apiserver",),
        files=(oci.LayerFile("/sample-apiserver",
                             source=ctx.bins["sample-apiserver"] / "sample-apiserver"),))
    return _cached_archive(ctx, spec.name, _key(LAYOUT, images._spec_key(spec)),
                           lambda out: oci.write_image(spec, out))


def haku_images(ctx: Context) -> list[tuple[BuiltImage, list[str]]]:
    """pause and etcd as the dev cluster writes them, and the tags e2e.test adds."""
    pause = images.build_pause(ctx.cache)
    wanted = {f"registry.k8s.io/pause:{ctx.versions.pause}",
              f"registry.k8s.io/etcd:{etcd_image_tag(ctx.versions.etcd)}"}
    specs = [s for s in images.image_specs(ctx.bins, ctx.versions, pause) if s.name in wanted]
    built = images.build_archives(specs, ctx.cache)
    return [(b, [ETCD_E2E_TAG] if b.name.startswith("registry.k8s.io/etcd:") else [])
            for b in built]


# ---------------------------------------------------------------------------------------------
# Build and push


# In the order the issue gives; each builder returns its images.
BUILDERS: dict[str, Callable[[Context], list[BuiltImage]]] = {
    "agnhost": agnhost_images,
    "busybox": busybox_images,  # with nonewprivs, on the same busybox
    "glibc-dns-testing": lambda ctx: [glibc_dns_image(ctx)],
    "nginx": lambda ctx: [nginx_image(ctx)],
    "webservers": webserver_images,  # nautilus and kitten
    "sample-apiserver": lambda ctx: [sample_apiserver_image(ctx)],  # a Go build (minutes)
}
GROUPS = ("haku", *BUILDERS)  # "haku": pause and etcd


def provided(versions: Versions) -> dict[str, str]:
    """Every image reference the groups give (extra tags included) -> its group."""
    refs = {f"registry.k8s.io/pause:{versions.pause}": "haku",
            f"registry.k8s.io/etcd:{etcd_image_tag(versions.etcd)}": "haku",
            f"registry.k8s.io/etcd:{ETCD_E2E_TAG}": "haku",
            f"{E2E}/busybox:{BUSYBOX_TAG}": "busybox",
            f"{E2E}/nonewprivs:{NONEWPRIVS_TAG}": "busybox",
            f"{E2E}/glibc-dns-testing:{GLIBC_DNS_TAG}": "glibc-dns-testing",
            f"{E2E}/nginx:{NGINX_TAG}": "nginx",
            f"{E2E}/sample-apiserver:{SAMPLE_APISERVER_TAG}": "sample-apiserver"}
    refs |= {f"{E2E}/agnhost:{tag}": "agnhost" for tag in AGNHOST_TAGS}
    refs |= {f"{E2E}/{name}:{tag}": "webservers" for name, (tag, _) in WEBSERVER_TAGS.items()}
    return refs


@dataclass
class Pushed:
    image: str
    tags: list[str]
    digest: str
    uploaded: int
    seconds: float


@dataclass
class Report:
    built: list[BuiltImage] = field(default_factory=list)
    pushed: list[Pushed] = field(default_factory=list)
    build_seconds: float = 0.0
    push_seconds: float = 0.0


def build(groups: Sequence[str], versions: Versions, cache: Path | None = None,
          printer: Printer = print) -> list[tuple[BuiltImage, list[str]]]:
    """Build (or take from the cache) the images of ``groups``; each with its extra tags."""
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise TestImageError(f"unknown test images {unknown}: choose from {', '.join(GROUPS)}")
    cache = cache or toolchain.cache_root()
    wanted = ["kubernetes", "etcd", "kine", "coredns"]  # what images.image_specs reads
    if {"agnhost", "webservers"} & set(groups):
        wanted.append("agnhost")
    if "sample-apiserver" in groups:
        wanted.append("sample-apiserver")
    ctx = Context(cache, versions, printer, toolchain.ensure(wanted, versions, cache))
    out: list[tuple[BuiltImage, list[str]]] = []
    for group in GROUPS:
        if group not in groups:
            continue
        if group == "haku":
            out += haku_images(ctx)
        else:
            out += [(b, []) for b in BUILDERS[group](ctx)]
    return out


def push(built: Sequence[tuple[BuiltImage, list[str]]], endpoint: str,
         printer: Printer = print) -> list[Pushed]:
    client = distribution.Client(endpoint)
    if not client.ping():
        raise TestImageError(f"no registry answers at http://{endpoint}/v2/: start the dev "
                             "cluster (`haku dev up`)")
    pushed: list[Pushed] = []
    repositories: list[str] = []
    for image, tags in built:
        result = distribution.push_archive(client, image.archive, image.name, tags,
                                           mount_from=repositories)
        repositories.append(result.repository)
        if result.digest != image.digest:
            raise TestImageError(f"{image.name}: pushed {result.digest}, built {image.digest}")
        printer(f"  pushed {image.name}{' +' + ','.join(tags) if tags else ''} "
                f"{result.digest[:19]} ({result.uploaded / 1e6:.1f} MB sent, "
                f"{result.existing} blobs there, {result.mounted} mounted) "
                f"in {result.seconds:.1f}s")
        pushed.append(Pushed(image.name, result.tags, result.digest, result.uploaded,
                             result.seconds))
    return pushed


def build_and_push(groups: Sequence[str], versions: Versions, endpoint: str | None,
                   cache: Path | None = None, printer: Printer = print) -> Report:
    report = Report()
    started = time.monotonic()
    built = build(groups, versions, cache, printer)
    report.built = [b for b, _ in built]
    report.build_seconds = time.monotonic() - started
    if endpoint:
        started = time.monotonic()
        report.pushed = push(built, endpoint, printer)
        report.push_seconds = time.monotonic() - started
    return report
