"""NetworkPolicy on the admin node: kube-network-policies, and the rules that feed it.

SIG Network's reference implementation (``sigs.k8s.io/kube-network-policies``, its one main
package ``cmd/``) decides in user space: the first packet of each connection is queued to it
over NFQUEUE, it evaluates the NetworkPolicies of the source pod (egress) and of the destination
pod (ingress) and answers accept or drop; later packets pass as established.

Two things about v0.8.0 shape how the dev cluster runs it:

- **Its own steering cannot load here.** It writes an nftables table ``inet
  kube-network-policies`` whose rules use the native ``queue`` expression, and this kernel is
  built without ``CONFIG_NFT_QUEUE`` (``nft add rule … queue num 100`` answers "No such file
  or directory"; the whole batch, table included, is refused and it logs that at every sync).
  Its verdict engine (the NFQUEUE listener) runs all the same. Haku therefore feeds the queue
  itself, with iptables' ``NFQUEUE`` target (``xt_NFQUEUE`` through nft_compat, which this
  kernel has), in two mangle chains (:func:`steering_rules`).
- **It only looks at POSTROUTING**, so a packet from a pod to an address of the node itself
  (routed to INPUT, never to POSTROUTING) is never evaluated: upstream fixed that after v0.8.0
  (kubernetes-sigs/kube-network-policies#339, an INPUT hook for new connections to the host).
  Haku's INPUT chain does the same, so egress policy governs what pods reach on the node IP
  (kube-apiserver :6443, kubelet :10250, the datastores).

The steering is scoped to the admin pod network: packets from or to ``Layout.pod_cidr`` on
POSTROUTING, and packets arriving from the pod bridge on INPUT. Dev workers' own traffic
(``10.245.1.N``, their pods ``10.246.N.0/24``, never in the admin API) is not queued; between a
worker and an admin pod only the admin pod's policies apply. As with kube-network-policies'
own rules, sockets of root on the node (the kubelet's probes) are not evaluated, and the queue
fails closed: while the listener is gone, queued packets are dropped.

The process reads its API credentials only the in-cluster way (``rest.InClusterConfig``: the
token and CA under ``/var/run/secrets/kubernetes.io/serviceaccount``, the server from
``KUBERNETES_SERVICE_HOST``/``_PORT``). It runs in a private mount namespace where
``<state>/kube-network-policies/run`` is mounted on ``/run``; that holds a token of its own
ServiceAccount, bound by upstream's ClusterRole (list and watch pods, namespaces and
networkpolicies).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from haku.dev import host
from haku.dev.layout import Layout
from haku.dev.worker_net import _jump_positions

NAME = "kube-network-policies"
NAMESPACE = "kube-system"
QUEUE = 100  # NFQUEUE number, as --nfqueue-id (its default)
NFT_TABLE = ("inet", "kube-network-policies")  # what the process writes, where it can
POSTROUTING_CHAIN = "HAKU-NETPOL-POSTROUTING"
INPUT_CHAIN = "HAKU-NETPOL-INPUT"
STEERING_TABLE = "mangle"  # before SNAT on POSTROUTING, after DNAT on INPUT
JUMPS = {POSTROUTING_CHAIN: "POSTROUTING", INPUT_CHAIN: "INPUT"}
TOKEN_SECONDS = 365 * 24 * 3600  # renewed by every `up`; the process rereads the file
SERVICE_ACCOUNT_DIR = Path("secrets/kubernetes.io/serviceaccount")  # under its /run
NFQUEUE_PROC = Path("/proc/net/netfilter/nfnetlink_queue")


def run_dir(layout: Layout) -> Path:
    """What the process sees as ``/run``."""
    return layout.network_policy_dir / "run"


def rbac_objects() -> list[dict[str, Any]]:
    """Its ServiceAccount and upstream's ClusterRole and binding (install.yaml, v0.8.0)."""
    meta = {"labels": {"app.kubernetes.io/managed-by": "haku-dev"}}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": NAME, "namespace": NAMESPACE, **meta}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": NAME, **meta},
         "rules": [
             {"apiGroups": [""], "resources": ["pods", "namespaces"],
              "verbs": ["list", "watch"]},
             {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
              "verbs": ["list", "watch"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": NAME, **meta},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": NAME},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]},
    ]


def argv(binary: Path, layout: Layout) -> list[str]:
    """The process in a private mount namespace with :func:`run_dir` on ``/run``."""
    return [
        "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-c", 'mount --bind "$0" /run && exec "$@"', str(run_dir(layout)),
        str(binary),
        f"--hostname-override={layout.node_name}",
        f"--nfqueue-id={QUEUE}",
        f"--metrics-bind-address=127.0.0.1:{layout.ports.network_policy_metrics}",
    ]


def env(layout: Layout) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",  # the API on loopback, as every host client
        "KUBERNETES_SERVICE_PORT": str(layout.ports.apiserver),
    }


def write_credentials(layout: Layout, token: str) -> Path:
    """Token, CA and namespace where InClusterConfig looks (under :func:`run_dir`)."""
    d = run_dir(layout) / SERVICE_ACCOUNT_DIR
    d.mkdir(parents=True, exist_ok=True)
    layout.network_policy_dir.chmod(0o700)
    for name, data in (("ca.crt", (layout.pki / "ca.crt").read_bytes()),
                       ("namespace", NAMESPACE.encode()), ("token", token.encode())):
        tmp = d / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.chmod(0o600)
        tmp.rename(d / name)
    return d


