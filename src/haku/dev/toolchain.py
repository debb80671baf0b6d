"""Build the upstream binaries from the Go module proxy, cached per version.

Kubernetes, etcd, kine, CoreDNS, kube-network-policies, metrics-server and Helm are compiled from
their published Go modules at the versions pinned in :mod:`haku.dev.versions` (so are, for the
conformance run of issue 16, Kubernetes' ``e2e.test`` and ``agnhost`` and CNCF Distribution's
``registry``: :mod:`haku.dev.conformance`); Konnectivity (whose module path the proxy refuses)
from its release tarball in the project's ``shared/third_party`` (:func:`third_party_dir`), its
dependencies from the proxy. Results land in
``~/.cache/haku/bin/<component>-<version>/`` (``HAKU_CACHE`` overrides the root); a stamp file
written last marks a finished build, so an interrupted one is redone rather than trusted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from haku.dev.versions import Versions, parse_semver, staging_version
from haku.errors import CommandTimedOut, HakuError

KUBERNETES_COMMANDS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubeadm",
    "kubectl",
)
STAMP = ".haku-built"

# Timeouts, generous: a cold Kubernetes build takes ~8 min on 2 cores, its module download 1-3.
GO_BUILD_TIMEOUT = 40 * 60.0  # one `go build`
GO_COMMAND_TIMEOUT = 20 * 60.0  # `go mod download`, `go get`
# `go test -c k8s.io/kubernetes/test/e2e`: ~14 CPU-minutes cold (an empty Go build cache), 19
# minutes' wall on a busy 2-core machine, 27 as issue 16 measured it (docs/conformance.md).
E2E_BUILD_TIMEOUT = 120 * 60.0
GO_LIST_TIMEOUT = 2 * 60.0  # `go list -m -versions`: one request to the module proxy
GO_HINT = ("check the network and the Go module proxy (GOPROXY, default proxy.golang.org), "
           "then run it again: finished components stay cached")

# The Go module each component is built from, and how a user picks another version of it.
MODULES = {
    "kubernetes": "k8s.io/kubernetes",
    "etcd": "go.etcd.io/etcd/server/v3",
    "kine": "github.com/k3s-io/kine",
    "coredns": "github.com/coredns/coredns",
    "kube-network-policies": "sigs.k8s.io/kube-network-policies",
    "metrics-server": "sigs.k8s.io/metrics-server",
    "helm": "helm.sh/helm/v4",
    # Built from k8s.io/kubernetes at the Kubernetes version, like the kubernetes component.
    "e2e": "k8s.io/kubernetes",
    "agnhost": "k8s.io/kubernetes",
    "registry": "github.com/distribution/distribution/v3",
    # The conformance image sample-apiserver: the staging module at the Kubernetes version's
    # v0.MINOR.PATCH.
    "sample-apiserver": "k8s.io/sample-apiserver",
    # Exposure in the dev cluster (issue 17, docs/exposure.md): Traefik runs there with `haku
    # dev exposure up`, MetalLB with `haku dev loadbalancer`.
    "traefik": "github.com/traefik/traefik/v3",
    "metallb": "go.universe.tf/metallb",
}
# Components built from a source tarball rather than the module proxy: the file in
# third_party_dir(), by version.
TARBALLS = {
    "konnectivity": "apiserver-network-proxy-{version}.tar.gz",
}
VERSION_SETTINGS = {
    "k8s.io/kubernetes": "pass --kubernetes-version / set HAKU_KUBERNETES_VERSION",
    "go.etcd.io/etcd/server/v3": "set HAKU_ETCD_VERSION",
    "github.com/k3s-io/kine": "set HAKU_KINE_VERSION",
    "github.com/coredns/coredns": "set HAKU_COREDNS_VERSION",
    "sigs.k8s.io/kube-network-policies": "set HAKU_KUBE_NETWORK_POLICIES_VERSION",
    "sigs.k8s.io/metrics-server": "set HAKU_METRICS_SERVER_VERSION",
    "helm.sh/helm/v4": "set HAKU_HELM_VERSION (a v4 release)",
    "github.com/distribution/distribution/v3": "set HAKU_REGISTRY_VERSION (a v3 release)",
    "k8s.io/sample-apiserver": "pass --kubernetes-version / set HAKU_KUBERNETES_VERSION "
                               "(its staging v0.MINOR.PATCH)",
    "github.com/traefik/traefik/v3": "set HAKU_TRAEFIK_VERSION (a v3 release)",
    "go.universe.tf/metallb": "set HAKU_METALLB_VERSION",
}

Progress = Callable[[str], None]


class ToolchainError(HakuError):
    """A build that cannot go on, with a message that says what to do."""


def cache_root(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    if "HAKU_CACHE" in env:
        return Path(env["HAKU_CACHE"])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "haku"


@dataclass(frozen=True)
class Component:
    """One cached build: a name, a version and the binaries it yields."""

    name: str
    version: str
    binaries: tuple[str, ...]

    def directory(self, root: Path) -> Path:
        return root / "bin" / f"{self.name}-{self.version}"

    def is_built(self, root: Path) -> bool:
        d = self.directory(root)
        return (d / STAMP).is_file() and all((d / b).is_file() for b in self.binaries)


def components(versions: Versions) -> dict[str, Component]:
    return {
        "kubernetes": Component("kubernetes", versions.kubernetes, KUBERNETES_COMMANDS),
        "etcd": Component("etcd", versions.etcd, ("etcd", "etcdctl")),
        "kine": Component("kine", versions.kine, ("kine",)),
        "coredns": Component("coredns", versions.coredns, ("coredns",)),
        "kube-network-policies": Component(
            "kube-network-policies", versions.kube_network_policies, ("kube-network-policies",)),
        "konnectivity": Component(
            "konnectivity", versions.konnectivity, KONNECTIVITY_BINARIES),
        "metrics-server": Component(
            "metrics-server", versions.metrics_server, ("metrics-server",)),
        "helm": Component("helm", versions.helm, ("helm",)),
        # The conformance run (issue 16): upstream's test binary and test-image server at the
        # Kubernetes version, and the CNCF Distribution registry.
        "e2e": Component("e2e", versions.kubernetes, (E2E_BINARY,)),
        "agnhost": Component("agnhost", versions.kubernetes, ("agnhost",)),
        "registry": Component("registry", versions.registry, ("registry",)),
        "sample-apiserver": Component(
            "sample-apiserver", staging_version(versions.kubernetes), ("sample-apiserver",)),
        # Exposure (issue 17): Traefik, and MetalLB's two commands (its CRDs beside them).
        "traefik": Component("traefik", versions.traefik, ("traefik",)),
        "metallb": Component("metallb", versions.metallb,
                             (*METALLB_BINARIES, METALLB_MANIFEST)),
    }


E2E_BINARY = "e2e.test"
E2E_PACKAGE = "k8s.io/kubernetes/test/e2e"
AGNHOST_PACKAGE = "k8s.io/kubernetes/test/images/agnhost"
# Upstream's build tags for every Kubernetes binary (hack/lib/golang.sh, non-debug builds),
# test binaries included.
KUBERNETES_BUILD_TAGS = "selinux,notest,grpcnotrace"


# Konnectivity's two commands, under the names upstream's images give them.
KONNECTIVITY_BINARIES = ("proxy-server", "proxy-agent")
KONNECTIVITY_PACKAGES = {"proxy-server": "./cmd/server", "proxy-agent": "./cmd/agent"}


def third_party_dir(env: dict[str, str] | None = None) -> Path:
    """Where upstream sources the module proxy does not serve are kept: ``HAKU_THIRD_PARTY_DIR``,
    else ``shared/third_party`` beside the repository (``<repo>/../shared/third_party``)."""
    env = dict(os.environ) if env is None else env
    if env.get("HAKU_THIRD_PARTY_DIR"):
        return Path(env["HAKU_THIRD_PARTY_DIR"])
    repo = Path(__file__).resolve().parents[3]  # src/haku/dev/toolchain.py
    return repo.parent / "shared" / "third_party"


def source_tarball(name: str, version: str, env: dict[str, str] | None = None) -> Path:
    """The tarball ``name`` (a key of :data:`TARBALLS`) is built from; a clear error if absent."""
    path = third_party_dir(env) / TARBALLS[name].format(version=version)
    if not path.is_file():
        raise ToolchainError(
            f"{name} {version} is not built and its source {path.name} is not in "
            f"{path.parent}: put the upstream release tarball there, or point "
            "HAKU_THIRD_PARTY_DIR at the directory holding it (the module proxy does not "
            f"serve {name})")
    return path


# ---------------------------------------------------------------------------------------------
# Pure parts: module files and linker flags


def kubernetes_consumer_gomod(kubernetes_gomod: str, version: str) -> str:
    """A go.mod that builds k8s.io/kubernetes@version as a dependency.

    k8s.io/kubernetes requires its staging modules at v0.0.0 and points them at ./staging with
    ``replace``; a consumer must replace each with the published v0.MINOR.PATCH instead. The
    list comes from the tag's own go.mod so it stays right across minors.
    """
    staging = staging_version(version)
    directives = [
        line.strip()
        for line in kubernetes_gomod.splitlines()
        if re.match(r"^(go|godebug) ", line.strip())
    ]
    modules = re.findall(
        r"^\s*(k8s\.io/[a-z0-9-]+) => \./staging/src/k8s\.io/", kubernetes_gomod, re.MULTILINE
    )
    if not modules:
        raise ToolchainError(f"k8s.io/kubernetes {version}: go.mod lists no staging modules")
    lines = ["module local.invalid/haku-k8s-build", "", *directives, ""]
    lines.append(f"require k8s.io/kubernetes {version}")
    lines.append("")
    lines += [f"replace {m} => {m} {staging}" for m in sorted(set(modules))]
    return "\n".join(lines) + "\n"


def kubernetes_ldflags(version: str, build_date: datetime) -> str:
    """Version stamping as upstream's hack/lib/version.sh does it."""
    _, minor, _ = parse_semver(version, what="kubernetes")
    stamp = build_date.strftime("%Y-%m-%dT%H:%M:%SZ")
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor=1",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={stamp}",
        ]
    return " ".join(flags)


