"""Keeping replicas' resident tiers coherent through an invalidation stream.

Replicas share Redis and PostgreSQL; only their resident tiers (T0, T1) are
private. After every authoritative commit the writer publishes the refs and
their new versions on a Redis stream. Each other replica drops those refs
from its resident tiers and stops treating their namespaces as whole, so its
next read goes down to the shared tiers and finds the new version.

Nothing is silently lost on the way:

- a listener that reconnects reads on from the last entry it handled; where
  it cannot know what it missed (Redis restarted, entries trimmed), it drops
  every authoritative record its resident tiers hold;
- a writer that cannot publish keeps the message and retries; if too many
  pile up it publishes one "everything changed" message instead;
- a replica that read the old version just before a message arrived and
  promotes it just after is stopped by a version check: it remembers the
  newest version announced for each recent ref and refuses anything older.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from collections.abc import Sequence

from memory_tiers.base import Record, RecordKey, TierError
from memory_tiers.invalidations import Invalidation, InvalidationStream
from memory_tiers.resident import ResidentTier
from memory_tiers.retry import Backoff

logger = logging.getLogger(__name__)


class Coherence:
    """Publishes this replica's commits and applies everyone else's."""

    def __init__(
        self,
        stream: InvalidationStream,
        resident: Sequence[ResidentTier],
        origin_id: str,
        remember: int = 100_000,
        max_unpublished: int = 100_000,
    ) -> None:
        self.stream = stream
        self.resident = list(resident)
        self.origin_id = origin_id
        self.remember = remember
        self.max_unpublished = max_unpublished
        self._newest: OrderedDict[RecordKey, int] = OrderedDict()
        self._unpublished: list[tuple[RecordKey, int]] = []
        self._owe_everything = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.backoff = Backoff(base_s=0.5, max_s=30.0)
        self.received = 0
        self.published = 0
        self.gaps = 0

    async def start(self) -> None:
        """Subscribe now, or keep trying in the background if Redis is down."""
        self._tasks.append(asyncio.create_task(self._publish_owed(), name="owed"))
        try:
            await self._subscribe()
        except TierError as exc:
            logger.warning("not subscribed to invalidations yet, will retry: %s", exc)
            self._tasks.append(asyncio.create_task(self._subscribe_until_done()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.stream.close()

    async def announce(self, committed: Sequence[Record]) -> None:
        """Tell the other replicas about a commit; a failure is retried later.

        The commit is already durable: an announcement that waits costs the
        other replicas freshness for that long, never data.
        """
        items = [(r.ref, r.version) for r in committed]
        try:
            await self.stream.publish(items, self.origin_id)
            self.published += len(items)
        except TierError as exc:
            logger.warning(
                "invalidation of %d refs waits to be published: %s", len(items), exc
            )
            self._owe(items)

    async def apply(self, message: Invalidation) -> None:
        """Drop refs another replica changed, and remember their versions."""
        if message.everything:
            await self.forget_everything()
            return
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

    async def forget_everything(self) -> None:
        """What another replica changed is unknown: drop all authoritative rows."""
        self.gaps += 1
        dropped = 0
        for tier in self.resident:
            dropped += await tier.forget_authoritative()
        logger.warning(
            "invalidations were missed: %d resident records dropped", dropped
        )

    def fresh(self, records: Sequence[Record]) -> list[Record]:
        """The records not older than a version another replica announced."""
        return [r for r in records if r.version >= self._newest.get(r.ref, 0)]

    # -- internals ----------------------------------------------------------

    async def _subscribe(self) -> None:
        await self.stream.subscribe(
            self.apply, ignore_origin=self.origin_id, on_gap=self.forget_everything
        )

    async def _subscribe_until_done(self) -> None:
        for attempt in itertools.count():
            await asyncio.sleep(self.backoff.delay_s(attempt))
            try:
                await self._subscribe()
            except TierError as exc:
                logger.warning("invalidation subscription failed again: %s", exc)
                continue
            # Anything published before this point was never seen here.
            await self.forget_everything()
            logger.info("subscribed to invalidations after %d retries", attempt + 1)
            return

    def _owe(self, items: list[tuple[RecordKey, int]]) -> None:
        self._unpublished.extend(items)
        if len(self._unpublished) > self.max_unpublished:
            self._unpublished.clear()
            self._owe_everything = True
        self._wake.set()

    async def _publish_owed(self) -> None:
        attempt = 0
        while True:
            await self._wake.wait()
            try:
                if self._owe_everything:
                    await self.stream.publish([], self.origin_id, everything=True)
                    self._owe_everything = False
                if self._unpublished:
                    batch = list(self._unpublished)
                    await self.stream.publish(batch, self.origin_id)
                    del self._unpublished[: len(batch)]
            except TierError:
                await asyncio.sleep(self.backoff.delay_s(attempt))
                attempt += 1
                continue
            attempt = 0
            if not self._unpublished and not self._owe_everything:
                self._wake.clear()

    def _note(self, ref: RecordKey, version: int) -> None:
        if version >= self._newest.get(ref, 0):
            self._newest[ref] = version
            self._newest.move_to_end(ref)
        while len(self._newest) > self.remember:
            self._newest.popitem(last=False)
