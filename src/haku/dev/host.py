"""Host resources a local cluster creates and must remove: links, chains, mounts, netns, cgroups.

Parsing is kept in pure functions (tested on captured text); the rest shells out to ``ip`` and
``iptables`` as an administrator would.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from haku.errors import HakuError

IPTABLES = ("iptables", "ip6tables")
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw")


class HostError(HakuError):
    """A host command (ip, iptables, mount, sysctl) that failed."""


# ip, iptables, mount and sysctl answer in well under a second; a minute means a hang (an
# iptables lock held forever, a stuck mount).
RUN_TIMEOUT = 60.0


def run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise HostError(
            f"{' '.join(argv)} did not finish within {RUN_TIMEOUT:g} s and was stopped: "
            "something on the host holds it (an iptables lock, a stuck mount); find it with "
            "`ps -ef`, then run this again"
        ) from e
    if check and result.returncode != 0:
        raise HostError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.stdout}")
    return result


# ---------------------------------------------------------------------------------------------
# Listening ports


@dataclass(frozen=True)
class Listener:
    port: int
    pid: int | None
    command: str


def parse_proc_net_tcp(text: str) -> dict[int, set[int]]:
    """LISTEN sockets from /proc/net/tcp{,6}: port -> socket inodes."""
    listening: dict[int, set[int]] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != "0A":  # 0A = TCP_LISTEN
            continue
        port = int(fields[1].rsplit(":", 1)[1], 16)
        listening.setdefault(port, set()).add(int(fields[9]))
    return listening


def listeners(ports: Iterable[int]) -> dict[int, Listener]:
    """Which of ``ports`` something listens on, and which process that is."""
    wanted = set(ports)
    sockets: dict[int, set[int]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            for port, inodes in parse_proc_net_tcp(Path(name).read_text()).items():
                if port in wanted:
                    sockets.setdefault(port, set()).update(inodes)

        except OSError:
            continue
    if not sockets:
        return {}
    owner: dict[int, int] = {}
    inode_to_port = {i: p for p, inodes in sockets.items() for i in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:  # a descriptor may close between listing and reading it
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in inode_to_port:
                    owner.setdefault(inode_to_port[inode], int(proc.name))
    result = {}
    for port in sockets:
        pid = owner.get(port)
        command = ""
        if pid is not None:
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                command = ""
        result[port] = Listener(port, pid, command.strip()[:200])
    return result


# ---------------------------------------------------------------------------------------------
# Links and network namespaces


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def ensure_bridge(name: str, address: str | None = None) -> bool:
    """Create bridge ``name`` (with ``address``, a CIDR) unless it exists; True if created."""
    created = False
    if not link_exists(name):
        run(["ip", "link", "add", name, "type", "bridge"])
        created = True
    if address:
        shown = run(["ip", "-j", "addr", "show", "dev", name]).stdout
        have = {f"{a['local']}/{a['prefixlen']}" for i in json.loads(shown) for a in i["addr_info"]}
        if address not in have:
            run(["ip", "addr", "add", address, "dev", name])
    run(["ip", "link", "set", name, "up"])
    return created


def delete_link(name: str) -> bool:
    if not link_exists(name):
        return False
    run(["ip", "link", "del", name])
    return True


def netns_attached_to(bridge: str, links_json: str, netns_json: str) -> list[str]:
    """Names of the network namespaces whose veth peers hang on ``bridge``.

    ``links_json`` is ``ip -j link show master BRIDGE``; ``netns_json`` is ``ip -j netns list``.
    """
    ids = {
        link["link_netnsid"]
        for link in json.loads(links_json or "[]")
        if link.get("master") == bridge and "link_netnsid" in link
    }
    names = []
    for ns in json.loads(netns_json or "[]"):
        if ns.get("id") in ids:
            names.append(ns["name"])
    return sorted(names)


def pod_netns(bridge: str, netns: str | None = None) -> list[str]:
    """Network namespaces whose veth peers hang on ``bridge`` (in namespace ``netns``, if
    given: netns ids are relative to the namespace that reports them)."""
    ip = ["ip", "-n", netns] if netns else ["ip"]
    if netns is None and not link_exists(bridge):
        return []
    links = run([*ip, "-j", "link", "show", "master", bridge], check=False)
    if links.returncode != 0:
        return []
    namespaces = run([*ip, "-j", "netns", "list"], check=False).stdout
    return netns_attached_to(bridge, links.stdout, namespaces)


NETNS_DIR = Path("/run/netns")


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def netns_names() -> list[str]:
    """The named network namespaces (``ip netns list``)."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except OSError:
        return []


