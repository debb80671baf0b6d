"""A worker's network: a network namespace wired to the admin node like a second machine.

Worker N is the network namespace ``haku-w<N>``. A veth pair joins it to the host: ``hkw<N>``
on the host side (no address), ``eth0`` inside with ``10.245.1.<N>/32``. The host routes
``10.245.1.<N>/32`` and the worker's pod range ``10.246.<N>.0/24`` through ``hkw<N>`` (source
the admin node IP); the worker reaches the admin node IP ``10.245.0.1`` on its link and uses it
as its default gateway, so a tenant's NodePort there is its way to the tenant's API.

Those packets are routed by the host. IPv4 forwards a packet when its *input* interface has
``forwarding`` on, so only Haku's interfaces get it (``hkw<N>``, and the admin pod bridge for
the replies); ``net.ipv4.ip_forward`` is not touched. The ``HAKU-FORWARD`` chain, jumped to
first from the filter table's FORWARD, keeps whatever Haku's interfaces send on the machine:
traffic between the pod bridge and the workers goes on, anything else from them is dropped,
and nothing from elsewhere is forwarded into a worker.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

from haku.dev import host

NETNS_PREFIX = "haku-w"
HOST_LINK_PREFIX = "hkw"
WORKER_LINK = "eth0"
WORKER_BRIDGE = "cni0"  # inside the worker's namespace, as on a kubeadm machine
WORKER_ADDRESSES = ipaddress.ip_network("10.245.1.0/24")  # .N is worker N
WORKER_POD_RANGES = ipaddress.ip_network("10.246.0.0/16")  # .N.0/24 is worker N's pods
MAX_INDEX = 254
FORWARD_CHAIN = "HAKU-FORWARD"
NETNS_DIR = Path("/run/netns")


class WorkerNetError(RuntimeError):
    pass


@dataclass(frozen=True)
class WorkerNet:
    """Names and addresses of worker ``index`` (1..254), beside admin node IP ``gateway``."""

    index: int
    gateway: str  # the admin node IP (Layout.node_ip)

    def __post_init__(self) -> None:
        if not 1 <= self.index <= MAX_INDEX:
            raise WorkerNetError(f"worker index {self.index} is outside 1..{MAX_INDEX}")

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.index}"

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def host_link(self) -> str:
        return f"{HOST_LINK_PREFIX}{self.index}"

    @property
    def address(self) -> str:
        return str(WORKER_ADDRESSES.network_address + self.index)

    @property
    def pod_cidr(self) -> str:
        base = int(WORKER_POD_RANGES.network_address) + (self.index << 8)
        return f"{ipaddress.IPv4Address(base)}/24"

    @property
    def cni_network(self) -> str:
        return self.netns

    def nsenter(self) -> list[str]:
        """Prefix that runs a command in the worker's network namespace and nothing else
        (the host's mount namespace stays: kubelet mounts must be seen by containerd)."""
        return ["nsenter", f"--net={self.netns_path}"]


def setup_commands(net: WorkerNet) -> list[list[str]]:
    """The ``ip`` and ``sysctl`` commands that make worker ``net``'s namespace and link."""
    ns, link = net.netns, net.host_link
    inside = ["ip", "-n", ns]
    return [
        # Not `ip netns add`: the first one on a machine turns /run/netns into a bind mount of
        # itself, and the pod namespaces containerd pinned there before (the admin node's)
        # end up under it, where `ip netns del` cannot remove them. Pinning the namespace on
        # a file, as containerd does, leaves /run/netns as it is.
        ["unshare", f"--net={net.netns_path}", "true"],
        ["ip", "link", "add", link, "type", "veth", "peer", "name", WORKER_LINK, "netns", ns],
        [*inside, "link", "set", "lo", "up"],
        [*inside, "addr", "add", f"{net.address}/32", "dev", WORKER_LINK],
        [*inside, "link", "set", WORKER_LINK, "up"],
        [*inside, "route", "add", net.gateway, "dev", WORKER_LINK],
        [*inside, "route", "add", "default", "via", net.gateway, "dev", WORKER_LINK, "onlink"],
        # Per namespace: the worker routes for its pods, as a node does; the host is untouched.
        [*net.nsenter(), "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
        ["ip", "link", "set", link, "up"],
        ["ip", "route", "add", f"{net.address}/32", "dev", link, "src", net.gateway],
        ["ip", "route", "add", net.pod_cidr, "via", net.address, "dev", link,
         "src", net.gateway],
    ]


def create(net: WorkerNet) -> None:
    """Make the namespace, link, addresses and routes; enable forwarding on ``hkw<N>``."""
    if host.netns_exists(net.netns) or host.link_exists(net.host_link):
        raise WorkerNetError(f"{net.netns} or {net.host_link} exists already: remove it first "
                             f"(haku dev worker remove w{net.index})")
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    net.netns_path.touch(exist_ok=False)  # the mount point unshare pins the namespace on
    for argv in setup_commands(net):
        host.run(argv)
    host.write_sysctl(f"net.ipv4.conf.{net.host_link}.forwarding", "1")
    # Bridged pod traffic on the worker's bridge goes through its iptables (kube-proxy);
    # the knob is per namespace where the kernel has it.
    host.run([*net.nsenter(), "sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"],
             check=False)


def reaches(net: WorkerNet, endpoint: str, timeout: float = 3.0) -> str | None:
    """Connect to ``host:port`` from inside the worker; None if it worked, else the error."""
    hostname, _, port = endpoint.rpartition(":")
    code = ("import socket,sys\n"
            f"try: socket.create_connection(({hostname!r}, {int(port)}), {timeout}).close()\n"
            "except OSError as e: sys.exit(str(e))\n")
    result = host.run([*net.nsenter(), sys.executable, "-c", code], check=False)
    return None if result.returncode == 0 else (result.stderr.strip() or "failed")


def delete(net: WorkerNet) -> list[str]:
    """Remove the namespace (which takes ``eth0`` and its peer with it) and the link."""
    removed = []
    if host.netns_exists(net.netns):
        host.delete_netns(net.netns)
        removed.append(net.netns)
    # Deleting the namespace destroys eth0 and so its peer, asynchronously: hkw<N> may vanish
    # between the look and `ip link del` ("Cannot find device"), which is what we wanted.
    if host.link_exists(net.host_link):  # routes through it go with it
        result = host.run(["ip", "link", "del", net.host_link], check=False)
        if result.returncode != 0 and host.link_exists(net.host_link):
            raise WorkerNetError(f"ip link del {net.host_link} failed: "
                                 f"{result.stderr.strip() or result.stdout}")
        removed.append(net.host_link)
    return removed


# ---------------------------------------------------------------------------------------------
# The forward guard


def forward_guard_rules(pod_bridge: str, chain: str = FORWARD_CHAIN) -> list[list[str]]:
    """``iptables -A`` argument lists of the guard chain (pure)."""
    workers = f"{HOST_LINK_PREFIX}+"
    haku = (pod_bridge, workers)
    rules = []
    for src in haku:
        for dst in haku:
            rules.append(["-A", chain, "-i", src, "-o", dst, "-m", "comment", "--comment",
                          "haku: between Haku's pod bridge and workers", "-j", "RETURN"])
    for iface in haku:
        rules.append(["-A", chain, "-i", iface, "-m", "comment", "--comment",
                      "haku: nothing Haku forwards leaves the machine", "-j", "DROP"])
    rules.append(["-A", chain, "-o", workers, "-m", "comment", "--comment",
                  "haku: nothing from elsewhere is forwarded into a worker", "-j", "DROP"])
    return rules


def _jump_positions(forward_rules: str, chain: str) -> list[int]:
    """1-based positions in FORWARD (``iptables -S FORWARD`` text) of jumps to ``chain``."""
    positions, n = [], 0
    for line in forward_rules.splitlines():
        parts = line.split()
        if not parts or parts[0] != "-A":
            continue
        n += 1
        if ("-j" in parts and parts[parts.index("-j") + 1] == chain) or \
                ("-g" in parts and parts[parts.index("-g") + 1] == chain):
            positions.append(n)
    return positions


def ensure_forward_guard(pod_bridge: str) -> None:
    """Create or refill ``HAKU-FORWARD`` and make the jump to it FORWARD's first rule."""
    ipt = ["iptables", "-w", "-t", "filter"]
    if host.run([*ipt, "-S", FORWARD_CHAIN], check=False).returncode != 0:
        host.run([*ipt, "-N", FORWARD_CHAIN])
    host.run([*ipt, "-F", FORWARD_CHAIN])
    for rule in forward_guard_rules(pod_bridge):
        host.run([*ipt, *rule])
    positions = _jump_positions(host.run([*ipt, "-S", "FORWARD"]).stdout, FORWARD_CHAIN)
    if positions != [1]:
        for _ in positions:
            host.run([*ipt, "-D", "FORWARD", "-j", FORWARD_CHAIN], check=False)
        host.run([*ipt, "-I", "FORWARD", "1", "-j", FORWARD_CHAIN])


def remove_forward_guard() -> bool:
    return bool(host.remove_chains([("iptables", "filter", FORWARD_CHAIN)]))


def forward_guard_present() -> bool:
    return host.run(["iptables", "-w", "-t", "filter", "-S", FORWARD_CHAIN],
                    check=False).returncode == 0


# ---------------------------------------------------------------------------------------------
# Behind NAT: a worker the admin side cannot open a connection to
#
# A real remote site behind NAT reaches the control plane, never the other way round. For a
# worker added with --behind-nat, two chains of its own (removed with it):
#
# - filter ``HAKU-NAT-W<N>``, jumped to first from OUTPUT and FORWARD for packets leaving on
#   ``hkw<N>``: whatever is not part of a connection the worker opened (conntrack ESTABLISHED
#   or RELATED) is rejected with "host unreachable", so the admin node and every admin pod
#   fail at once to connect to the worker's node IP or its pods, while replies pass. The host
#   routes stay: the replies need them.
# - nat ``HAKU-NAT-W<N>``, jumped to last from POSTROUTING (forwarded traffic, after
#   kube-proxy's own masquerading) and from INPUT (traffic to the node's own addresses): what
#   the worker and its pods send is SNATed to the admin node IP, so the admin side sees
#   connections from a NAT gateway's address, not the worker's.

NAT_CHAIN_PREFIX = "HAKU-NAT-W"
NAT_REJECT_WITH = "icmp-host-unreachable"


def nat_chain(net: WorkerNet) -> str:
    return f"{NAT_CHAIN_PREFIX}{net.index}"


def nat_filter_rules(net: WorkerNet) -> list[list[str]]:
    """``iptables -t filter`` argument lists: the chain's rule, then the jumps (pure)."""
    chain = nat_chain(net)
    return [
        ["-A", chain, "-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED",
         "-m", "comment", "--comment", f"haku: {net.netns} is behind NAT, nothing opens a "
         "connection into it", "-j", "REJECT", "--reject-with", NAT_REJECT_WITH],
        ["-I", "OUTPUT", "1", "-o", net.host_link, "-j", chain],
        ["-I", "FORWARD", "1", "-o", net.host_link, "-j", chain],
    ]


def nat_snat_rules(net: WorkerNet) -> list[list[str]]:
    """``iptables -t nat`` argument lists: SNAT of the worker's and its pods' addresses to the
    admin node IP, then the jumps (appended: NAT decisions made before stand) (pure)."""
    chain = nat_chain(net)
    rules = [
        ["-A", chain, "-s", source, "-m", "comment", "--comment",
         f"haku: {net.netns} is behind NAT, seen through a gateway address", "-j", "SNAT",
         "--to-source", net.gateway]
        for source in (f"{net.address}/32", net.pod_cidr)
    ]
    rules += [["-A", "POSTROUTING", "-j", chain], ["-A", "INPUT", "-j", chain]]
    return rules


def _chain_exists(table: str, chain: str) -> bool:
    return host.run(["iptables", "-w", "-t", table, "-S", chain], check=False).returncode == 0


def ensure_nat(net: WorkerNet) -> None:
    """Put worker ``net`` behind NAT (again): both chains made afresh, with their jumps."""
    remove_nat(net)
    chain = nat_chain(net)
    for table, rules in (("nat", nat_snat_rules(net)), ("filter", nat_filter_rules(net))):
        ipt = ["iptables", "-w", "-t", table]
        host.run([*ipt, "-N", chain])
        for rule in rules:
            host.run([*ipt, *rule])


def nat_present(net: WorkerNet) -> dict[str, bool]:
    """Whether each table has the worker's NAT chain."""
    return {table: _chain_exists(table, nat_chain(net)) for table in ("filter", "nat")}


def remove_nat(net: WorkerNet) -> list[str]:
    """Remove the worker's NAT chains and the jumps to them, if there."""
    chain = nat_chain(net)
    present = [("iptables", table, chain) for table in ("filter", "nat")
               if _chain_exists(table, chain)]
    return [f"iptables chain {c[2]} ({c[1]})" for c in host.remove_chains(present)]


def nat_chains() -> list[host.Chain]:
    """Every worker NAT chain on the host (whatever worker made it)."""
    found: list[host.Chain] = []
    for table in ("filter", "nat"):
        result = host.run(["iptables", "-w", "-t", table, "-S"], check=False)
        if result.returncode == 0:
            found += [("iptables", table, c)
                      for c in host.parse_chains(result.stdout, prefix=NAT_CHAIN_PREFIX)]
    return found


def remove_all_nat() -> list[str]:
    return [f"iptables chain {c[2]} ({c[1]})" for c in host.remove_chains(nat_chains())]