def nearest_versions(available: Iterable[str], wanted: str, count: int = 5) -> list[str]:
    """Stable versions closest to ``wanted`` (same minor first, then the newest)."""
    stable = [v for v in available if re.fullmatch(r"v\d+\.\d+\.\d+", v)]
    stable.sort(key=lambda v: parse_semver(v))
    try:
        _, minor, _ = parse_semver(wanted)
    except ValueError:
        return stable[-count:]
    same_minor = [v for v in stable if parse_semver(v)[1] == minor]
    picks = same_minor[-count:] or stable[-count:]
    return picks


# ---------------------------------------------------------------------------------------------
# I/O: running go


class GoBuilder:
    """Runs ``go`` with a fixed environment and reports progress while it works."""

    def __init__(self, progress: Progress | None = None, report_every: float = 15.0) -> None:
        self.progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
        self.report_every = report_every
        go = shutil.which("go")
        if go is None:
            for candidate in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go"):
                if os.access(candidate, os.X_OK):
                    go = candidate
                    break
        if go is None:
            raise ToolchainError(
                "the Go toolchain (go >= 1.26) is not installed: install it, then run "
                "`make deps` again"
            )
        self.go = go
        self.env = {
            **os.environ,
            "GOTOOLCHAIN": "local",
            "CGO_ENABLED": "0",
            "GOFLAGS": "-mod=mod",
        }

    def _run(self, args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.go, *args], cwd=cwd, env=self.env, capture_output=True, text=True,
                check=False, timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise CommandTimedOut(f"go {' '.join(args)}", timeout, e.stderr, GO_HINT) from e

    def output(self, args: list[str], cwd: Path) -> str:
        result = self._run(args, cwd, GO_COMMAND_TIMEOUT)
        if result.returncode != 0:
            raise ToolchainError(f"go {' '.join(args)} failed:\n{result.stderr.strip()[-3000:]}")
        return result.stdout

    def list_versions(self, module: str, cwd: Path) -> list[str] | None:
        """The versions the module proxy serves for ``module``; None if it cannot be asked."""
        try:
            listing = self._run(["list", "-m", "-versions", module], cwd, GO_LIST_TIMEOUT)
        except CommandTimedOut:
            return None
        if listing.returncode != 0:
            return None
        return listing.stdout.split()[1:]

    def unknown_version(self, module: str, version: str, reason: str, cwd: Path) -> ToolchainError:
        """The error for a version that cannot be fetched: why, and which to pick instead."""
        return ToolchainError(unknown_version_message(
            module, version, reason, self.list_versions(module, cwd)))

    def check_version(self, module: str, version: str, cwd: Path) -> None:
        """``go list -m module@version``: asks the proxy for the version's metadata only."""
        result = self._run(["list", "-m", "-json", f"{module}@{version}"], cwd, GO_LIST_TIMEOUT)
        if result.returncode != 0:
            raise self.unknown_version(module, version, _go_reason(result.stderr), cwd)

    def module_info(self, module: str, version: str, cwd: Path) -> dict[str, str]:
        """``go mod download -json``; raises a clear error for a version the proxy lacks."""
        result = self._run(["mod", "download", "-json", f"{module}@{version}"], cwd,
                           GO_COMMAND_TIMEOUT)
        try:
            info: dict[str, str] = json.loads(result.stdout) if result.stdout.strip() else {}
        except json.JSONDecodeError:
            info = {}
        if result.returncode != 0 or "Error" in info or "GoMod" not in info:
            reason = info.get("Error") or _go_reason(result.stderr)
            raise self.unknown_version(module, version, reason, cwd)
        return info

    def build(self, args: list[str], cwd: Path, label: str,
              timeout: float | None = None,
              command: tuple[str, ...] = ("build", "-v")) -> None:
        """``go build -v …`` with a progress line every ``report_every`` seconds.

        Stopped (with go's whole process group) after ``timeout`` seconds (default
        :data:`GO_BUILD_TIMEOUT`), raising :class:`CommandTimedOut`. ``command`` replaces
        ``build -v``: ``("test", "-c")`` compiles a test binary (go names no packages then, so
        the progress lines give the time only).
        """
        timeout = GO_BUILD_TIMEOUT if timeout is None else timeout
        started = time.monotonic()
        compiled = 0
        last = ""
        tail: list[str] = []
        lock = threading.Lock()
        done = threading.Event()
        timed_out = threading.Event()
        proc = subprocess.Popen(
            [self.go, *command, *args],
            cwd=cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # so a timeout or an interrupt stops go's compilers too
        )

        def reporter() -> None:
            deadline = started + timeout
            next_report = started + self.report_every
            while not done.wait(max(0.0, min(next_report, deadline) - time.monotonic())):
                now = time.monotonic()
                if now >= deadline:
                    timed_out.set()
                    kill_group(proc)
                    return
                if now >= next_report:
                    next_report += self.report_every
                    with lock:
                        elapsed = int(now - started)
                        if command[0] != "build" and not compiled:
                            self.progress(f"  {label}: {elapsed // 60}m{elapsed % 60:02d}s, "
                                          f"go {' '.join(command)} compiling")
                            continue
                        self.progress(
                            f"  {label}: {elapsed // 60}m{elapsed % 60:02d}s, "
                            f"{compiled} packages compiled (now {last or 'resolving modules'})"
                        )

        thread = threading.Thread(target=reporter, daemon=True)
        thread.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                with lock:
                    if line and " " not in line:
                        compiled += 1
                        last = line
                    tail.append(line)
                    del tail[:-40]
            code = proc.wait()
        finally:
            done.set()
            if proc.poll() is None:  # interrupted: do not leave go compiling in the background
                kill_group(proc)
                proc.wait()
            thread.join()
            if proc.stdout is not None:
                proc.stdout.close()
        if timed_out.is_set():
            raise CommandTimedOut(f"go build of {label}", timeout, "\n".join(tail), GO_HINT)
        if code != 0:
            raise ToolchainError(f"building {label} failed:\n" + "\n".join(tail))
        elapsed = time.monotonic() - started
        if command[0] != "build" and not compiled:  # go test -c names no packages
            self.progress(f"  {label}: built in {elapsed:.0f}s")
            return
        self.progress(f"  {label}: built in {elapsed:.0f}s ({compiled} packages compiled)")


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL ``proc``'s process group (started with ``start_new_session``), if any left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _go_reason(stderr: str) -> str:
    """go's error, on one line, without its ``go: `` prefix."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return " ".join(lines).removeprefix("go: ")[-600:] or "no output"


def unknown_version_message(module: str, version: str, reason: str,
                            known: list[str] | None) -> str:
    """What failed, and what to do: the nearest versions the proxy serves and how to pick one."""
    setting = VERSION_SETTINGS.get(module, "choose another version")
    near = nearest_versions(known or [], version)
    if near:
        hint = (f"; versions the proxy serves include {', '.join(near)}: {setting} to one of "
                "these")
    elif known is None:
        hint = f"; {GO_HINT}, or {setting} to a version the proxy serves"
    else:
        hint = f"; {setting} to a version the proxy serves (`go list -m -versions {module}`)"
    return f"{module}@{version} cannot be fetched ({reason}){hint}"


def check_available(
    names: Iterable[str], versions: Versions | None = None, root: Path | None = None,
    progress: Progress | None = None,
) -> None:
    """Fail fast for a version that is neither cached nor served by the module proxy.

    Cached components cost nothing (no go, no network); for the others one small request per
    component asks the proxy for the version's metadata. Raises :class:`ToolchainError`
    naming the nearest versions it serves and how to choose one.
    """
    versions = versions or Versions.from_env()
    root = root or cache_root()
    table = components(versions)
    builder: GoBuilder | None = None
    for name in names:
        c = table[name]
        if c.is_built(root):
            continue
        if name in TARBALLS:
            source_tarball(name, c.version)
            continue
        builder = builder or GoBuilder(progress)
        with tempfile.TemporaryDirectory(prefix="haku-version-check-") as tmp:
            builder.check_version(MODULES[name], c.version, Path(tmp))


def _finish(component: Component, staging: Path, root: Path, details: dict[str, str]) -> Path:
    """Move a finished build into the cache and write the stamp last."""
    target = component.directory(root)
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(target))
    stamp = {"component": component.name, "version": component.version, **details}
    (target / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    return target


def _kubernetes_consumer_module(version: str, go: GoBuilder, work: Path) -> dict[str, str]:
    """``work`` as a module requiring k8s.io/kubernetes@version with its staging modules
    replaced by the published ones (:func:`kubernetes_consumer_gomod`), modules downloaded.
    Returns ``go mod download -json``'s record of k8s.io/kubernetes (``Dir``: its source)."""
    info = go.module_info("k8s.io/kubernetes", version, work)
    gomod = Path(info["GoMod"]).read_text()
    (work / "go.mod").write_text(kubernetes_consumer_gomod(gomod, version))
    go.progress(f"  kubernetes {version}: resolving modules (first time: 1-3 min)")
    go.output(["mod", "download", "k8s.io/kubernetes"], work)
    return info


