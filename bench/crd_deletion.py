"""How long deleting a fresh CustomResourceDefinition takes on a real API server: JSON on stdout.

Why (issue 16): the conformance spec "creating/deleting custom resource definition objects
works" creates a CRD, waits until it is in discovery, deletes it at once and gives the deletion
30 s. Each round here does the same, in one shared group as the spec's fixture does
(``mygroup.example.com``), ``--concurrency`` rounds at a time, and records how long the CRD
took to leave the API and discovery, and the last ``Terminating`` condition kube-apiserver's
CRD finalizer wrote while it waited. A round the finalizer stalled on shows
``InstanceDeletionFailed``/"storage is (re)initializing" and how long it stayed.

Runs against any API server: a tenant (``--kubeconfig /var/lib/haku/dev/tenants/<t>.kubeconfig``)
or the dev admin cluster's own kube-apiserver and etcd (the default), which Haku does not
configure as a tenant, to tell the API server's behaviour from Haku's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
from lightkube import AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.core.exceptions import ApiError
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition

from haku.dev.layout import Layout, default_state_dir

GROUP = "mygroup.example.com"  # the e2e fixture's group: every round's CRD is a sibling
VERSION = "v1beta1"
POLL = 0.25


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def crd(group: str, plural: str) -> dict[str, Any]:
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": "Cluster",
                     "names": {"plural": plural, "singular": plural[:-1],
                               "kind": plural[:-1].capitalize(),
                               "listKind": plural[:-1].capitalize() + "List"},
                     "versions": [{"name": VERSION, "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": {
                                       "type": "object",
                                       "x-kubernetes-preserve-unknown-fields": True}}}]}}


def http_of(client: AsyncClient) -> httpx2.AsyncClient:
    """The httpx2 client under lightkube's AsyncClient, for the discovery document (lightkube
    has no call for it); the same reach-in as haku.controller.fencing."""
    http = getattr(getattr(client, "_client", None), "_client", None)
    if not isinstance(http, httpx2.AsyncClient):
        raise TypeError("no httpx2.AsyncClient under lightkube's AsyncClient")
    return http


async def in_discovery(http: httpx2.AsyncClient, group: str, plural: str) -> bool:
    r = await http.get(f"/apis/{group}/{VERSION}")
    if r.status_code == 404:
        return False
    r.raise_for_status()
    return any(res.get("name") == plural for res in r.json().get("resources", []))


def conditions(obj: CustomResourceDefinition) -> list[Any]:
    return list(obj.status.conditions or []) if obj.status else []


def terminating(obj: CustomResourceDefinition) -> str | None:
    for c in conditions(obj):
        if c.type == "Terminating":
            return f"{c.reason}: {c.message}"
    return None


async def one_round(client: AsyncClient, group: str, give_up: float) -> dict[str, Any]:
    plural = "crddel" + secrets.token_hex(4) + "s"
    name = f"{plural}.{group}"
    http = http_of(client)
    await client.create(from_dict(crd(group, plural)))
    started = time.monotonic()
    while True:  # Established, and served: what the e2e fixture waits for
        obj = await client.get(CustomResourceDefinition, name)
        established = any(c.type == "Established" and c.status == "True"
                          for c in conditions(obj))
        if established and await in_discovery(http, group, plural):
            break
        if time.monotonic() - started > give_up:
            raise TimeoutError(f"{name} not served after {give_up:.0f}s")
        await asyncio.sleep(0.05)
    await client.delete(CustomResourceDefinition, name)
    deleted = time.monotonic()
    seen: list[str] = []
    gone_api: float | None = None
    while time.monotonic() - deleted < give_up:
        try:
            cond = terminating(await client.get(CustomResourceDefinition, name))
            if cond and (not seen or seen[-1] != cond):
                seen.append(cond)
        except ApiError as e:
            if e.status.code != 404:
                raise
            gone_api = time.monotonic() - deleted
            break
        await asyncio.sleep(POLL)
    gone_discovery: float | None = None
    if gone_api is not None:
        while time.monotonic() - deleted < give_up:
            if not await in_discovery(http, group, plural):
                gone_discovery = time.monotonic() - deleted
                break
            await asyncio.sleep(POLL)
    return {"name": name, "served_after_s": round(deleted - started, 3),
            "gone_from_api_s": None if gone_api is None else round(gone_api, 3),
            "gone_from_discovery_s": (None if gone_discovery is None
                                      else round(gone_discovery, 3)),
            "terminating_conditions": seen}


async def run(kubeconfig: Path, group: str, rounds: int, concurrency: int, give_up: float,
              limit: float) -> dict[str, Any]:
    config = KubeConfig.from_file(kubeconfig).get()
    if config is None:
        raise SystemExit(f"{kubeconfig}: no current context")
    client = AsyncClient(config)
    results: list[dict[str, Any]] = []
    queue = list(range(rounds))

    async def worker() -> None:
        while queue:
            queue.pop()
            result = await one_round(client, group, give_up)
            results.append(result)
            took = result["gone_from_discovery_s"]
            say(f"  {len(results):4d}/{rounds} {result['name']}: "
                f"{'not gone' if took is None else f'{took:.2f}s'}"
                + (f" ({result['terminating_conditions'][-1]})"
                   if took is None or took > limit else ""))

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    times = sorted(r["gone_from_discovery_s"] if r["gone_from_discovery_s"] is not None
                   else float("inf") for r in results)
    slow = [r for r in results if r["gone_from_discovery_s"] is None
            or r["gone_from_discovery_s"] > limit]
    return {
        "benchmark": "crd_deletion",
        "server": config.cluster.server, "group": group,
        "rounds": rounds, "concurrency": concurrency, "limit_s": limit, "give_up_s": give_up,
        "deletion_s": {"p50": round(statistics.median(times), 3),
                       "p95": round(times[int(0.95 * (len(times) - 1))], 3),
                       "max": round(times[-1], 3)},
        "over_limit": len(slow),
        "over_limit_after_storage_initializing": sum(
            any("storage is (re)initializing" in c for c in r["terminating_conditions"])
            for r in slow),
        "any_storage_initializing": sum(
            any("storage is (re)initializing" in c for c in r["terminating_conditions"])
            for r in results),
        "slow_rounds": slow,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", type=Path,
                        help="default: the dev admin cluster's (haku dev up)")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--group", default=GROUP,
                        help=f"the CRDs' group (default {GROUP}, the e2e fixture's; another "
                             "keeps clear of a conformance run on the same API server)")
    parser.add_argument("--limit", type=float, default=30.0,
                        help="the seconds the conformance spec allows (default 30)")
    parser.add_argument("--give-up", type=float, default=420.0,
                        help="stop waiting for one deletion after this long (default 420: "
                             "past the CRD informer's 5-minute resync)")
    args = parser.parse_args()
    kubeconfig = args.kubeconfig or Layout(default_state_dir()).admin_kubeconfig
    result = asyncio.run(run(kubeconfig, args.group, args.rounds, args.concurrency,
                             args.give_up, args.limit))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
