"""The admin cluster's own address ranges: what the operator was told (``--admin-*-cidr``) and
what the API tells (ServiceCIDR objects; Nodes' ``spec.podCIDRs`` and addresses).

Tenants must stay clear of them (their Service and pod ranges, haku.render.netpol) and their
control-plane pods get no egress into them. Learnt again at most every ``ttl`` seconds; if the
API cannot be asked, the last answer stands.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Node
from lightkube.resources.networking_v1 import ServiceCIDR

from haku.controller.config import OperatorConfig
from haku.render.netpol import AdminRanges

log = logging.getLogger(__name__)

Ranges = list[tuple[str, str]]


def _add(into: Ranges, cidr: str, source: str) -> None:
    try:
        net = str(ipaddress.ip_network(cidr, strict=False))
    except ValueError:
        log.warning("ignoring %r from %s: not a CIDR", cidr, source)
        return
    if all(net != seen for seen, _ in into):
        into.append((net, source))


def _host(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None  # a Hostname or InternalDNS entry
    return f"{ip}/{ip.max_prefixlen}"


def from_nodes(nodes: list[Any], pods: Ranges, hosts: Ranges) -> None:
    for node in nodes:
        name = node.metadata.name
        spec = node.spec
        for cidr in (spec.podCIDRs if spec else None) or ([spec.podCIDR] if spec and
                                                           spec.podCIDR else []):
            _add(pods, cidr, f"Node {name} spec.podCIDRs")
        for a in (node.status.addresses if node.status else None) or []:
            if a.type in ("InternalIP", "ExternalIP") and (cidr := _host(a.address)):
                _add(hosts, cidr, f"Node {name} {a.type}")


class AdminNetwork:
    def __init__(self, client: AsyncClient, config: OperatorConfig, ttl: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.config = config
        self.ttl = ttl
        self.clock = clock
        self._ranges: AdminRanges | None = None
        self._at = 0.0
        self._warned: set[str] = set()

    def _given(self) -> tuple[Ranges, Ranges, Ranges]:
        services: Ranges = []
        pods: Ranges = []
        nodes: Ranges = []
        for cidrs, into, flag in ((self.config.admin_service_cidrs, services,
                                   "--admin-service-cidr"),
                                  (self.config.admin_pod_cidrs, pods, "--admin-pod-cidr"),
                                  (self.config.admin_node_cidrs, nodes, "--admin-node-cidr")):
            for cidr in cidrs:
                _add(into, cidr, flag)
        return services, pods, nodes

    async def _list(self, resource: Any) -> list[Any]:
        try:
            return [o async for o in self.client.list(resource)]
        except ApiError as e:
            if e.status.code not in (403, 404):
                raise
            if resource.__name__ not in self._warned:
                self._warned.add(resource.__name__)
                log.warning("cannot list %s (%s): the admin ranges it would tell come from "
                            "the --admin-*-cidr flags alone", resource.__name__, e.status.code)
            return []

    async def ranges(self) -> AdminRanges:
        now = self.clock()
        if self._ranges is not None and now - self._at < self.ttl:
            return self._ranges
        services, pods, nodes = self._given()
        if self.config.discover_admin_ranges:
            try:
                for sc in await self._list(ServiceCIDR):
                    for cidr in (sc.spec.cidrs if sc.spec else None) or []:
                        _add(services, cidr, f"ServiceCIDR {sc.metadata.name}")
                from_nodes(await self._list(Node), pods, nodes)
            except Exception:
                if self._ranges is not None:
                    log.warning("admin ranges not refreshed; keeping the last ones",
                                exc_info=True)
                    return self._ranges
                raise
        self._ranges = AdminRanges(tuple(services), tuple(pods), tuple(nodes))
        self._at = now
        return self._ranges