def _build_kubernetes(c: Component, go: GoBuilder, work: Path, out: Path) -> None:
    _kubernetes_consumer_module(c.version, go, work)
    go.output(["get", f"k8s.io/kubernetes/cmd/kube-apiserver@{c.version}"], work)
    ldflags = kubernetes_ldflags(c.version, datetime.now(UTC))
    go.build(
        [
            "-trimpath",
            "-tags",
            KUBERNETES_BUILD_TAGS,
            "-ldflags",
            ldflags,
            "-o",
            str(out) + "/",
            *(f"k8s.io/kubernetes/cmd/{b}" for b in c.binaries),
        ],
        work,
        f"kubernetes {c.version}",
    )


def _build_etcd(c: Component, go: GoBuilder, work: Path, out: Path) -> None:
    # etcd's own go.mod has replace directives, so `go install …@version` refuses; build it
    # from a consumer module instead. Its root packages are `main`.
    go.module_info("go.etcd.io/etcd/server/v3", c.version, work)
    (work / "go.mod").write_text("module local.invalid/haku-etcd-build\n\ngo 1.26.0\n")
    go.output(["get", f"go.etcd.io/etcd/server/v3@{c.version}"], work)
    go.output(["get", f"go.etcd.io/etcd/etcdctl/v3@{c.version}"], work)
    ldflags = "-s -w"
    go.build(
        ["-trimpath", "-ldflags", ldflags, "-o", str(out / "etcd"), "go.etcd.io/etcd/server/v3"],
        work,
        f"etcd {c.version}",
    )
    go.build(
        ["-trimpath", "-ldflags", ldflags, "-o", str(out / "etcdctl"),
         "go.etcd.io/etcd/etcdctl/v3"],
        work,
        f"etcdctl {c.version}",
    )