def delete_netns(name: str) -> None:
    run(["ip", "netns", "del", name], check=False)


def link_names() -> list[str]:
    try:
        return sorted(p.name for p in Path("/sys/class/net").iterdir())
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# sysctls (of the host's network namespace when under net.)


def sysctl_path(name: str) -> Path:
    """/proc/sys path of ``name`` (dotted; interface names here hold no dots)."""
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str | None:
    try:
        return sysctl_path(name).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    try:
        sysctl_path(name).write_text(value + "\n")
    except OSError as e:
        raise HostError(f"cannot set {name}={value}: {e}") from e


# The inotify limits a node with many pods needs. Every control-plane pod holds inotify
# instances (kube-apiserver, kube-controller-manager and kube-scheduler watch their
# certificate and config files; kubelet, containerd and the log readers add more), and the
# kernel's default of 128 instances per user ran out at about 50 tenants: pods then failed with
# "too many open files" (docs/dev-cluster.md).
INOTIFY_LIMITS = {"fs.inotify.max_user_instances": 8192, "fs.inotify.max_user_watches": 524288}


def raise_inotify_limits(say: Callable[[str], object] = lambda _: None,
                         limits: dict[str, int] | None = None) -> list[str]:
    """Raise each sysctl of ``limits`` (default :data:`INOTIFY_LIMITS`) to at least its value;
    a higher value is kept. Never fails: a limit that cannot be read or set is left as it is
    and said so. Each change or failure is a line passed to ``say`` and returned."""
    notes: list[str] = []
    for name, wanted in (limits or INOTIFY_LIMITS).items():
        current = read_sysctl(name)
        try:
            have = int(current or "")
        except ValueError:
            notes.append(f"{name}: cannot read it; not raised to {wanted}")
            continue
        if have >= wanted:
            continue
        try:
            write_sysctl(name, str(wanted))
        except HostError as e:
            notes.append(f"{name} stays {have}: {e}")
            continue
        notes.append(f"{name} raised from {have} to {wanted}")
    for note in notes:
        say(note)
    return notes


# ---------------------------------------------------------------------------------------------
# Processes


def processes_matching(*needles: str) -> list[int]:
    """PIDs whose command line holds every one of ``needles`` (this process excluded)."""
    found = []
    wanted = [n.encode() for n in needles]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if cmdline and all(n in cmdline for n in wanted):
            found.append(int(proc.name))
    return sorted(found)


def kill_all(pids: Iterable[int], sig: int = 9) -> list[int]:
    killed = []
    for pid in pids:
        try:
            os.kill(pid, sig)
            killed.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    return killed


# ---------------------------------------------------------------------------------------------
# iptables KUBE-* chains


Chain = tuple[str, str, str]  # (iptables command, table, chain)


def parse_chains(rules: str, prefix: str = "KUBE-") -> list[str]:
    """Chain names declared in ``iptables -S`` output that start with ``prefix``."""
    names = []
    for line in rules.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "-N" and parts[1].startswith(prefix):
            names.append(parts[1])
    return names


def rules_jumping_to(rules: str, chains: set[str]) -> list[list[str]]:
    """``-A`` rules (as argument lists) that jump to or go to one of ``chains``."""
    found = []
    for line in rules.splitlines():
        parts = line.split()
        if not parts or parts[0] != "-A":
            continue
        for flag in ("-j", "-g"):
            if flag in parts:
                i = parts.index(flag)
                if i + 1 < len(parts) and parts[i + 1] in chains:
                    found.append(parts)
                    break
    return found


def kube_chains() -> set[Chain]:
    chains: set[Chain] = set()
    for cmd in IPTABLES:
        for table in IPTABLES_TABLES:
            result = run([cmd, "-w", "-t", table, "-S"], check=False)
            if result.returncode == 0:
                chains.update((cmd, table, c) for c in parse_chains(result.stdout))
    return chains


