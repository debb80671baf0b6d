"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

The holder renews every ``retry_period``; a candidate takes the Lease once it has not been
renewed for ``lease_duration``. Writes carry the resourceVersion they read, so two candidates
racing for an expired Lease cannot both win (the loser gets 409 Conflict).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

log = logging.getLogger("haku.lease")


class LostLeadership(RuntimeError):
    pass


# A failed attempt at the Lease: the API server refused, or could not be reached at all
# (connection refused, timeout, TLS or socket errors). Either way the attempt failed; the
# holder keeps trying until its lease would have run out.
ATTEMPT_ERRORS = (ApiError, httpx2.HTTPError, OSError)


class LeaseElector:
    def __init__(self, client: AsyncClient, namespace: str, name: str, identity: str,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0,
                 retry_period: float = 2.0) -> None:
        self.client, self.namespace, self.name = client, namespace, name
        self.identity = identity
        self.lease_duration, self.renew_deadline = lease_duration, renew_deadline
        self.retry_period = retry_period
        self.reachable = True  # the last attempt at the Lease got an answer (for /readyz)

    async def _try(self) -> bool:
        now = datetime.now(UTC)
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as e:
            if e.status.code != 404:
                raise
            fresh = Lease(metadata=ObjectMeta(name=self.name, namespace=self.namespace),
                          spec=LeaseSpec(holderIdentity=self.identity,
                                         leaseDurationSeconds=int(self.lease_duration),
                                         acquireTime=now, renewTime=now, leaseTransitions=0))
            try:
                await self.client.create(fresh)
            except ApiError as conflict:
                if conflict.status.code == 409:
                    return False
                raise
            return True
        spec = lease.spec or LeaseSpec()
        holder = spec.holderIdentity
        renewed = spec.renewTime or spec.acquireTime
        duration = timedelta(seconds=spec.leaseDurationSeconds or self.lease_duration)
        if holder and holder != self.identity and renewed and renewed + duration > now:
            return False  # someone else holds a live lease
        if holder != self.identity:
            spec.acquireTime = now
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
        spec.holderIdentity = self.identity
        spec.renewTime = now
        spec.leaseDurationSeconds = int(self.lease_duration)
        lease.spec = spec
        try:
            await self.client.replace(lease)  # carries resourceVersion: races end in 409
        except ApiError as e:
            if e.status.code == 409:
                return False
            raise
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

    async def hold(self) -> None:
        """Renew until cancelled; raise LostLeadership if renewal fails past the deadline."""
        last_renewed = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(self.retry_period)
            try:
                ok = await self._try()
            except ATTEMPT_ERRORS as e:
                log.warning("leader election: renewing failed: %s", e or type(e).__name__)
                ok = False
            now = asyncio.get_running_loop().time()
            if ok:
                last_renewed = now
            elif now - last_renewed > self.renew_deadline:
                raise LostLeadership(f"{self.identity} could not renew {self.name}")

    async def release(self) -> None:
        """Give the Lease up at a clean shutdown, so a standby takes over at once."""
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
            if lease.spec and lease.spec.holderIdentity == self.identity:
                lease.spec.holderIdentity = None
                lease.spec.renewTime = None
                await self.client.replace(lease)
        except ATTEMPT_ERRORS as e:
            log.warning("leader election: releasing failed: %s", e or type(e).__name__)
