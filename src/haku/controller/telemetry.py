"""An operator's metrics and probes, and the HTTP servers that expose them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from haku.controller import probes
from haku.controller.metrics import Metrics


@dataclass
class Telemetry:
    metrics: Metrics = field(default_factory=Metrics)
    health: probes.Health = field(default_factory=probes.Health)
    servers: dict[str, asyncio.Server] = field(default_factory=dict)  # "metrics", "health"
    serving: asyncio.Event = field(default_factory=asyncio.Event)

    def port(self, which: str) -> int:
        """The port the ``metrics`` or ``health`` server listens on (tests bind port 0)."""
        return probes.bound_port(self.servers[which])

    async def start(self, metrics_address: str, health_address: str) -> None:
        """Serve /metrics on one address and /healthz, /readyz on the other (one server when
        both name the same fixed port); ``0`` disables either."""
        def metrics() -> probes.Answer:
            ctype, body = self.metrics.exposition()
            return 200, ctype, body

        health = {"/healthz": self.health.route(self.health.live),
                  "/readyz": self.health.route(self.health.ready)}
        wanted: dict[str, tuple[str, dict[str, probes.Route]]] = {}
        if probes.parse_address(metrics_address) is not None:
            wanted["metrics"] = (metrics_address, {"/metrics": metrics})
        shared = health_address == metrics_address and not health_address.endswith(":0")
        if "metrics" in wanted and shared:
            wanted["metrics"][1].update(health)
        elif probes.parse_address(health_address) is not None:
            wanted["health"] = (health_address, health)
        try:
            for which, (address, routes) in wanted.items():
                server = await probes.serve(address, routes)
                if server is not None:
                    self.servers[which] = server
        except BaseException:
            await self.stop()
            raise
        if shared and "metrics" in self.servers:
            self.servers["health"] = self.servers["metrics"]
        self.serving.set()

    async def stop(self) -> None:
        for server in {id(s): s for s in self.servers.values()}.values():
            server.close()
            await server.wait_closed()
        self.servers.clear()