# ldflags of a module build: a format string (``{version}``), or a function of the version and
# ``go mod download -json``'s record of the module (for the commit: :func:`_module_commit`).
LdFlags = str | Callable[[str, dict[str, str]], str]


def _consumer_module(module: str, version: str, name: str, go: GoBuilder,
                     work: Path) -> dict[str, str]:
    """``work`` as a module of its own requiring ``module@version`` (for a module whose go.mod
    has no replaces: it resolves the same dependency versions). Returns ``go mod download
    -json``'s record of the module."""
    info = go.module_info(module, version, work)
    (work / "go.mod").write_text(f"module local.invalid/haku-{name}-build\n\ngo 1.26.0\n")
    go.output(["get", f"{module}@{version}"], work)
    return info


def _build_module_root(module: str, binary: str, ldflags: LdFlags, package: str = "") -> Builder:
    """Builder for a module whose go.mod has no replaces and whose ``main`` package is its root
    (or ``package``, a path inside it)."""
    target = f"{module}/{package}" if package else module

    def build(c: Component, go: GoBuilder, work: Path, out: Path) -> None:
        info = _consumer_module(module, c.version, binary, go, work)
        flags = ldflags.format(version=c.version) if isinstance(ldflags, str) \
            else ldflags(c.version, info)
        go.build(
            ["-trimpath", "-ldflags", flags, "-o", str(out / binary), target],
            work,
            f"{binary} {c.version}",
        )

    return build