def issue_token(layout: Layout) -> str:
    """Apply :func:`rbac_objects` and request a token of the ServiceAccount (TokenRequest)."""
    from lightkube import Client, KubeConfig
    from lightkube.codecs import from_dict
    from lightkube.models.authentication_v1 import TokenRequestSpec
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import ServiceAccount

    client = Client(KubeConfig.from_file(layout.admin_kubeconfig), field_manager="haku-dev")
    try:
        for obj in rbac_objects():
            client.apply(from_dict(obj), force=True)
        request = ServiceAccount.Token(
            metadata=ObjectMeta(name=NAME, namespace=NAMESPACE),
            spec=TokenRequestSpec(audiences=[], expirationSeconds=TOKEN_SECONDS))
        answer = client.create(request, NAME, namespace=NAMESPACE)
    finally:
        client.close()
    token = answer.status.token if answer.status else None
    if not token:
        raise host.HostError(f"the API answered no token for ServiceAccount {NAMESPACE}/{NAME}")
    return token


def queue_bound(queue: int = QUEUE, proc: Path = NFQUEUE_PROC) -> bool:
    """Whether a listener is bound to NFQUEUE ``queue`` (a line of ``nfnetlink_queue``)."""
    try:
        text = proc.read_text()
    except OSError:
        return False
    return any(line.split()[:1] == [str(queue)] for line in text.splitlines())


# ---------------------------------------------------------------------------------------------
# Steering: which packets go to the queue


def steering_rules(layout: Layout) -> dict[str, list[list[str]]]:
    """``iptables -A`` argument lists of the two chains, by chain (pure).

    POSTROUTING mirrors kube-network-policies' own chain (root's sockets and established
    connections pass; the rest from or to an admin pod is queued); INPUT is what upstream added
    after v0.8.0: new connections from admin pods to the node itself.
    """
    queue = ["-j", "NFQUEUE", "--queue-num", str(QUEUE)]

    def note(text: str) -> list[str]:
        return ["-m", "comment", "--comment", f"haku: {text}"]

    pods, post, inp = layout.pod_cidr, POSTROUTING_CHAIN, INPUT_CHAIN
    return {
        post: [
            ["-A", post, "-m", "owner", "--uid-owner", "0",
             *note("root on the node is not evaluated (kubelet probes)"), "-j", "RETURN"],
            ["-A", post, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"],
            ["-A", post, "-s", pods, *note("NetworkPolicy: from an admin pod"), *queue],
            ["-A", post, "-d", pods, *note("NetworkPolicy: to an admin pod"), *queue],
        ],
        inp: [
            ["-A", inp, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"],
            ["-A", inp, "-i", layout.cni_bridge,
             *note("NetworkPolicy: from an admin pod to the node itself"), *queue],
        ],
    }


def steering_restore(layout: Layout) -> str:
    """``iptables-restore --noflush`` input that (re)writes both chains in one transaction
    (pure): a chain declared there is emptied and refilled atomically, so running ``up`` again
    never leaves a moment with nothing queued."""
    lines = [f"*{STEERING_TABLE}"]
    rules = steering_rules(layout)
    lines += [f":{chain} - [0:0]" for chain in rules]
    for chain_rules in rules.values():
        for rule in chain_rules:
            lines.append(" ".join(f'"{arg}"' if " " in arg else arg for arg in rule))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def ensure_steering(layout: Layout) -> None:
    """Write both chains and make the jump to each its hook's first rule."""
    restore = subprocess.run(["iptables-restore", "-w", "--noflush"],
                             input=steering_restore(layout), capture_output=True, text=True,
                             check=False, timeout=host.RUN_TIMEOUT)
    if restore.returncode != 0:
        raise host.HostError(f"iptables-restore of {', '.join(JUMPS)} failed: "
                             f"{restore.stderr.strip()}")
    ipt = ["iptables", "-w", "-t", STEERING_TABLE]
    for chain, builtin in JUMPS.items():
        positions = _jump_positions(host.run([*ipt, "-S", builtin]).stdout, chain)
        if positions != [1]:
            for _ in positions:
                host.run([*ipt, "-D", builtin, "-j", chain], check=False)
            host.run([*ipt, "-I", builtin, "1", "-j", chain])


def steering_present() -> bool:
    return all(host.run(["iptables", "-w", "-t", STEERING_TABLE, "-S", chain],
                        check=False).returncode == 0 for chain in JUMPS)


def remove_steering() -> list[host.Chain]:
    return host.remove_chains([("iptables", STEERING_TABLE, chain) for chain in JUMPS])


def remove_nft_table() -> bool:
    """Delete kube-network-policies' own table (on kernels where it could write it)."""
    family, name = NFT_TABLE
    if host.run(["nft", "list", "table", family, name], check=False).returncode != 0:
        return False
    return host.run(["nft", "delete", "table", family, name], check=False).returncode == 0


def running_elsewhere() -> bool:
    """Whether some kube-network-policies process runs on this host."""
    return host.binary_running(NAME)
