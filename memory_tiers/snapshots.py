"""Snapshots of the resident tiers in object storage, for warm restarts.

On stop, each resident tier's records are written as one snapshot per name
and tier. On start, a replica reads its snapshot back and keeps only records
whose version is still the current one in the system of record, so a
snapshot taken before later writes or deletes never serves stale data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from memory_tiers.base import Record, TierError
from memory_tiers.object_store import ObjectTier
from memory_tiers.pgvector_store import PgvectorTier
from memory_tiers.resident import ResidentTier

logger = logging.getLogger(__name__)

CHECK_BATCH = 5_000


class Snapshots:
    """Saves and restores the resident tiers of one replica."""

    def __init__(
        self,
        objects: ObjectTier,
        store: PgvectorTier,
        resident: Sequence[ResidentTier],
        snapshot_name: str,
    ) -> None:
        self.objects = objects
        self.store = store
        self.resident = list(resident)
        self.snapshot_name = snapshot_name

    def name(self, tier: ResidentTier) -> str:
        return f"{self.snapshot_name}.{tier.name}"

    async def save(self) -> dict[str, int]:
        """Write every resident tier's records; returns records saved per tier.

        Raises TierError if object storage fails.
        """
        saved = {}
        for tier in self.resident:
            records = await tier.dump()
            await self.objects.save_snapshot(self.name(tier), records)
            saved[tier.name] = len(records)
        logger.info("snapshot saved: %s", saved)
        return saved

    async def save_quietly(self) -> None:
        """Save on shutdown; a failure costs the next start its warmth, not data."""
        try:
            await self.save()
        except TierError as exc:
            logger.warning("snapshot not saved, the next start is cold: %s", exc)

    async def warm(self) -> dict[str, int]:
        """Restore each tier from its snapshot, dropping stale records."""
        restored = {}
        started = time.perf_counter()
        for tier in self.resident:
            try:
                records = await self.objects.load_snapshot(self.name(tier))
                current = await self._still_current(records)
            except TierError as exc:
                logger.warning("no warm start for %s: %s", tier.name, exc)
                continue
            restored[tier.name] = await tier.restore(current)
        logger.info(
            "warmed from snapshot in %.0f ms: %s",
            (time.perf_counter() - started) * 1000.0,
            restored,
        )
        return restored

    async def _still_current(self, records: list[Record]) -> list[Record]:
        current: list[Record] = []
        for start in range(0, len(records), CHECK_BATCH):
            batch = records[start : start + CHECK_BATCH]
            held = await self.store.get_many([r.ref for r in batch])
            current.extend(
                r
                for r in batch
                if (live := held.get(r.ref)) is not None
                and not live.deleted
                and live.version == r.version
            )
        return current