def metrics_server_ldflags(version: str, commit: str, build_date: datetime) -> str:
    """Upstream's Makefile: the version in client-go's version package (``-w`` there; ``-s``
    too here, like the other components)."""
    pkg = "k8s.io/client-go/pkg/version"
    flags = ["-s", "-w", f"-X {pkg}.gitVersion={version}",
             f"-X {pkg}.buildDate={build_date.strftime('%Y-%m-%dT%H:%M:%SZ')}"]
    if commit:
        flags.insert(3, f"-X {pkg}.gitCommit={commit}")
    return " ".join(flags)


def helm_ldflags(version: str, commit: str) -> str:
    """Upstream's Makefile for a tagged release: the version, no metadata, the commit and a
    clean tree in ``internal/version`` (``-w -s`` as there)."""
    pkg = MODULES["helm"] + "/internal/version"
    flags = ["-w", "-s", f"-X {pkg}.version={version}", f"-X {pkg}.metadata="]
    if commit:
        flags.append(f"-X {pkg}.gitCommit={commit}")
    flags.append(f"-X {pkg}.gitTreeState=clean")
    return " ".join(flags)


def _module_commit(info: dict[str, str]) -> str:
    """The commit a module version was cut from, when the proxy's .info file records it."""
    with contextlib.suppress(OSError, ValueError, AttributeError, KeyError):
        origin = json.loads(Path(info["Info"]).read_text()).get("Origin") or {}
        return str(origin.get("Hash") or "")
    return ""


def _build_e2e(c: Component, go: GoBuilder, work: Path, out: Path) -> None:
    # Upstream (hack/lib/golang.sh) builds test binaries with `go test -c`, the same tags,
    # -trimpath and version ldflags as the commands; vet adds nothing to the binary.
    _kubernetes_consumer_module(c.version, go, work)
    go.output(["get", "-t", f"{E2E_PACKAGE}@{c.version}"], work)
    go.build(
        ["-vet=off", "-trimpath", "-tags", KUBERNETES_BUILD_TAGS,
         "-ldflags", kubernetes_ldflags(c.version, datetime.now(UTC)),
         "-o", str(out / E2E_BINARY), E2E_PACKAGE],
        work,
        f"e2e.test {c.version}",
        timeout=E2E_BUILD_TIMEOUT,
        command=("test", "-c"),
    )


def agnhost_version(kubernetes_source: Path) -> str:
    """agnhost's own version (its image tag), from ``test/images/agnhost/VERSION`` in the
    k8s.io/kubernetes source: 2.66.1 at v1.37.2."""
    path = kubernetes_source / "test" / "images" / "agnhost" / "VERSION"
    try:
        version = path.read_text().strip()
    except OSError as e:
        raise ToolchainError(f"cannot read agnhost's version from {path}: {e}") from e
    if not re.fullmatch(r"\d+\.\d+(\.\d+)?", version):
        raise ToolchainError(f"{path} holds {version!r}, not an agnhost version such as 2.66.1")
    return version


