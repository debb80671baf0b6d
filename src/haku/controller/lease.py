"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Expiry is judged by *observed* time, never by comparing the holder's ``renewTime`` with the
local clock (the machines' clocks may disagree): a candidate remembers the Lease record it last
read (holder, times, transitions, resourceVersion) and the local monotonic time at which that
record last changed, and takes the Lease only once the record has stayed unchanged for the
Lease's ``leaseDurationSeconds`` of its own time. The times written into the Lease are for
people and other tools to read.

The holder renews every ``retry_period``. Each successful renewal opens the :class:`Fence`
for ``renew_deadline`` (< ``lease_duration``) counted from before the request was sent; once
renewals have failed for ``renew_deadline``, or another holder is seen, the fence closes for
good and :meth:`LeaseElector.hold` raises :class:`LostLeadership`. Writes carry the
resourceVersion they read, so two candidates racing for an expired Lease cannot both win (the
loser gets 409 Conflict).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from haku.controller.fencing import Fence, LostLeadership

__all__ = ["ATTEMPT_ERRORS", "Fence", "LeaseElector", "LostLeadership", "Record"]

log = logging.getLogger("haku.lease")


# A failed attempt at the Lease: the API server refused, or could not be reached at all
# (connection refused, timeout, TLS or socket errors). Either way the attempt failed; the
# holder keeps trying until its renew deadline has passed.
ATTEMPT_ERRORS = (ApiError, httpx2.HTTPError, OSError)


@dataclass(frozen=True)
class Record:
    """What a candidate compares between two reads of the Lease: any change restarts its
    count of observed time."""

    resource_version: str | None
    holder: str | None
    acquire_time: Any
    renew_time: Any
    duration: int | None
    transitions: int | None

    @classmethod
    def of(cls, lease: Lease) -> Record:
        spec = lease.spec or LeaseSpec()
        return cls(lease.metadata.resourceVersion if lease.metadata else None,
                   spec.holderIdentity or None, spec.acquireTime, spec.renewTime,
                   spec.leaseDurationSeconds, spec.leaseTransitions)


class LeaseElector:
    def __init__(self, client: AsyncClient, namespace: str, name: str, identity: str,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0,
                 retry_period: float = 2.0, fence: Fence | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < renew_deadline < lease_duration:
            raise ValueError(f"renew deadline {renew_deadline}s must be shorter than the "
                             f"lease duration {lease_duration}s")
        self.client, self.namespace, self.name = client, namespace, name
        self.identity = identity
        self.lease_duration, self.renew_deadline = lease_duration, renew_deadline
        self.retry_period = retry_period
        self.clock = clock
        self.fence = fence if fence is not None else Fence(renew_deadline, clock)
        self.reachable = True  # the last attempt at the Lease got an answer (for /readyz)
        self.observed: Record | None = None  # the record last read or written
        self.observed_at = 0.0  # local monotonic time at which `observed` last changed

    def _observe(self, lease: Lease, now: float) -> Record:
        record = Record.of(lease)
        if record != self.observed:
            self.observed, self.observed_at = record, now
        return record

    @property
    def holder(self) -> str | None:
        """The holder in the record last observed."""
        return self.observed.holder if self.observed else None

    async def _try(self) -> bool:
        """One attempt at taking or renewing the Lease; True if this candidate holds it now
        (and the fence is renewed from the time this attempt began)."""
        started = self.clock()
        wall = datetime.now(UTC)  # written for readers only; never compared
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as e:
            if e.status.code != 404:
                raise
            fresh = Lease(metadata=ObjectMeta(name=self.name, namespace=self.namespace),
                          spec=LeaseSpec(holderIdentity=self.identity,
                                         leaseDurationSeconds=int(self.lease_duration),
                                         acquireTime=wall, renewTime=wall, leaseTransitions=0))
            try:
                created = await self.client.create(fresh)
            except ApiError as conflict:
                if conflict.status.code == 409:
                    return False
                raise
            self._observe(created, self.clock())
            self.fence.renewed(started)
            return True
        record = self._observe(lease, self.clock())
        duration = record.duration or self.lease_duration
        if (record.holder and record.holder != self.identity
                and self.clock() < self.observed_at + duration):
            return False  # someone else holds it, and was seen renewing within its duration
        spec = lease.spec or LeaseSpec()
        if record.holder != self.identity:
            spec.acquireTime = wall
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
        spec.holderIdentity = self.identity
        spec.renewTime = wall
        spec.leaseDurationSeconds = int(self.lease_duration)
        lease.spec = spec
        try:
            written = await self.client.replace(lease)  # carries resourceVersion: races → 409
        except ApiError as e:
            if e.status.code == 409:
                return False
            raise
        self._observe(written, self.clock())
        self.fence.renewed(started)
        return True

    async def acquire(self) -> None:
        """Wait until this candidate holds the Lease."""
        while True:
            try:
                won = await self._try()
                self.reachable = True
                if won:
                    log.info("leader election: %s now leads %s/%s", self.identity,
                             self.namespace, self.name)
                    return
            except ATTEMPT_ERRORS as e:
                self.reachable = False
                log.warning("leader election: %s", e or type(e).__name__)
            await asyncio.sleep(self.retry_period)

    def _lost(self, why: str) -> LostLeadership:
        self.fence.revoke(why)
        log.error("leader election: %s lost %s/%s: %s", self.identity, self.namespace,
                  self.name, why)
        return LostLeadership(f"{self.identity} lost {self.namespace}/{self.name}: {why}")

    async def hold(self) -> None:
        """Renew until cancelled. Raise LostLeadership, with the fence closed, once renewals
        have failed for ``renew_deadline`` (an attempt that hangs is cut off then), or as soon
        as another holder is seen."""
        while True:
            await asyncio.sleep(self.retry_period)
            left = self.fence.remaining()
            if left <= 0:  # e.g. the process was stopped for longer than the deadline
                raise self._lost(f"not renewed within {self.renew_deadline:.1f}s")
            try:
                ok = await asyncio.wait_for(self._try(), left)
            except TimeoutError:
                log.warning("leader election: renewing took longer than the deadline")
                ok = False
            except ATTEMPT_ERRORS as e:
                log.warning("leader election: renewing failed: %s", e or type(e).__name__)
                ok = False
            if ok:
                continue
            if self.holder and self.holder != self.identity:
                raise self._lost(f"{self.holder} holds it now")
            if not self.fence.held:
                raise self._lost(f"not renewed within {self.renew_deadline:.1f}s")

    async def release(self) -> None:
        """Give the Lease up at a clean shutdown, so a standby takes over at once. The fence
        closes first: nothing may be written once another candidate can lead."""
        self.fence.revoke("released the Lease")
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
            if lease.spec and lease.spec.holderIdentity == self.identity:
                lease.spec.holderIdentity = None
                lease.spec.renewTime = None
                await self.client.replace(lease)
                log.info("leader election: %s released %s/%s", self.identity,
                         self.namespace, self.name)
        except ATTEMPT_ERRORS as e:
            log.warning("leader election: releasing failed: %s", e or type(e).__name__)
