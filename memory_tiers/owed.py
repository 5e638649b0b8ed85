"""Writes a cache tier missed while it failed, and must not be contradicted.

If a commit could not reach a cache tier (it failed, or its breaker was
open), that tier may still hold the key's previous version once it answers
again. Until the missed writes are replayed into it, its hits for those refs
are not trusted: the read goes on to the system of record instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from memory_tiers.base import Record, RecordKey

logger = logging.getLogger(__name__)


class OwedWrites:
    """Per cache tier: the newest record each missed ref should hold."""

    def __init__(self, max_refs: int = 100_000) -> None:
        self.max_refs = max_refs
        self._owed: dict[str, dict[RecordKey, Record]] = {}
        self._lost_track: set[str] = set()

    def add(self, tier: str, records: Sequence[Record]) -> None:
        owed = self._owed.setdefault(tier, {})
        for record in records:
            held = owed.get(record.ref)
            if held is None or record.version >= held.version:
                owed[record.ref] = record
        if len(owed) > self.max_refs and tier not in self._lost_track:
            # TODO: past this many missed writes the tier's hits are ignored
            # for the life of the process; flushing the tier would recover it.
            logger.error(
                "%s missed over %d writes: its hits are ignored", tier, self.max_refs
            )
            self._lost_track.add(tier)

    def pending(self, tier: str) -> list[Record]:
        return list(self._owed.get(tier, {}).values())

    def settled(self, tier: str, records: Sequence[Record]) -> None:
        """The records were written to the tier: those refs are trusted again."""
        owed = self._owed.get(tier, {})
        for record in records:
            if owed.get(record.ref) is record:
                del owed[record.ref]

    def trusted(
        self, tier: str, hits: dict[RecordKey, Record]
    ) -> dict[RecordKey, Record]:
        """The hits that cannot be older than a write the tier missed."""
        if tier in self._lost_track:
            return {}
        owed = self._owed.get(tier)
        if not owed:
            return hits
        return {ref: rec for ref, rec in hits.items() if ref not in owed}