def agnhost_ldflags(version: str) -> str:
    """test/images/image-util.sh: ``-w -X 'main.Version=<VERSION>'`` (``-s`` too here)."""
    return f"-s -w -X main.Version={version}"


def _build_agnhost(c: Component, go: GoBuilder, work: Path, out: Path) -> None:
    # Upstream: CGO off, no build tags, `go build ./agnhost` in test/images.
    info = _kubernetes_consumer_module(c.version, go, work)
    version = agnhost_version(Path(info.get("Dir") or work / "missing"))
    go.output(["get", f"{AGNHOST_PACKAGE}@{c.version}"], work)
    go.build(
        ["-trimpath", "-ldflags", agnhost_ldflags(version),
         "-o", str(out / "agnhost"), AGNHOST_PACKAGE],
        work,
        f"agnhost {version} (kubernetes {c.version})",
    )
    (out / "agnhost.version").write_text(version + "\n")


def registry_ldflags(version: str, commit: str) -> str:
    """Distribution's Makefile: ``-s -w`` and the version, revision and main package in
    ``version``. No build tags (BUILDTAGS is empty by default): v3's ``cmd/registry`` links
    every storage driver (filesystem, inmemory, s3-aws, gcs, azure) without them."""
    pkg = MODULES["registry"]
    flags = ["-s", "-w", f"-X {pkg}/version.version={version}"]
    if commit:
        flags.append(f"-X {pkg}/version.revision={commit}")
    flags.append(f"-X {pkg}/version.mainpkg={pkg}")
    return " ".join(flags)


def traefik_ldflags(version: str, build_date: datetime, codename: str = "") -> str:
    """Upstream's Makefile and .goreleaser.yml: ``-s -w`` and the version, codename and build
    date in ``pkg/version`` (the Makefile's date format). The codename is left at the source's
    own unless given."""
    pkg = MODULES["traefik"] + "/pkg/version"
    flags = ["-s", "-w", f"-X {pkg}.Version={version}"]
    if codename:
        flags.append(f"-X {pkg}.Codename={codename}")
    flags.append(f"-X {pkg}.BuildDate={build_date.strftime('%Y-%m-%d_%I:%M:%S%p')}")
    return " ".join(flags)


def _writable_copy(source: Path, into: Path) -> Path:
    """A copy of a module's extracted source (read-only in the module cache) that go may
    update (go.sum) and a temporary directory may delete."""
    shutil.copytree(source, into, copy_function=shutil.copyfile, symlinks=True)
    for directory, _, _ in os.walk(into):
        os.chmod(directory, 0o755)  # noqa: S103 - a private temporary directory
    return into


def missing_local_replaces(gomod: str, source: Path) -> list[str]:
    """``replace X => ./dir`` directives of ``gomod`` whose directory ``source`` lacks (a
    nested module: a module's zip leaves those out)."""
    found = re.findall(r"^\s*(?:replace\s+)?(\S+)(?:\s+\S+)?\s+=>\s+(\.{1,2}/\S*)\s*$",
                       gomod, re.MULTILINE)
    return [f"{module} => {path}" for module, path in found
            if not (source / path / "go.mod").is_file()]


# Traefik's go.mod replaces github.com/traefik/traefik/dynamic/ext with the nested module
# ./pkg/config/dynamic/ext, an extension point whose package upstream declares as empty types
# (dynamic.HTTPConfiguration embeds ext.HTTP, dynamic.Router embeds ext.Router). Module zips
# leave nested modules out and the proxy does not serve it on its own, so the build writes it:
# the types v3.7.10's code references, empty as upstream's (docs/exposure.md).
TRAEFIK_EXT_MODULE = "github.com/traefik/traefik/dynamic/ext"
TRAEFIK_EXT_DIR = "pkg/config/dynamic/ext"
TRAEFIK_EXT_SOURCE = """\
// Package ext is Traefik's extension point for its dynamic configuration. Written by Haku's
// dev tooling (haku.dev.toolchain): the Go module proxy does not serve this nested module.
// Empty types, as upstream's: they add no field to what they are embedded in.
package ext

// HTTP is embedded in dynamic.HTTPConfiguration.
type HTTP struct{}

// Router is embedded in dynamic.Router.
type Router struct{}
"""


def traefik_ext_module(traefik_gomod: str) -> dict[str, str]:
    """The files of the nested module ``pkg/config/dynamic/ext`` (relative path -> content):
    its go.mod (the module path, and Traefik's own ``go`` line) and one Go file with the
    empty extension types."""
    go_line = re.search(r"^go\s+(\S+)\s*$", traefik_gomod, re.MULTILINE)
    gomod = f"module {TRAEFIK_EXT_MODULE}\n"
    if go_line:
        gomod += f"\ngo {go_line.group(1)}\n"
    return {f"{TRAEFIK_EXT_DIR}/go.mod": gomod, f"{TRAEFIK_EXT_DIR}/ext.go": TRAEFIK_EXT_SOURCE}


