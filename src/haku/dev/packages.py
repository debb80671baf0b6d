"""The Debian packages a local cluster needs, checked by the files they install."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Requirement:
    package: str
    files: tuple[str, ...]  # any of these present satisfies it (globs allowed)
    why: str


REQUIREMENTS = (
    Requirement("containerd", ("/usr/bin/containerd",), "runs the pods"),
    Requirement("runc", ("/usr/sbin/runc", "/usr/bin/runc"), "the OCI runtime under containerd"),
    Requirement("containernetworking-plugins", ("/usr/lib/cni/bridge",), "pod networking"),
    Requirement("iptables", ("/usr/sbin/iptables",), "kube-proxy and the kubelet"),
    Requirement("nftables", ("/usr/sbin/nft",), "kube-proxy's image (nftables mode, cleanup)"),
    Requirement("iproute2", ("/usr/sbin/ip", "/usr/bin/ip", "/bin/ip"), "bridges and netns"),
    Requirement("busybox-static", ("/bin/busybox",), "the test workload image"),
    Requirement("postgresql", ("/usr/lib/postgresql/*/bin/postgres",), "the PostgreSQL datastore"),
    Requirement("mariadb-server", ("/usr/sbin/mariadbd",), "the MySQL datastore"),
    Requirement("mariadb-client", ("/usr/bin/mariadb",), "sets up the MySQL datastore"),
    Requirement("gcc", ("/usr/bin/gcc",), "builds the pause image"),
    Requirement("libc6-dev", ("/usr/lib/x86_64-linux-gnu/libc.a",), "builds the pause image"),
    Requirement("mmdebstrap", ("/usr/bin/mmdebstrap",), "builds the operator image's Debian base"),
)


class MissingPackages(RuntimeError):
    def __init__(self, missing: list[Requirement]) -> None:
        self.missing = missing
        names = " ".join(r.package for r in missing)
        lines = [f"  {r.package}: needed for {r.why}" for r in missing]
        super().__init__(
            "missing Debian packages:\n" + "\n".join(lines) + "\n"
            f"install them with `make deps` (or: apt-get install -y {names})"
        )


def satisfied(req: Requirement) -> bool:
    return any(glob.glob(pattern) for pattern in req.files)


def missing() -> list[Requirement]:
    return [r for r in REQUIREMENTS if not satisfied(r)]


def check() -> None:
    gone = missing()
    if gone:
        raise MissingPackages(gone)


def install(log: Path | None = None) -> list[str]:
    """apt-get install whatever is missing, without letting the packages start services."""
    gone = missing()
    if not gone:
        return []
    if os.geteuid() != 0:
        raise PermissionError("installing Debian packages needs root")
    names = sorted({r.package for r in gone})
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:  # keep postgresql/mariadb from starting system-wide services on install
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        out = log.open("ab") if log else subprocess.DEVNULL
        try:
            subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=out,
                           stderr=subprocess.STDOUT)
            subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *names],
                           check=True, env=env, stdout=out, stderr=subprocess.STDOUT)
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
    finally:
        if ours:
            policy.unlink(missing_ok=True)
    check()
    return names


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise MissingPackages([r for r in REQUIREMENTS if r.package == "postgresql"])
    return Path(found[-1]).parent


def which(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise FileNotFoundError(f"{name} not found on PATH")
    return path