def remove_chains(chains: Iterable[Chain]) -> list[Chain]:
    """Remove ``chains``: first every rule that jumps to them, then flush, then delete."""
    by_table: dict[tuple[str, str], set[str]] = {}
    for cmd, table, chain in chains:
        by_table.setdefault((cmd, table), set()).add(chain)
    removed: list[Chain] = []
    for (cmd, table), names in sorted(by_table.items()):
        rules = run([cmd, "-w", "-t", table, "-S"], check=False).stdout
        for rule in rules_jumping_to(rules, names):
            run([cmd, "-w", "-t", table, "-D", *rule[1:]], check=False)
        for name in sorted(names):
            run([cmd, "-w", "-t", table, "-F", name], check=False)
        for name in sorted(names):
            if run([cmd, "-w", "-t", table, "-X", name], check=False).returncode == 0:
                removed.append((cmd, table, name))
    return removed


# ---------------------------------------------------------------------------------------------
# Mounts


def _unescape_mount(path: str) -> str:
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def parse_mountinfo(text: str) -> list[str]:
    """Mount points listed in /proc/self/mountinfo, in order."""
    return [_unescape_mount(line.split()[4]) for line in text.splitlines() if line.strip()]


def mounts_under(roots: Iterable[Path], mountinfo: str | None = None) -> list[str]:
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    prefixes = [str(r).rstrip("/") for r in roots]
    points = [
        m for m in parse_mountinfo(text)
        if any(m == p or m.startswith(p + "/") for p in prefixes)
    ]
    return sorted(set(points), key=lambda m: (-m.count("/"), m))


def unmount_under(roots: Iterable[Path]) -> list[str]:
    roots = list(roots)
    done = []
    for _ in range(5):  # stacked mounts need more than one pass
        points = mounts_under(roots)
        if not points:
            break
        for m in points:
            if run(["umount", "-l", m], check=False).returncode == 0:
                done.append(m)
    return done


# ---------------------------------------------------------------------------------------------
# cgroups the kubelet made


def cgroup_roots() -> list[Path]:
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():  # pure v2
        return [base]
    return [p for p in base.iterdir() if p.is_dir() and not p.is_symlink()] if base.exists() else []


def cgroup_pids(name: str) -> set[int]:
    """PIDs in any cgroup called ``name`` (e.g. ``kubepods``) or below it."""
    pids: set[int] = set()
    for root in cgroup_roots():
        top = root / name
        if not top.is_dir():
            continue
        # os.walk, not rglob: cgroups vanish while we look (runc removes a killed
        # container's), and os.walk skips what it can no longer list.
        for dirpath, _, files in os.walk(top):
            if "cgroup.procs" not in files:
                continue
            try:
                pids.update(int(p) for p in (Path(dirpath) / "cgroup.procs").read_text().split())
            except OSError:
                continue
    return pids


def ensure_cgroup(name: str) -> list[Path]:
    """Create cgroup ``name`` (one level, e.g. ``haku-w1``) in every hierarchy; the ones made.

    A v1 cpuset cgroup starts with no CPUs and memory nodes: they are copied from the parent.
    """
    made = []
    for root in cgroup_roots():
        d = root / name
        if d.is_dir():
            continue
        d.mkdir()
        made.append(d)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            parent, child = root / knob, d / knob
            if parent.exists() and child.exists() and not child.read_text().strip():
                child.write_text(parent.read_text())
    return made


def remove_cgroups(name: str) -> int:
    """rmdir the cgroup trees called ``name`` (deepest first); returns how many went."""
    removed = 0
    for root in cgroup_roots():
        top = root / name
        if not top.is_dir():
            continue
        dirs = [Path(dirpath) for dirpath, _, _ in os.walk(top, topdown=False)]  # deepest first
        for d in dirs:
            try:
                d.rmdir()
                removed += 1
            except OSError:
                continue
    return removed


def binary_running(name: str) -> bool:
    """Whether any process on this host runs a binary called ``name`` (argv[0]'s last part)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv0 = (proc / "cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        if Path(argv0.decode(errors="replace")).name == name:
            return True
    return False
