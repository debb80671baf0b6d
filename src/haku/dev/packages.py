"""The Debian packages a local cluster needs, checked by the files they install."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from haku.errors import CommandFailed, CommandTimedOut, HakuError

# One apt-get run (update, or install of everything missing). Generous: a slow mirror and
# PostgreSQL + MariaDB on 2 cores take a few minutes; a quarter of an hour means a hang.
APT_TIMEOUT = 15 * 60.0
# Keeps the packages' maintainer scripts from starting system-wide services (postgresql,
# mariadb) while apt-get installs them; written only when absent, removed afterwards.
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
APT_HINT = "check the network and the apt sources (/etc/apt/sources.list*), then re-run `make deps`"


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


class MissingPackages(HakuError):
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


def install(log: Path | None = None, progress: Callable[[str], None] | None = None) -> list[str]:
    """apt-get install whatever is missing, without letting the packages start services.

    apt-get's output is captured (and appended to ``log`` if given); a failure raises
    :class:`CommandFailed` with its last lines, a run longer than :data:`APT_TIMEOUT`
    :class:`CommandTimedOut`.
    """
    gone = missing()
    if not gone:
        return []
    if os.geteuid() != 0:
        raise PermissionError("installing Debian packages needs root: run it as root "
                              "(sudo make deps)")
    names = sorted({r.package for r in gone})
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    policy = POLICY_RC_D
    ours = not policy.exists()
    if ours:  # keep postgresql/mariadb from starting system-wide services on install
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        say(f"apt-get install {' '.join(names)} (up to {APT_TIMEOUT / 60:g} min)")
        _apt(["update", "-q"], "apt-get update", log)
        _apt(["install", "-y", "-q", "--no-install-recommends", *names],
             f"apt-get install {' '.join(names)}", log)
    finally:
        if ours:
            policy.unlink(missing_ok=True)
    check()
    return names


def _apt(args: list[str], what: str, log: Path | None) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        result = subprocess.run(["apt-get", *args], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=APT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as e:
        _append(log, e.output)
        raise CommandTimedOut(what, APT_TIMEOUT, e.output, APT_HINT) from e
    except FileNotFoundError as e:
        raise HakuError(f"{what}: apt-get is not on PATH; this needs a Debian-like system "
                        "with apt, or install the packages yourself") from e
    _append(log, result.stdout)
    if result.returncode != 0:
        raise CommandFailed(what, result.returncode, result.stdout, APT_HINT)


def _append(log: Path | None, output: str | bytes | None) -> None:
    if log is None or not output:
        return
    with log.open("ab") as f:
        f.write(output.encode() if isinstance(output, str) else output)


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