def _build_traefik(c: Component, go: GoBuilder, work: Path, out: Path) -> None:
    # Traefik's go.mod replaces modules (its forks of gorilla/mux and go-http-auth, and a local
    # ./pkg/config/dynamic/ext), which a consumer module would ignore: build inside a copy of
    # the module's own source instead, as upstream does (`go build ./cmd/traefik`, CGO off,
    # -trimpath). webui/static is embedded (go:embed); the module zip carries it with only
    # upstream's placeholder file (the Makefile's clean-webui writes the same), so the build
    # needs nothing added and the binary serves no dashboard UI.
    module = MODULES["traefik"]
    info = go.module_info(module, c.version, work)
    source = _writable_copy(Path(info.get("Dir") or work / "missing"), work / "traefik")
    gomod = (source / "go.mod").read_text()
    ext = f"{TRAEFIK_EXT_MODULE} => ./{TRAEFIK_EXT_DIR}"
    missing = missing_local_replaces(gomod, source)
    if ext in missing:
        for relative, content in traefik_ext_module(gomod).items():
            (source / relative).parent.mkdir(parents=True, exist_ok=True)
            (source / relative).write_text(content)
        go.progress(f"  traefik {c.version}: wrote the nested module ./{TRAEFIK_EXT_DIR} "
                    "(empty extension types, as upstream's; the module zip leaves it out)")
        missing.remove(ext)
    if missing:
        raise ToolchainError(
            f"traefik {c.version} cannot be built from the Go module proxy: its go.mod "
            f"replaces modules with directories the module zip leaves out ({', '.join(missing)}"
            "; nested modules are not in a module's zip, and the proxy does not serve them "
            "on their own). docs/exposure.md says what was found")
    static = source / "webui" / "static"
    if not static.is_dir() or not any(static.iterdir()):
        # Upstream's placeholder (Makefile, clean-webui): go:embed needs one file there.
        static.mkdir(parents=True, exist_ok=True)
        (static / "DONT-EDIT-FILES-IN-THIS-DIRECTORY.md").write_text(
            "For more information see `webui/readme.md`")
    go.build(
        ["-trimpath", "-ldflags", traefik_ldflags(c.version, datetime.now(UTC)),
         "-o", str(out / "traefik"), "./cmd/traefik"],
        source,
        f"traefik {c.version}",
    )


# MetalLB's two commands (module directories controller/ and speaker/), and where its CRDs
# (config/crd/bases in the module) are cached beside them.
METALLB_BINARIES = ("controller", "speaker")
METALLB_CRDS = "crds"
# Upstream's install manifest of the version (CRDs, RBAC, controller, speaker), as the module
# holds it; haku.dev.loadbalancer applies it unchanged.
METALLB_MANIFEST = "manifests/metallb-native.yaml"


def metallb_ldflags(commit: str, branch: str = "") -> str:
    """controller/Dockerfile and speaker/Dockerfile: the commit and branch in
    ``internal/version`` (its version string is in the source); ``-s -w`` here, like the other
    components."""
    pkg = MODULES["metallb"] + "/internal/version"
    flags = ["-s", "-w"]
    if commit:
        flags.append(f"-X {pkg}.gitCommit={commit}")
    if branch:
        flags.append(f"-X {pkg}.gitBranch={branch}")
    return " ".join(flags)


def _build_metallb(c: Component, go: GoBuilder, work: Path, out: Path) -> None:
    # go.universe.tf/metallb's go.mod has no replaces: a consumer module requiring it resolves
    # the same dependency versions. Upstream's images: CGO off, `go build ./controller` and
    # `./speaker`.
    module = MODULES["metallb"]
    info = _consumer_module(module, c.version, "metallb", go, work)
    go.build(
        ["-trimpath", "-ldflags", metallb_ldflags(_module_commit(info)),
         "-o", str(out) + "/", *(f"{module}/{b}" for b in METALLB_BINARIES)],
        work,
        f"metallb {c.version}",
    )
    source = Path(info.get("Dir") or work / "missing")
    native = source / "config" / "manifests" / Path(METALLB_MANIFEST).name
    if not native.is_file():
        raise ToolchainError(f"metallb {c.version}: the module has no config/manifests/"
                             f"{native.name}, which `haku dev loadbalancer` applies")
    (out / METALLB_MANIFEST).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(native, out / METALLB_MANIFEST)
    crds = source / "config" / "crd" / "bases"
    if crds.is_dir():
        (out / METALLB_CRDS).mkdir()
        for crd in sorted(crds.glob("*.yaml")):
            shutil.copyfile(crd, out / METALLB_CRDS / crd.name)
    else:
        go.progress(f"  metallb {c.version}: no config/crd/bases in the module; CRDs not cached")


