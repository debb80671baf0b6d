"""The fence: whether this process may write now, because it holds the leader Lease with margin.

The :class:`~haku.controller.lease.LeaseElector` records each successful renewal with the local
monotonic time taken *before* it sent the renewal. A candidate elsewhere may take the Lease only
once it has seen the Lease unchanged for ``lease_duration`` of its own time; the fence stays
open for ``renew_deadline`` (< ``lease_duration``) after that moment, so while it is open no one
else can have taken over yet. It closes for good once the elector loses or releases the Lease.

:meth:`Fence.install` fences every mutating request (POST, PUT, PATCH, DELETE) of a lightkube
``AsyncClient`` at its HTTP layer: such a request raises :class:`LostLeadership` before anything
is sent. Reads (and watches) pass. The elector uses a client of its own, which is not fenced.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import httpx2
from lightkube import AsyncClient

log = logging.getLogger("haku.fencing")

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class LostLeadership(RuntimeError):
    """This process does not (or no longer surely) hold the leader Lease."""


class Fence:
    """Open while the last renewal of the Lease is younger than ``renew_deadline`` (local
    monotonic clock); closed before the first renewal and for good after :meth:`revoke`."""

    def __init__(self, renew_deadline: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.renew_deadline = renew_deadline
        self.clock = clock
        self._renewed_at: float | None = None
        self._revoked: str | None = None
        self._always = False
        self.refused = 0  # writes refused by the installed hook

    @classmethod
    def always(cls) -> Fence:
        """A fence that never closes: for an operator running without leader election."""
        fence = cls(math.inf)
        fence._always = True
        return fence

    def renewed(self, at: float) -> None:
        """The Lease was taken or renewed by a request sent after local monotonic time ``at``
        (take it *before* sending: the other candidates' clocks started no earlier)."""
        if self._revoked is None and (self._renewed_at is None or at > self._renewed_at):
            self._renewed_at = at

    def revoke(self, reason: str) -> None:
        """Close the fence for good (the Lease was lost, or is being released)."""
        if self._revoked is None and not self._always:
            self._revoked = reason

    def remaining(self) -> float:
        """Seconds the fence stays open without another renewal (0 when closed)."""
        if self._always:
            return math.inf
        if self._revoked is not None or self._renewed_at is None:
            return 0.0
        return max(0.0, self._renewed_at + self.renew_deadline - self.clock())

    @property
    def held(self) -> bool:
        return self.remaining() > 0

    def check(self) -> None:
        """Return if this process may write now; raise :class:`LostLeadership` otherwise."""
        if self._always:
            return
        if self._revoked is not None:
            raise LostLeadership(f"not the leader: {self._revoked}")
        if self._renewed_at is None:
            raise LostLeadership("not the leader: the Lease was never taken")
        age = self.clock() - self._renewed_at
        if age >= self.renew_deadline:
            raise LostLeadership(f"not surely the leader: the Lease was last renewed {age:.1f}s "
                                 f"ago (renew deadline {self.renew_deadline:.1f}s)")

    async def _on_request(self, request: httpx2.Request) -> None:
        if request.method not in MUTATING:
            return
        try:
            self.check()
        except LostLeadership as e:
            self.refused += 1
            log.warning("fenced: refused %s %s (%s)", request.method, request.url.path, e)
            raise

    def install(self, client: AsyncClient) -> None:
        """Fence every mutating request ``client`` makes, before it is sent."""
        http = _http_client(client)
        hooks = http.event_hooks
        hooks["request"] = [*hooks["request"], self._on_request]
        http.event_hooks = hooks


def _http_client(client: AsyncClient) -> httpx2.AsyncClient:
    """The httpx2 client under lightkube's AsyncClient (AsyncClient._client is lightkube's
    GenericAsyncClient, whose _client is the httpx2.AsyncClient every request goes through)."""
    generic = getattr(client, "_client", None)
    http = getattr(generic, "_client", None)
    if not isinstance(http, httpx2.AsyncClient):
        raise TypeError(f"cannot fence {type(client).__name__}: no httpx2.AsyncClient found "
                        "under it (lightkube's internals changed?)")
    return http
