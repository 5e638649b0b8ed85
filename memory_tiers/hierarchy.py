"""The tier hierarchy: reads walk the tiers fastest first, writes go to the store.

Reads ask each tier once, only for the refs still missing, and promote hits
into the faster cache tiers (each applies its own admission rule). Writes of
authoritative records are acknowledged only after the system of record
commits; cache tiers are updated afterwards and may fail without losing data.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from memory_tiers.base import Record, RecordKey, Tier, TierError, TierStats
from memory_tiers.pgvector_store import PgvectorTier

logger = logging.getLogger(__name__)

T = TypeVar("T")
LATENCY_SAMPLES = 1024


@dataclass
class Deadline:
    """The time budget of one request, in milliseconds from its start."""

    budget_ms: float
    started: float = field(default_factory=time.perf_counter)

    def remaining_ms(self) -> float:
        return self.budget_ms - (time.perf_counter() - self.started) * 1000.0


@dataclass
class Trace:
    """Which tier served how many items, and what each tier cost, for one request."""

    served: Counter[str] = field(default_factory=Counter)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def count(self, tiers: Iterable[str]) -> None:
        """Count the items of a response by the tier that served each."""
        self.served.update(tiers)

    def add_time(self, tier: str, ms: float) -> None:
        self.timings_ms[tier] = self.timings_ms.get(tier, 0.0) + ms

    def served_header(self) -> str:
        return ",".join(f"{name}={n}" for name, n in self.served.items())

    def timings_header(self) -> str:
        return ",".join(f"{name}={ms:.3f}" for name, ms in self.timings_ms.items())


class TierHealth:
    """Counters and a latency window kept by the hierarchy for one tier."""

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.healthy = True
        self.last_error: str | None = None
        self.latency_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)

    def percentile(self, q: float) -> float | None:
        if not self.latency_ms:
            return None
        return float(np.percentile(np.fromiter(self.latency_ms, float), q))


@dataclass
class ReadResult:
    """Records found (tombstones removed) and the tier that served each."""

    records: dict[RecordKey, Record]
    tiers: dict[RecordKey, str]


class TierHierarchy:
    """Tiers fastest first; exactly one of them is the system of record."""

    def __init__(self, tiers: Sequence[Tier], store: PgvectorTier) -> None:
        self.tiers = list(tiers)
        self.store = store
        self.store_index = self.tiers.index(store)
        self.health = {tier.name: TierHealth() for tier in self.tiers}

    @property
    def caches(self) -> list[Tier]:
        """The tiers above the system of record."""
        return self.tiers[: self.store_index]

    def tier(self, name: str) -> Tier | None:
        return next((t for t in self.tiers if t.name == name), None)

    # -- reads --------------------------------------------------------------

    async def get_many(
        self, refs: Sequence[RecordKey], trace: Trace, deadline: Deadline | None = None
    ) -> ReadResult:
        """Walk the tiers for refs; promote hits; tombstones read as misses.

        Raises TierError only if the system of record fails.
        """
        missing = list(dict.fromkeys(refs))
        found: dict[RecordKey, Record] = {}
        origin: dict[RecordKey, int] = {}
        for position, tier in enumerate(self.tiers):
            if not missing:
                break
            if self._skip(tier, position, deadline):
                continue
            hits = await self._ask(tier, trace, tier.get_many(missing), default={})
            self._count(tier, len(hits), len(missing) - len(hits))
            found.update(hits)
            origin.update({ref: position for ref in hits})
            missing = [ref for ref in missing if ref not in hits]
        await self._promote(found, origin, trace)
        live = {ref: rec for ref, rec in found.items() if not rec.deleted}
        return ReadResult(live, {ref: self.tiers[origin[ref]].name for ref in live})

    def _skip(self, tier: Tier, position: int, deadline: Deadline | None) -> bool:
        # The store is never skipped: it decides whether a key exists at all.
        if deadline is None or position == self.store_index:
            return False
        p99 = self.health[tier.name].percentile(99)
        if p99 is not None and p99 > deadline.remaining_ms():
            logger.debug("skipping %s: p99 %.1f ms over the budget", tier.name, p99)
            return True
        return False

    async def _promote(
        self, found: dict[RecordKey, Record], origin: dict[RecordKey, int], trace: Trace
    ) -> None:
        for position, tier in enumerate(self.caches):
            batch = [
                rec
                for ref, rec in found.items()
                if origin[ref] > position and not rec.deleted
            ]
            if batch:
                await self._ask(tier, trace, tier.put_many(batch), default=None)

    # -- writes -------------------------------------------------------------

    async def write(self, records: Sequence[Record], trace: Trace) -> list[Record]:
        """Commit authoritative records, then refresh the caches.

        Returns the committed records with their versions. Raises TierError if
        the commit fails (nothing is acknowledged then).
        """
        committed = await self._ask(self.store, trace, self.store.commit(records), None)
        assert committed is not None
        await self._refresh_caches(committed, trace)
        return committed

    async def write_cached(self, records: Sequence[Record], trace: Trace) -> None:
        """Put recomputable records into the cache tiers only."""
        await self._refresh_caches(records, trace)

    async def delete(self, refs: Sequence[RecordKey], trace: Trace) -> list[Record]:
        """Commit tombstones, then drop the refs from every cache tier."""
        tombstones = [
            Record(ns, key, np.zeros(0, np.float32), version=0, deleted=True)
            for ns, key in refs
        ]
        return await self.write(tombstones, trace)

    async def _refresh_caches(self, records: Sequence[Record], trace: Trace) -> None:
        for tier in self.caches:
            await self._ask(tier, trace, tier.put_many(records), default=None)

    # -- bookkeeping --------------------------------------------------------

    async def _ask(self, tier: Tier, trace: Trace, call: Awaitable[T], default: T) -> T:
        """Run one tier call, timing it; a cache tier's failure yields default."""
        health = self.health[tier.name]
        started = time.perf_counter()
        try:
            result = await call
        except TierError as exc:
            health.errors += 1
            health.healthy = False
            health.last_error = str(exc)
            if tier.authoritative:
                raise
            logger.warning("tier %s failed, serving around it: %s", tier.name, exc)
            return default
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            health.latency_ms.append(elapsed_ms)
            trace.add_time(tier.name, elapsed_ms)
        health.healthy = True
        return result

    def _count(self, tier: Tier, hits: int, misses: int) -> None:
        health = self.health[tier.name]
        health.hits += hits
        health.misses += misses

    async def stats(self) -> list[dict[str, object]]:
        """Per tier: what it says of itself plus the hierarchy's counters."""
        out = []
        for tier in self.tiers:
            health = self.health[tier.name]
            try:
                stats = await asyncio.wait_for(tier.stats(), timeout=2.0)
            except (TierError, TimeoutError) as exc:
                stats = TierStats(
                    name=tier.name, healthy=False, detail={"error": str(exc)}
                )
            out.append(
                {
                    "name": tier.name,
                    "enabled": stats.enabled,
                    "healthy": stats.healthy and health.healthy,
                    "authoritative": tier.authoritative,
                    "capacity_bytes": stats.capacity_bytes,
                    "used_bytes": stats.used_bytes,
                    "items": stats.items,
                    "hits": health.hits,
                    "misses": health.misses,
                    "errors": health.errors,
                    "p50_ms": health.percentile(50),
                    "p99_ms": health.percentile(99),
                    "detail": stats.detail,
                }
            )
        return out

    async def close(self) -> None:
        for tier in self.tiers:
            try:
                await tier.close()
            except TierError as exc:
                logger.warning("closing %s failed: %s", tier.name, exc)