def extract_tarball(tarball: Path, into: Path) -> Path:
    """Unpack a source release (``git archive``: one top directory) and return that directory."""
    try:
        with tarfile.open(tarball) as archive:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(into, filter="data")
            else:  # pragma: no cover - Python without the extraction filters
                archive.extractall(into)  # noqa: S202
    except (OSError, tarfile.TarError) as e:
        raise ToolchainError(f"cannot unpack {tarball}: {e}") from e
    entries = [p for p in into.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    if (into / "go.mod").is_file():
        return into
    raise ToolchainError(f"{tarball} holds no single source directory with a go.mod")


def _build_konnectivity(c: Component, go: GoBuilder, work: Path, out: Path) -> None:
    # Upstream builds each command with `go build -mod=vendor` (CGO off, no version stamp);
    # the tarball has no vendor/, so its go.mod resolves through the proxy (GOFLAGS=-mod=mod).
    # `go build -o DIR/ ./cmd/server ./cmd/agent` writes DIR/server and DIR/agent; the images
    # name them proxy-server and proxy-agent.
    top = extract_tarball(source_tarball("konnectivity", c.version), work)
    go.progress(f"  konnectivity {c.version}: building from {top.name} (first time: modules "
                "are downloaded too)")
    raw = work / "bin"
    raw.mkdir()
    go.build(
        ["-trimpath", "-ldflags", "-s -w", "-o", str(raw) + "/",
         *KONNECTIVITY_PACKAGES.values()],
        top,
        f"konnectivity {c.version}",
    )
    for binary, package in KONNECTIVITY_PACKAGES.items():
        built = raw / Path(package).name
        if built.is_file():
            shutil.move(str(built), str(out / binary))


Builder = Callable[[Component, GoBuilder, Path, Path], None]

BUILDERS: dict[str, Builder] = {
    "kubernetes": _build_kubernetes,
    "etcd": _build_etcd,
    "kine": _build_module_root(
        "github.com/k3s-io/kine", "kine",
        "-s -w -X github.com/k3s-io/kine/pkg/version.Version={version}",
    ),
    "coredns": _build_module_root(
        "github.com/coredns/coredns", "coredns",
        "-s -w -X github.com/coredns/coredns/coremain.GitCommit={version}",
    ),
    # One main package, cmd/ (upstream's Dockerfile: `go build ./cmd`, CGO off); it carries
    # no version variable to stamp.
    "kube-network-policies": _build_module_root(
        "sigs.k8s.io/kube-network-policies", "kube-network-policies", "-s -w", package="cmd",
    ),
    "konnectivity": _build_konnectivity,
    "metrics-server": _build_module_root(
        MODULES["metrics-server"], "metrics-server",
        lambda v, info: metrics_server_ldflags(v, _module_commit(info), datetime.now(UTC)),
        "cmd/metrics-server"),
    # helm.sh/helm/v4: upstream builds ./cmd/helm with CGO off and -trimpath.
    "helm": _build_module_root(
        MODULES["helm"], "helm", lambda v, info: helm_ldflags(v, _module_commit(info)),
        "cmd/helm"),
    "e2e": _build_e2e,
    "agnhost": _build_agnhost,
    # Distribution v3: upstream's image builds ./cmd/registry with CGO off and -trimpath.
    "registry": _build_module_root(
        MODULES["registry"], "registry",
        lambda v, info: registry_ldflags(v, _module_commit(info)), "cmd/registry"),
    # k8s.io/sample-apiserver: upstream's image Makefile runs `go build .` at its root, CGO off.
    "sample-apiserver": _build_module_root(MODULES["sample-apiserver"], "sample-apiserver",
                                           "-s -w"),
    "traefik": _build_traefik,
    "metallb": _build_metallb,
}


def ensure(
    names: Iterable[str],
    versions: Versions | None = None,
    root: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Path]:
    """Build whatever of ``names`` is not cached yet; return each component's directory."""
    versions = versions or Versions.from_env()
    root = root or cache_root()
    table = components(versions)
    result: dict[str, Path] = {}
    builder: GoBuilder | None = None
    for name in names:
        if name not in table:
            raise ToolchainError(f"unknown component {name!r}; known: {', '.join(table)}")
        c = table[name]
        if c.is_built(root):
            result[name] = c.directory(root)
            continue
        source = "the Go module proxy"
        if name in TARBALLS:  # before go: a missing tarball is the first thing to say
            try:
                source = str(source_tarball(name, c.version))
            except ToolchainError as e:
                raise ToolchainError(f"{e}; once built, the binaries are cached in "
                                     f"{c.directory(root)} and the tarball is not needed "
                                     "again") from None
        builder = builder or GoBuilder(progress)
        builder.progress(f"building {c.name} {c.version} from {source} "
                         f"into {c.directory(root)}")
        started = time.monotonic()
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"haku-build-{c.name}-") as tmp:
            work, out = Path(tmp) / "mod", Path(tmp) / "out"
            work.mkdir()
            out.mkdir()
            BUILDERS[name](c, builder, work, out)
            missing = [b for b in c.binaries if not (out / b).is_file()]
            if missing:
                raise ToolchainError(f"{c.name} {c.version}: build produced no {missing}")
            result[name] = _finish(
                c, out, root,
                {"seconds": f"{time.monotonic() - started:.1f}",
                 "built": datetime.now(UTC).isoformat(timespec="seconds")},
            )
    return result
