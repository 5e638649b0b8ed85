"""Keeping replicas' resident tiers coherent through Redis invalidations.

Replicas share Redis and PostgreSQL; only their resident tiers (T0, T1) are
private. After every authoritative commit the writer publishes the refs and
their new versions. Each other replica drops those refs from its resident
tiers and stops treating their namespaces as whole, so its next read goes
down to the shared tiers and finds the new version.

A second guard covers the race where a replica read the old version just
before the invalidation arrived and promotes it just after: the replica
remembers the newest version it was told about for each recent ref, and
refuses to promote anything older.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from collections.abc import Sequence

from memory_tiers.base import Record, RecordKey, TierError
from memory_tiers.redis_cache import Invalidation, RedisTier
from memory_tiers.resident import ResidentTier
from memory_tiers.retry import Backoff

logger = logging.getLogger(__name__)


class Coherence:
    """Publishes this replica's commits and applies everyone else's."""

    def __init__(
        self,
        redis: RedisTier,
        resident: Sequence[ResidentTier],
        origin_id: str,
        remember: int = 100_000,
    ) -> None:
        self.redis = redis
        self.resident = list(resident)
        self.origin_id = origin_id
        self.remember = remember
        self._newest: OrderedDict[RecordKey, int] = OrderedDict()
        self.received = 0
        self.published = 0
        self.backoff = Backoff(base_s=0.5, max_s=30.0)
        self._subscribed = False
        self._retry: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe now, or keep trying in the background if Redis is down."""
        try:
            await self._subscribe()
        except TierError as exc:
            logger.warning("not subscribed to invalidations yet, will retry: %s", exc)
            self._retry = asyncio.create_task(self._subscribe_until_done())

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            await asyncio.gather(self._retry, return_exceptions=True)

    @property
    def subscribed(self) -> bool:
        return self._subscribed

    async def _subscribe(self) -> None:
        await self.redis.subscribe(self.apply, ignore_origin=self.origin_id)
        self._subscribed = True

    async def _subscribe_until_done(self) -> None:
        # TODO: until this succeeds, other replicas' changes are not dropped
        # from this replica's T0/T1, which may serve old versions meanwhile.
        for attempt in itertools.count():
            await asyncio.sleep(self.backoff.delay_s(attempt))
            try:
                await self._subscribe()
            except TierError as exc:
                logger.warning("invalidation subscription failed again: %s", exc)
                continue
            logger.info("subscribed to invalidations after %d retries", attempt + 1)
            return

    async def announce(self, committed: Sequence[Record]) -> None:
        """Tell the other replicas about a commit; a failure is logged, not raised.

        The commit is already durable: a lost announcement costs staleness on
        other replicas until their copies are evicted, never data.
        """
        items = [(r.ref, r.version) for r in committed]
        try:
            await self.redis.publish_invalidation(items, self.origin_id)
            self.published += len(items)
        except TierError as exc:
            # TODO: an announcement lost here is never retried; other replicas
            # may serve the old version from T0/T1 until it is evicted.
            logger.warning("invalidation of %d refs not published: %s", len(items), exc)

    async def apply(self, message: Invalidation) -> None:
        """Drop refs another replica changed, and remember their versions."""
        refs = [ref for ref, _ in message.items]
        for ref, version in message.items:
            self._note(ref, version)
        namespaces = {ns for ns, _ in refs}
        for tier in self.resident:
            await tier.delete_many(refs)
            for namespace in namespaces:
                tier.release_namespace(namespace)
        self.received += len(refs)
        logger.debug("applied %d invalidations from %s", len(refs), message.origin_id)

    def fresh(self, records: Sequence[Record]) -> list[Record]:
        """The records not older than a version another replica announced."""
        return [r for r in records if r.version >= self._newest.get(r.ref, 0)]

    def _note(self, ref: RecordKey, version: int) -> None:
        if version >= self._newest.get(ref, 0):
            self._newest[ref] = version
            self._newest.move_to_end(ref)
        while len(self._newest) > self.remember:
            self._newest.popitem(last=False)
