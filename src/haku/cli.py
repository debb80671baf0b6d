"""The ``haku`` command line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from haku import __version__
from haku.dev import packages, toolchain
from haku.dev.cluster import DevCluster, Report
from haku.dev.datastores import read_connections
from haku.dev.layout import Layout, default_state_dir
from haku.dev.versions import PREVIOUS_KUBERNETES_VERSION, Versions
from haku.dev.worker_config import WorkerError
from haku.dev.worker_net import WorkerNetError
from haku.errors import HakuError, command_line, describe_duration, output_tail


def _layout(args: argparse.Namespace) -> Layout:
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    if args.api_only:
        return Layout.api_only(state_dir)
    if args.datastores_only:
        return Layout.datastores_only(state_dir)
    return Layout(state_dir=state_dir)


def _versions(args: argparse.Namespace) -> Versions:
    versions = Versions.from_env()
    if getattr(args, "kubernetes_version", None):
        versions = versions.with_kubernetes(args.kubernetes_version)
    return versions


def _print_up_summary(cluster: DevCluster, report: Report) -> None:
    lay = cluster.layout
    total = dict(report.steps).get("total", 0.0)
    print()
    if report.started:
        print(f"started: {', '.join(report.started)}")
    if report.already_running:
        print(f"already running (left alone): {', '.join(report.already_running)}")
    if lay.control_plane:
        print(f"admin cluster ready in {total:.1f}s: Kubernetes {cluster.versions.kubernetes}, "
              f"API {lay.apiserver_url}" + (f", node {lay.node_name} Ready" if lay.node else ""))
        print(f"admin kubeconfig: {lay.admin_kubeconfig}")
    if lay.datastores:
        conns = read_connections(lay)
        print("datastores for tenants:")
        for name, c in conns.items():
            print(f"  {name:<9} pods: {', '.join(c['endpoints'])}  "
                  f"host: {', '.join(c['local_endpoints'])}")
        print(f"  (credentials and CAs: {lay.datastores_dir / 'connections.json'})")
    if lay.control_plane:
        print("try it:")
        print(f"  export KUBECONFIG={lay.admin_kubeconfig} PATH={lay.bin}:$PATH")
        print("  kubectl get nodes,pods -A")
    print(f"logs: {lay.logs}/   stop: haku dev down" +
          (f" --state-dir {lay.state_dir}" if lay.state_dir != default_state_dir() else ""))


def cmd_up(args: argparse.Namespace) -> int:
    cluster = DevCluster(_layout(args), _versions(args))
    report = cluster.up()
    _print_up_summary(cluster, report)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from haku.dev import demo

    cluster = DevCluster(_layout(args), _versions(args))
    try:
        kubeconfig, node = demo.run(cluster)
    except WorkerError as e:
        print(f"haku: {e}", file=sys.stderr)
        return 1
    lay = cluster.layout
    print()
    print(f"tenant {demo.NAMESPACE}/{demo.TENANT} is Ready: its API serves through NodePort "
          f"{demo.PORT}, and node {node} (a worker on this machine, joined with kubeadm) "
          "is Ready in it.")
    print(f"tenant admin kubeconfig: {kubeconfig}")
    print("try it:")
    print(f"  {lay.bin}/kubectl --kubeconfig {kubeconfig} get nodes,pods -A -o wide")
    print(f"  {lay.bin}/kubectl --kubeconfig {lay.admin_kubeconfig} get tcp,datastores -A")
    print(f"  .venv/bin/haku kubeconfig {demo.NAMESPACE}/{demo.TENANT} "
          f"--kubeconfig {lay.admin_kubeconfig}")
    print(f"  .venv/bin/haku join-command {demo.NAMESPACE}/{demo.TENANT} "
          f"--kubeconfig {lay.admin_kubeconfig}   (a kubeadm join line for another machine)")
    print(f"  {lay.bin}/kubectl --kubeconfig {lay.admin_kubeconfig} -n haku-system logs "
          "deploy/haku-operator   (the in-cluster operator, JSON lines)")
    print("stop everything: haku dev down")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    cluster = DevCluster(_layout(args), _versions(args))
    result = cluster.down(purge=args.purge)
    print(f"stopped: {', '.join(result.stopped) or 'nothing was running'}")
    if result.killed_leftovers:
        print(f"killed leftover container processes: {len(result.killed_leftovers)}")
    for label, items in (("unmounted", result.unmounted),
                         ("removed network namespaces", result.netns),
                         ("removed links", result.links)):
        if items:
            print(f"{label}: {len(items)} ({', '.join(items[:4])}"
                  f"{', …' if len(items) > 4 else ''})")
    if result.chains:
        print(f"removed iptables chains: {len(result.chains)}")
    if result.workers:
        print(f"removed workers: {', '.join(result.workers)}")
    if args.purge:
        print(f"deleted {cluster.layout.state_dir}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cluster = DevCluster(_layout(args), _versions(args))
    info = cluster.status()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"state: {info['state_dir']}  Kubernetes {info['kubernetes']}")
        for name, c in info["components"].items():
            state = f"running (pid {c['pid']})" if c["running"] else "stopped"
            print(f"  {name:<26} {state}")
        if "apiserver_ready" in info:
            print(f"API ready: {info['apiserver_ready']}" +
                  (f"   node Ready: {info['node_ready']}" if "node_ready" in info else ""))
            print(f"admin kubeconfig: {info['admin_kubeconfig']}")
        if "registry" in info:
            r = info["registry"]
            print(f"registry: http://{r['endpoint']} ({'ready' if r['ready'] else 'not ready'}), "
                  f"mirrors {', '.join(r['mirrors'])}; storage {r['storage']}")
        for w in info.get("workers", []):
            procs = ", ".join(f"{k} " + (f"running (pid {v['pid']})" if v["running"]
                                         else "stopped") for k, v in w["processes"].items())
            nat = ", behind NAT" if w.get("behind_nat") else ""
            print(f"  worker {w['name']}: node {w['node']} of {w['tenant']}, {w['address']}, "
                  f"kubelet {w.get('kubelet') or '?'}, {w['state']}{nat}; {procs}")
    running = all(c["running"] for c in info["components"].values()) and all(
        p["running"] for w in info.get("workers", []) for p in w["processes"].values())
    return 0 if running and info.get("apiserver_ready", True) else 3


def cmd_build(args: argparse.Namespace) -> int:
    names = args.components or ["kubernetes", "etcd", "kine"]
    if "operator-image" in names:
        from haku.dev import operator_image

        archive, image = operator_image.build_operator_image()
        print(f"operator-image: {image} {archive}")
        names = [n for n in names if n != "operator-image"]
        if not names:
            return 0
    built = toolchain.ensure(names, _versions(args))
    for name, path in built.items():
        print(f"{name}: {path}")
    return 0


def cmd_addons(args: argparse.Namespace) -> int:
    from haku.dev import addons

    lay = _worker_layout(args)
    report = addons.ensure(lay, args.addons, versions=_versions(args),
                           import_images=not args.build_only)
    print(f"addons {', '.join(addons.check_names(args.addons))}: "
          + (f"built {', '.join(report.built)}; " if report.built else "binaries cached; ")
          + ("archives written (not imported)" if args.build_only else
             f"admin node {len(report.admin)} imported, "
             f"{len(report.workers)} workers" +
             (f", skipped (containerd stopped): {', '.join(report.skipped_workers)}"
              if report.skipped_workers else ""))
          + f" in {report.seconds:.1f}s")
    return 0


def cmd_loadbalancer(args: argparse.Namespace) -> int:
    from haku.dev import loadbalancer

    report = loadbalancer.ensure(_worker_layout(args), versions=_versions(args),
                                 with_pool=not args.no_pool)
    print(f"MetalLB {_versions(args).metallb} "
          + ("built, " if report.built else "")
          + f"running in {loadbalancer.NAMESPACE}"
          + ("" if args.no_pool else f", pool {loadbalancer.POOL}")
          + f" in {report.seconds:.1f}s")
    return 0


def cmd_exposure_up(args: argparse.Namespace) -> int:
    from haku.dev import exposure

    lay = _worker_layout(args)
    report = exposure.up(lay, versions=_versions(args))
    print(f"exposure: Traefik {_versions(args).traefik} "
          + ("built, " if report.built else "")
          + f"Ready in {report.seconds:.1f}s on {report.node_ip}: Ingress (class "
          f"{exposure.INGRESS_CLASS}, annotation {exposure.PASSTHROUGH_ANNOTATION}: \"true\") "
          f"on :{exposure.INGRESS_PORT}, Gateway {exposure.NAMESPACE}/{exposure.GATEWAY} "
          f"(listener {exposure.LISTENER}, TLS passthrough) on :{exposure.GATEWAY_PORT}")
    print(f"tenants' host names must resolve to {report.node_ip}: "
          "haku dev exposure hosts NAME... (writes /etc/hosts)")
    return 0


def cmd_exposure_down(args: argparse.Namespace) -> int:
    from haku.dev import exposure

    gone = exposure.down(_worker_layout(args))
    print(f"removed: {', '.join(gone) or 'nothing was there'}")
    return 0


def cmd_exposure_hosts(args: argparse.Namespace) -> int:
    from haku.dev import exposure

    lay = _worker_layout(args)
    if args.remove:
        left = exposure.set_hosts([], lay.node_ip)
    else:
        left = exposure.add_hosts(args.names, lay.node_ip)
    print(f"{exposure.HOSTS}: " + (f"{', '.join(left)} -> {lay.node_ip}" if left
                                   else "no entries of Haku's"))
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from haku.dev import releases

    lay = _worker_layout(args)
    report = releases.ensure(lay, args.versions, import_images=not args.build_only)
    print(f"kubernetes {', '.join(report.versions)}: "
          + (f"built {', '.join(report.built)}; " if report.built else "binaries cached; ")
          + ("archives written (not imported)" if args.build_only else
             f"admin node {len(report.admin)} imported, {len(report.workers)} workers" +
             (f", skipped (containerd stopped): {', '.join(report.skipped_workers)}"
              if report.skipped_workers else ""))
          + f" in {report.seconds:.1f}s")
    return 0


def cmd_conformance_images(args: argparse.Namespace) -> int:
    from haku.dev import test_images

    lay = _worker_layout(args)
    groups = args.images or list(test_images.GROUPS)
    report = test_images.build_and_push(
        groups, _versions(args), None if args.build_only else lay.registry_endpoint)
    print(f"test images: {len(report.built)} built or cached in {report.build_seconds:.1f}s"
          + ("" if args.build_only else
             f", pushed to http://{lay.registry_endpoint} in {report.push_seconds:.1f}s "
             f"({sum(p.uploaded for p in report.pushed) / 1e6:.1f} MB sent)"))
    return 0


def cmd_conformance_run(args: argparse.Namespace) -> int:
    from haku.dev import conformance_run as conf

    if args.parallel < 1 or args.chunk_size < 1 or args.chunk_timeout <= 0:
        print("haku: --parallel and --chunk-size must be at least 1, --chunk-timeout above 0",
              file=sys.stderr)
        return 2
    cluster = DevCluster(_layout(args), _versions(args))
    patterns = list(args.focus) + (list(conf.FAST_SUBSET) if args.fast else [])
    options = conf.Options(
        out_dir=Path(args.out) if args.out else conf.default_out_dir(cluster.layout,
                                                                       args.datastore),
        patterns=patterns, parallel=args.parallel, chunk_size=args.chunk_size,
        chunk_timeout=args.chunk_timeout * 60.0)
    try:
        outcome = conf.run(cluster, args.datastore, options,
                           lambda line: print(line, flush=True))
    except (conf.ConformanceRunError, WorkerError) as e:
        print(f"haku: {e}", file=sys.stderr)
        return 1
    print()
    print((outcome.out_dir / "summary.md").read_text(), end="")
    print(f"wall time {outcome.seconds / 60:.1f} min; JUnit, summary and each chunk's log in "
          f"{outcome.out_dir}")
    unexplained = outcome.summary.unexplained
    if unexplained:
        print(f"{len(unexplained)} failures not explained by docs/conformance.md")
    return 1 if unexplained else 0


def cmd_conformance_summary(args: argparse.Namespace) -> int:
    from haku.dev import conformance_run as conf

    out_dir = Path(args.dir)
    try:
        summary = conf.resummarize(out_dir)
    except conf.ConformanceRunError as e:
        print(f"haku: {e}", file=sys.stderr)
        return 1
    print((out_dir / "summary.md").read_text(), end="")
    unexplained = summary.unexplained
    if unexplained:
        print(f"{len(unexplained)} failures not explained by docs/conformance.md")
    return 1 if unexplained else 0


def cmd_deps(args: argparse.Namespace) -> int:
    installed = packages.install()
    print(f"installed: {' '.join(installed)}" if installed else "all Debian packages present")
    return 0


def cmd_operator_run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from haku.controller import logs, operator
    from haku.controller.tenant import OperatorConfig
    from haku.render.pki import KeyAlgorithm

    logs.configure(args.log_format)
    options = operator.RunOptions(
        kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
        namespace=args.namespace, leader_elect=not args.no_leader_elect,
        workers=args.workers, install_crds=not args.no_install_crds,
        lease_duration=args.lease_duration, drain_timeout=args.drain_timeout,
        etcd_compaction_interval=args.etcd_compaction_interval,
        metrics_bind_address=args.metrics_bind_address,
        health_probe_bind_address=args.health_probe_bind_address)
    config = OperatorConfig(default_datastore=args.default_datastore,
                            key_algorithm=KeyAlgorithm(args.key_algorithm),
                            node_address=args.node_address,
                            tenant_network_policy=not args.no_tenant_network_policy,
                            tenant_networks=tuple(args.tenant_network),
                            admin_service_cidrs=tuple(args.admin_service_cidr),
                            admin_pod_cidrs=tuple(args.admin_pod_cidr),
                            admin_node_cidrs=tuple(args.admin_node_cidr),
                            discover_admin_ranges=not args.no_discover_admin_ranges)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await operator.run(options, config, stop)

    asyncio.run(main())
    return 0


def _cidr(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a CIDR") from e


def _bind_address(text: str) -> str:
    from haku.controller.probes import parse_address

    try:
        parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return text


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    import asyncio
    import base64

    from lightkube.resources.core_v1 import Secret

    from haku.api.resources import TenantControlPlane
    from haku.controller import operator

    namespace, _, name = args.tenant.rpartition("/")

    async def main() -> str:
        client = operator.client_for(Path(args.kubeconfig) if args.kubeconfig else None)
        try:
            tcp = await client.get(TenantControlPlane, name, namespace=namespace or "default")
            secret_name = ((tcp.to_dict().get("status") or {})  # type: ignore[no-untyped-call]
                           .get("kubeconfig", {}).get("admin", {}).get("secretName"))
            if not secret_name:
                raise LookupError(f"{args.tenant} has no admin kubeconfig yet (not provisioned)")
            if args.key == "super-admin.conf":  # the operator's own, in the internal Secret
                from haku.render.controlplane import names
                secret_name = names(name)["kubeconfigs"]
            secret = await client.get(Secret, secret_name, namespace=namespace or "default")
            return base64.b64decode((secret.data or {})[args.key]).decode()
        finally:
            await client.close()

    print(asyncio.run(main()), end="")
    return 0


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``15m``, ``24h``, ``1h30m`` (kubeadm's --ttl style) or plain seconds."""
    import re

    units = {"h": 3600, "m": 60, "s": 1}
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    elif re.fullmatch(r"(\d+(\.\d+)?[hms])+", text):
        seconds = sum(float(n) * units[u]
                      for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", text))
    else:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 24h or 1h30m")
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the duration must be positive")
    return seconds


def cmd_join_command(args: argparse.Namespace) -> int:
    import asyncio
    from datetime import timedelta

    from haku.controller import operator
    from haku.tenant import access

    namespace, _, name = args.tenant.rpartition("/")

    async def main() -> str:
        client = operator.client_for(Path(args.kubeconfig) if args.kubeconfig else None)
        try:
            tenant = await access.load(client, namespace or "default", name)
        finally:
            await client.close()
        bootstrapped = tenant.condition("TenantBootstrapped")
        if not bootstrapped or bootstrapped.get("status") != "True":
            why = bootstrapped.get("message") if bootstrapped else "no TenantBootstrapped yet"
            print(f"haku: warning: {args.tenant} is not bootstrapped ({why}); a join may fail "
                  "until it is", file=sys.stderr)
        return str(await access.create_join_command(tenant, timedelta(seconds=args.ttl)))

    print(asyncio.run(main()))
    return 0


def cmd_rotate_ca(args: argparse.Namespace) -> int:
    import asyncio

    from haku.controller import operator
    from haku.tenant import rotate

    namespace, _, name = args.tenant.rpartition("/")
    namespace = namespace or "default"

    async def main() -> None:
        client = operator.client_for(Path(args.kubeconfig) if args.kubeconfig else None)
        try:
            value = await rotate.request(client, namespace, name)
            print(f"rotation {value} asked for (annotation haku.dev/rotate-ca)", flush=True)
            if args.no_wait:
                for step in rotate.node_steps(namespace, name):
                    print(step)
                return
            await rotate.follow(client, namespace, name, value,
                                lambda line: print(line, flush=True), args.timeout)
            print(f"done: {namespace}/{name} trusts only its new CA; fetch the admin "
                  f"kubeconfig again (haku kubeconfig {namespace}/{name})")
        finally:
            await client.close()

    try:
        asyncio.run(main())
    except TimeoutError as e:
        print(f"haku: {e}; it goes on: see kubectl get tcp -n {namespace} {name} -o "
              "jsonpath='{.status.certificates.caRotation}'", file=sys.stderr)
        return 1
    return 0


def _tenant_ref(text: str) -> tuple[str, str]:
    namespace, _, name = text.rpartition("/")
    return namespace or "default", name


def cmd_backup(args: argparse.Namespace) -> int:
    import asyncio

    from haku.backup import run
    from haku.controller import operator

    namespace, name = _tenant_ref(args.tenant)

    async def main() -> None:
        client = operator.client_for(Path(args.kubeconfig) if args.kubeconfig else None)
        try:
            summary = await run.backup(client, namespace, name, Path(args.output),
                                       args.with_pki, lambda line: print(line, flush=True))
        finally:
            await client.close()
        print(f"wrote {args.output}: {summary.entries} keys, sha256 {summary.sha256}")

    asyncio.run(main())
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    import asyncio

    from haku.backup import run
    from haku.controller import operator

    namespace, name = _tenant_ref(args.into)

    async def main() -> None:
        client = operator.client_for(Path(args.kubeconfig) if args.kubeconfig else None)
        try:
            await run.restore(client, Path(args.file), namespace, name, args.datastore,
                              lambda line: print(line, flush=True), not args.no_wait,
                              args.timeout)
        finally:
            await client.close()

    asyncio.run(main())
    return 0


def _worker_layout(args: argparse.Namespace) -> Layout:
    return Layout(state_dir=Path(args.state_dir) if args.state_dir else default_state_dir())


def cmd_worker_add(args: argparse.Namespace) -> int:
    import asyncio

    import yaml

    from haku.dev import worker

    lay = _worker_layout(args)
    admin = Path(args.kubeconfig) if args.kubeconfig else lay.admin_kubeconfig
    # The tenant's own release unless --kubernetes-version picks one (refused if newer).
    versions = _versions(args) if args.kubernetes_version else None
    try:
        tenant = asyncio.run(worker.tenant_join(admin, args.tenant))
        result = worker.add(lay, args.tenant, tenant.join, versions=versions,
                            keep_on_failure=args.keep_on_failure, avoid_nodes=tenant.nodes,
                            behind_nat=args.behind_nat,
                            tenant_version=tenant.kubernetes_version or None)
    except worker.WorkerError as e:
        print(f"haku: {e}", file=sys.stderr)
        return 1
    w = result.worker
    _, name = worker.split_tenant(w.tenant)
    kubeconfig = lay.state_dir / "tenants" / f"{name}.kubeconfig"
    kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    kubeconfig.touch(mode=0o600)
    kubeconfig.write_text(yaml.safe_dump(tenant.kubeconfig))
    total = sum(seconds for _, seconds in result.steps)
    print(f"kubeadm: {result.joined_line}   (log: {result.log})")
    print(f"worker {w.name} joined {w.tenant} as node {w.node_name} (Ready, kubelet "
          f"{w.kubernetes}) in {total:.1f}s"
          + (" (behind NAT: the admin side cannot connect to it)" if w.behind_nat else ""))
    print(f"tenant admin kubeconfig: {kubeconfig}")
    print(f"see it: {lay.bin / 'kubectl'} --kubeconfig {kubeconfig} get nodes -o wide")
    print(f"remove it: haku dev worker remove {w.name}")
    return 0


def cmd_worker_remove(args: argparse.Namespace) -> int:
    import asyncio

    from haku.dev import worker

    lay = _worker_layout(args)
    admin = Path(args.kubeconfig) if args.kubeconfig else lay.admin_kubeconfig
    kubectl = lay.bin / "kubectl"
    try:
        if args.all:
            refs = [w.name for w in worker.list_workers(lay)]
        elif args.worker:
            refs = [args.worker]
        else:
            print("haku: name a worker (w1, or its node name) or give --all", file=sys.stderr)
            return 2
        for ref in refs:
            record = worker.load(lay, worker.resolve(lay, ref))
            tenant_conf = None
            if record and not args.keep_node:
                try:  # best effort: the tenant may be gone or down
                    tenant_conf = asyncio.run(asyncio.wait_for(
                        worker.tenant_kubeconfig(admin, record.tenant), 15))
                except Exception as e:  # any failure only skips the delete
                    print(f"  node {record.node_name} not deleted in {record.tenant}: "
                          f"the tenant is not reachable ({e or type(e).__name__})")
            worker.remove(lay, ref, tenant_kubeconfig=tenant_conf,
                          kubectl=kubectl if kubectl.exists() else None)
        if args.all:  # and whatever a failed or interrupted add left behind
            refs += [r.name for r in worker.remove_all(lay, printer=print, guard=False)
                     if r.name != "(host)"]
    except worker.WorkerError as e:
        print(f"haku: {e}", file=sys.stderr)
        return 1
    print(f"removed: {', '.join(refs) or 'no workers were there'}")
    return 0


def cmd_worker_renew_ca(args: argparse.Namespace) -> int:
    import asyncio
    from datetime import timedelta

    from haku.dev import worker
    from haku.dev.processes import ComponentFailed

    lay = _worker_layout(args)
    admin = Path(args.kubeconfig) if args.kubeconfig else lay.admin_kubeconfig
    try:
        record = worker.renewable(lay, args.worker)  # before a token is made for nothing
        join = asyncio.run(worker.tenant_token(admin, record.tenant,
                                               timedelta(seconds=args.ttl)))
        result = worker.renew_ca(lay, args.worker, join)
    except (worker.WorkerError, ComponentFailed) as e:
        print(f"haku: {e}", file=sys.stderr)
        return 1
    total = sum(seconds for _, seconds in result.steps)
    w = result.worker
    print(f"worker {w.name} (node {w.node_name}) trusts {len(result.cas)} CA"
          f"{'s' if len(result.cas) > 1 else ''} of {w.tenant} "
          f"({'changed' if result.ca_changed else 'unchanged'}) and has a new kubelet client "
          f"certificate from {result.issuer} in {total:.1f}s")
    print(f"  before: {result.old_client or 'none'}")
    print(f"  now:    {result.new_client}")
    return 0


def cmd_worker_list(args: argparse.Namespace) -> int:
    from haku.dev import worker

    workers = worker.status(_worker_layout(args))
    if args.json:
        print(json.dumps(workers, indent=2))
        return 0
    for w in workers:
        procs = ", ".join(f"{k} {'pid ' + str(v['pid']) if v['running'] else 'stopped'}"
                          for k, v in w["processes"].items())
        print(f"{w['name']:<5} node {w['node']:<24} tenant {w['tenant']:<20} {w['address']:<12} "
              f"pods {w['pod_cidr']:<15} kubelet {w.get('kubelet') or '?':<8} {w['state']:<8} "
              f"{'behind NAT ' if w.get('behind_nat') else ''}{procs}")
    if not workers:
        print("no workers")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="haku", description="Hosted Kubernetes control planes.")
    p.add_argument("--version", action="version", version=f"haku {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="the local admin cluster (for the demo and tests)")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)

    def cluster_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--state-dir", help=f"default: $HAKU_DEV_DIR or {default_state_dir()}")
        only = sp.add_mutually_exclusive_group()
        only.add_argument("--api-only", action="store_true",
                          help="etcd + kube-apiserver only, on their own ports")
        only.add_argument("--datastores-only", action="store_true",
                          help="the tenant datastores only, on loopback and their own ports")
        sp.add_argument("--kubernetes-version", help="an upstream tag, e.g. v1.36.3")

    demo = dev_sub.add_parser("demo", help="cluster, operator and a ready sample tenant")
    cluster_args(demo)
    demo.set_defaults(fn=cmd_demo)
    up = dev_sub.add_parser("up", help="start the cluster (safe to run again)")
    cluster_args(up)
    up.set_defaults(fn=cmd_up)
    down = dev_sub.add_parser("down", help="stop it and remove what it created on the host")
    cluster_args(down)
    down.add_argument("--purge", action="store_true", help="also delete the state directory")
    down.set_defaults(fn=cmd_down)
    status = dev_sub.add_parser("status", help="what runs; exit 3 if not all is up")
    cluster_args(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(fn=cmd_status)
    build = dev_sub.add_parser("build", help="build and cache the upstream binaries")
    build.add_argument("components", nargs="*",
                       help="kubernetes, etcd, kine, coredns, kube-network-policies, "
                       "konnectivity, metrics-server, helm, operator-image, and for the "
                       "conformance run e2e (e2e.test), agnhost, registry, sample-apiserver, "
                       "and for exposure (issue 17) traefik (run by `haku dev exposure up`), "
                       "metallb (run by `haku dev loadbalancer`) (default: the first three)")
    build.add_argument("--kubernetes-version", help="an upstream tag, e.g. v1.36.3")
    build.set_defaults(fn=cmd_build)
    addons_p = dev_sub.add_parser(
        "addons", help="build the Konnectivity and metrics-server images if missing and import "
        "them (proxy-server into the admin node, proxy-agent and metrics-server into every "
        "worker)")
    addons_p.add_argument("addons", nargs="*", metavar="ADDON",
                          help="konnectivity, metrics-server (default: both)")
    addons_p.add_argument("--build-only", action="store_true",
                          help="build the binaries and write the archives; import nothing")
    addons_p.add_argument("--state-dir",
                          help=f"default: $HAKU_DEV_DIR or {default_state_dir()}")
    addons_p.set_defaults(fn=cmd_addons)
    lb = dev_sub.add_parser(
        "loadbalancer", help="MetalLB in L2 mode in the admin cluster (build if missing, "
        "import its images, apply upstream's manifest, an address pool of "
        "10.245.255.0/24): LoadBalancer tenants get a real address")
    lb.add_argument("--no-pool", action="store_true",
                    help="install MetalLB without the address pool")
    lb.add_argument("--state-dir", help=f"default: $HAKU_DEV_DIR or {default_state_dir()}")
    lb.set_defaults(fn=cmd_loadbalancer)
    images_p = dev_sub.add_parser(
        "images", help="the images of other Kubernetes releases, for tenants of those versions: "
        "build the release if missing, import its control-plane images into the admin node "
        "and its kube-proxy into every worker")
    images_p.add_argument("versions", nargs="*", metavar="VERSION",
                          help="Kubernetes releases, e.g. v1.36.3 (default: the previous "
                          f"release the dev tooling offers, {PREVIOUS_KUBERNETES_VERSION}, and "
                          "the admin cluster's)")
    images_p.add_argument("--build-only", action="store_true",
                          help="build the binaries and write the archives; import nothing")
    images_p.add_argument("--state-dir",
                          help=f"default: $HAKU_DEV_DIR or {default_state_dir()}")
    images_p.set_defaults(fn=cmd_images)
    exposure_p = dev_sub.add_parser(
        "exposure", help="Traefik in the dev cluster: tenants' Ingresses (TLS passthrough) and "
        "Gateway API TLSRoutes carried to their API servers (docs/exposure.md)")
    exposure_sub = exposure_p.add_subparsers(dest="exposure_command", required=True)
    eup = exposure_sub.add_parser(
        "up", help="build Traefik if missing, import its image, install the Gateway API CRDs, "
        "the IngressClass nginx, the Gateway haku-exposure/tenants and Traefik (hostNetwork)")
    edown = exposure_sub.add_parser("down", help="delete what up made (not the CRDs) and the "
                                    "/etc/hosts entries")
    ehosts = exposure_sub.add_parser("hosts", help="resolve tenants' host names to the admin "
                                     "node IP (a block of /etc/hosts)")
    ehosts.add_argument("names", nargs="*", metavar="NAME")
    ehosts.add_argument("--remove", action="store_true", help="remove every entry of Haku's")
    for sp, fn in ((eup, cmd_exposure_up), (edown, cmd_exposure_down),
                   (ehosts, cmd_exposure_hosts)):
        sp.add_argument("--state-dir", help=f"default: $HAKU_DEV_DIR or {default_state_dir()}")
        sp.set_defaults(fn=fn)
    conformance = dev_sub.add_parser("conformance", help="the upstream conformance suite "
                                     "(issue 16): its test images and its run")
    conformance_sub = conformance.add_subparsers(dest="conformance_command", required=True)
    test_images_p = conformance_sub.add_parser(
        "images", help="build e2e.test's images under their upstream names (cached) and push "
        "them to the dev cluster's registry")
    test_images_p.add_argument("images", nargs="*", metavar="GROUP",
                               help="haku (pause, etcd), agnhost, busybox (and nonewprivs), "
                               "glibc-dns-testing, nginx, webservers (nautilus, kitten), "
                               "sample-apiserver (a Go build); "
                               "default: all")
    test_images_p.add_argument("--build-only", action="store_true",
                               help="write the archives; push nothing")
    test_images_p.add_argument("--kubernetes-version", help="an upstream tag, e.g. v1.36.3")
    test_images_p.add_argument("--state-dir",
                               help=f"default: $HAKU_DEV_DIR or {default_state_dir()}")
    test_images_p.set_defaults(fn=cmd_conformance_images)
    run_p = conformance_sub.add_parser(
        "run", help="the suite against a tenant with two dev workers: cluster up, operator "
        "in-cluster, e2e.test and the images built and pushed, the tenant made (or reused), "
        "the specs run in chunks; JUnit and a summary in --out (exit 1 if a failure is not "
        "one docs/conformance.md explains)")
    cluster_args(run_p)
    run_p.add_argument("--datastore", default="etcd", choices=("etcd", "postgres", "mariadb"),
                       help="the tenant's DataStore (default: etcd)")
    run_p.add_argument("--fast", action="store_true",
                       help="only the representative subset `make test` runs (a few minutes)")
    run_p.add_argument("--focus", action="append", default=[], metavar="REGEX",
                       help="only the specs whose name matches (Python regex; repeatable)")
    run_p.add_argument("--parallel", type=int, default=4,
                       help="chunks run at the same time (default: 4)")
    run_p.add_argument("--chunk-size", type=int, default=12,
                       help="specs per chunk (default: 12)")
    run_p.add_argument("--chunk-timeout", type=float, default=40.0, metavar="MINUTES",
                       help="a chunk is stopped after this (default: 40)")
    run_p.add_argument("--out", help="the report directory (default: "
                       "<state>/conformance/<datastore>-<time>)")
    run_p.set_defaults(fn=cmd_conformance_run)
    summary_p = conformance_sub.add_parser(
        "summary", help="a finished run's summary made again from its JUnit reports under "
        "today's known gaps (rewrites its summary.json and summary.md; exit 1 as run does)")
    summary_p.add_argument("dir", help="the run's report directory (its --out)")
    summary_p.set_defaults(fn=cmd_conformance_summary)
    deps = dev_sub.add_parser("deps", help="apt-get install the Debian packages it needs")
    deps.set_defaults(fn=cmd_deps)

    worker = dev_sub.add_parser("worker", help="worker nodes of tenants, on this machine")
    worker_sub = worker.add_subparsers(dest="worker_command", required=True)
    wadd = worker_sub.add_parser("add", help="a worker joined with kubeadm to a tenant exposed "
                                 "by a NodePort, or by an Ingress or Gateway host name "
                                 "(haku dev exposure)")
    wadd.add_argument("tenant", help="NAMESPACE/NAME of a Ready TenantControlPlane")
    wadd.add_argument("--keep-on-failure", action="store_true",
                      help="leave a worker that failed to join in place, to inspect it")
    wadd.add_argument("--behind-nat", action="store_true",
                      help="as a remote site behind NAT: the admin node and its pods cannot "
                      "open connections to the worker or its pods; what it sends reaches them "
                      "from the admin node IP")
    wadd.add_argument("--kubernetes-version",
                      help="the worker's kubelet and kubeadm (default: the tenant's "
                      "spec.kubernetes.version; an older minor tests version skew, a newer one "
                      "is refused)")
    wremove = worker_sub.add_parser("remove", help="delete its node in the tenant (best "
                                    "effort) and remove all it made on the host")
    wremove.add_argument("worker", nargs="?", help="w1, 1, or its node name")
    wremove.add_argument("--all", action="store_true", help="every worker")
    wremove.add_argument("--keep-node", action="store_true",
                         help="do not delete the Node in the tenant")
    wlist = worker_sub.add_parser("list", help="the workers and their processes")
    wlist.add_argument("--json", action="store_true")
    wrenew = worker_sub.add_parser(
        "renew-ca", help="the node's step of a CA rotation: trust the tenant's CA bundle "
        "(cluster-info) and TLS-bootstrap a new kubelet client certificate; pods keep running")
    wrenew.add_argument("worker", help="w1, 1, or its node name")
    wrenew.add_argument("--ttl", type=int, default=900,
                        help="seconds the bootstrap token it creates is valid (default 900)")
    for sp, fn in ((wadd, cmd_worker_add), (wremove, cmd_worker_remove),
                   (wlist, cmd_worker_list), (wrenew, cmd_worker_renew_ca)):
        sp.add_argument("--state-dir", help=f"default: $HAKU_DEV_DIR or {default_state_dir()}")
        sp.add_argument("--kubeconfig", help="of the admin cluster (default: the dev cluster's)")
        sp.set_defaults(fn=fn)

    op = sub.add_parser("operator", help="the TenantControlPlane operator")
    op_sub = op.add_subparsers(dest="operator_command", required=True)
    run = op_sub.add_parser("run", help="reconcile against a cluster until stopped")
    run.add_argument("--kubeconfig", help="default: $KUBECONFIG, ~/.kube/config or in-cluster")
    run.add_argument("--namespace", default="haku-system", help="for the leader Lease")
    run.add_argument("--default-datastore", help="for TenantControlPlanes without dataStore")
    run.add_argument("--workers", type=int, default=4)
    run.add_argument("--key-algorithm", default="RSA-2048",
                     choices=["RSA-2048", "RSA-3072", "RSA-4096", "ECDSA-P256", "ECDSA-P384"])
    run.add_argument("--node-address", help="NodePort endpoint address (default: a node's IP)")
    run.add_argument("--tenant-network", action="append", default=[], metavar="CIDR",
                     type=_cidr,
                     help="where tenants' nodes live: the tenant control planes' egress for "
                          "logs/exec/webhooks (repeatable; default: every address outside the "
                          "admin cluster's ranges)")
    run.add_argument("--no-tenant-network-policy", action="store_true",
                     help="apply no NetworkPolicy around tenant control planes (isolate them "
                          "by other means)")
    for what in ("service", "pod", "node"):
        run.add_argument(f"--admin-{what}-cidr", action="append", default=[], metavar="CIDR",
                         type=_cidr,
                         help=f"an admin-cluster {what} range tenants must keep clear of, "
                              "besides those the API tells (repeatable)")
    run.add_argument("--no-discover-admin-ranges", action="store_true",
                     help="take the admin ranges from the --admin-*-cidr flags alone (no "
                          "ServiceCIDR and Node reads)")
    run.add_argument("--no-leader-elect", action="store_true")
    run.add_argument("--lease-duration", type=float, default=15.0,
                     help="seconds a silent leader keeps the Lease")
    run.add_argument("--drain-timeout", type=float, default=20.0,
                     help="on SIGTERM, seconds reconciles in flight may finish (the Lease is "
                          "renewed meanwhile) before they are cancelled")
    run.add_argument("--etcd-compaction-interval", type=float, default=300.0,
                     help="seconds between the compaction rounds the operator runs on etcd "
                          "DataStores (tenants' API servers may not compact); 0: none, "
                          "compaction left to etcd's own (default 300, kube-apiserver's)")
    run.add_argument("--no-install-crds", action="store_true")
    run.add_argument("--metrics-bind-address", default=":8080", type=_bind_address,
                     help="HOST:PORT or :PORT serving /metrics; 0 disables (default :8080)")
    run.add_argument("--health-probe-bind-address", default=":8081", type=_bind_address,
                     help="HOST:PORT or :PORT serving /healthz and /readyz; 0 disables "
                          "(default :8081)")
    run.add_argument("--log-format", choices=["json", "text"],
                     help="default: text on a terminal, JSON lines otherwise")
    run.set_defaults(fn=cmd_operator_run)

    kc = sub.add_parser("kubeconfig", help="print a tenant's admin kubeconfig")
    kc.add_argument("tenant", help="NAMESPACE/NAME")
    kc.add_argument("--kubeconfig", help="of the admin cluster")
    kc.add_argument("--key", default="admin.conf", choices=["admin.conf", "super-admin.conf"])
    kc.set_defaults(fn=cmd_kubeconfig)

    join = sub.add_parser("join-command",
                          help="create a bootstrap token in a tenant; print its kubeadm join line")
    join.add_argument("tenant", help="NAMESPACE/NAME")
    join.add_argument("--kubeconfig", help="of the admin cluster")
    join.add_argument("--ttl", type=parse_duration, default=24 * 3600.0,
                      help="how long the token is valid, e.g. 30m, 24h (default 24h)")
    join.set_defaults(fn=cmd_join_command)
    rotate = sub.add_parser(
        "rotate-ca", help="rotate a tenant's cluster CA, staged; print what node owners do")
    rotate.add_argument("tenant", help="NAMESPACE/NAME")
    rotate.add_argument("--kubeconfig", help="of the admin cluster")
    rotate.add_argument("--no-wait", action="store_true",
                        help="ask for it and return (follow status.certificates.caRotation)")
    rotate.add_argument("--timeout", type=parse_duration, default=3600.0,
                        help="how long to follow it, e.g. 30m (default 1h)")
    rotate.set_defaults(fn=cmd_rotate_ca)

    backup = sub.add_parser("backup", help="one tenant's data (a consistent snapshot) to a file")
    backup.add_argument("tenant", help="NAMESPACE/NAME")
    backup.add_argument("-o", "--output", required=True, help="the file to write (mode 0600)")
    backup.add_argument("--with-pki", action="store_true",
                        help="include its CAs and service-account key (private keys!), so "
                             "that a restored tenant keeps its tokens and kubeconfigs valid")
    backup.add_argument("--kubeconfig", help="of the admin cluster")
    backup.set_defaults(fn=cmd_backup)
    restore = sub.add_parser("restore",
                             help="a backup into a new tenant, on any DataStore, before it starts")
    restore.add_argument("file", help="a file written by haku backup")
    restore.add_argument("--into", required=True, metavar="NAMESPACE/NAME",
                         help="the new TenantControlPlane (made from the backed-up spec)")
    restore.add_argument("--dataStore", "--datastore", dest="datastore",
                         help="its DataStore (default: the backed-up tenant's)")
    restore.add_argument("--no-wait", action="store_true",
                         help="return once the data is loaded, not once the tenant is Ready")
    restore.add_argument("--timeout", type=parse_duration, default=600.0,
                         help="how long to wait for each stage, e.g. 10m (default 10m)")
    restore.add_argument("--kubeconfig", help="of the admin cluster")
    restore.set_defaults(fn=cmd_restore)
    return p


def _command_error(e: subprocess.CalledProcessError | subprocess.TimeoutExpired) -> str:
    """The one line for an external command that failed where no clearer error was raised."""
    tail = output_tail(e.stderr or e.output)
    detail = f": {tail}" if tail else ""
    if isinstance(e, subprocess.TimeoutExpired):
        what = f"did not finish within {describe_duration(e.timeout)}"
    else:
        what = f"failed (exit {e.returncode})"
    return (f"`{command_line(e.cmd)}` {what}{detail}; fix what it reports (missing packages: "
            "`make deps`), then run this again")


def main(argv: list[str] | None = None) -> int:
    from lightkube import ApiError, ConfigError

    from haku.datastore import DataStoreError

    args = parser().parse_args(argv)
    try:
        code: int = args.fn(args)
        return code
    except (HakuError, WorkerError, WorkerNetError, PermissionError, LookupError,
            TimeoutError, DataStoreError) as e:
        print(f"haku: {e}", file=sys.stderr)
        return 1
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        if args.command != "dev":
            raise
        print(f"haku: {_command_error(e)}", file=sys.stderr)
        return 1
    except ApiError as e:
        print(f"haku: {e.status.message}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"haku: no admin cluster to talk to: {e} (give --kubeconfig or set KUBECONFIG)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("haku: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
