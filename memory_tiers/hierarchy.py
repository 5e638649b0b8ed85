"""The tier hierarchy: reads walk the tiers fastest first, writes go to the store.

Reads ask each tier once, only for the refs still missing, and promote hits
into the faster cache tiers (each applies its own admission rule). Writes of
authoritative records are acknowledged only after the system of record
commits; cache tiers are updated afterwards and may fail without losing data.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from memory_tiers.base import Record, RecordKey, Tier, TierError, TierStats
from memory_tiers.owed import OwedWrites
from memory_tiers.pgvector_store import PgvectorTier

logger = logging.getLogger(__name__)

T = TypeVar("T")
LATENCY_SAMPLES = 1024
BREAKER_BASE_S = 0.5
BREAKER_MAX_S = 30.0


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
    """Counters, a latency window and a circuit breaker for one tier.

    After a failure the tier is left alone for a while (0.5 s, doubling with
    each failure in a row, at most 30 s); the first call after that is the
    probe that closes the breaker again. A dead cache then costs requests
    nothing, where asking it each time could cost a socket timeout each.
    """

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.skipped = 0
        self.healthy = True
        self.failures_in_row = 0
        self.open_until = 0.0
        # Reads and writes apart: a bulk write's latency says nothing about
        # whether a read fits a request's remaining budget.
        self.read_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.write_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)

    def is_open(self) -> bool:
        """True while the breaker keeps calls away from a failing tier."""
        return time.monotonic() < self.open_until

    def failed(self) -> None:
        self.errors += 1
        self.healthy = False
        self.failures_in_row += 1
        pause_s = min(BREAKER_MAX_S, BREAKER_BASE_S * 2 ** (self.failures_in_row - 1))
        self.open_until = time.monotonic() + pause_s

    def succeeded(self) -> None:
        self.healthy = True
        self.failures_in_row = 0
        self.open_until = 0.0

    def percentile(self, q: float, writes: bool = False) -> float | None:
        """The q-th percentile of recent read (or write) latencies, in ms."""
        samples = self.write_ms if writes else self.read_ms
        if not samples:
            return None
        return float(np.percentile(np.fromiter(samples, float), q))


@dataclass
class ReadResult:
    """Records found (tombstones removed), the tier that served each, and the
    refs still being fetched from a slow tier after the deadline."""

    records: dict[RecordKey, Record]
    tiers: dict[RecordKey, str]
    pending: list[RecordKey] = field(default_factory=list)


@dataclass
class _Walk:
    """The state of one walk down the tiers."""

    missing: list[RecordKey]
    found: dict[RecordKey, Record] = field(default_factory=dict)
    origin: dict[RecordKey, int] = field(default_factory=dict)
    pending: list[RecordKey] = field(default_factory=list)

    def take(self, position: int, hits: dict[RecordKey, Record]) -> None:
        self.found.update(hits)
        self.origin.update({ref: position for ref in hits})
        self.missing = [ref for ref in self.missing if ref not in hits]


class TierHierarchy:
    """Tiers fastest first; exactly one of them is the system of record."""

    def __init__(self, tiers: Sequence[Tier], store: PgvectorTier) -> None:
        self.tiers = list(tiers)
        self.store = store
        self.store_index = self.tiers.index(store)
        self.health = {tier.name: TierHealth() for tier in self.tiers}
        self._background: set[asyncio.Future[None]] = set()
        self.owed = OwedWrites()
        # Filters records before they enter a cache tier (replica coherence).
        self.freshness: Callable[[Sequence[Record]], list[Record]] = list
        # Called with every committed batch, after the caches are refreshed.
        self.commit_listeners: list[Callable[[list[Record]], Awaitable[None]]] = []

    @property
    def caches(self) -> list[Tier]:
        """The tiers above the system of record."""
        return self.tiers[: self.store_index]

    # -- reads --------------------------------------------------------------

    async def get_many(
        self, refs: Sequence[RecordKey], trace: Trace, deadline: Deadline | None = None
    ) -> ReadResult:
        """Walk the tiers for refs; promote hits; tombstones read as misses.

        Tiers below the system of record are waited for only within the
        deadline; keys still out there are reported as pending and filled into
        the faster tiers in the background. Raises TierError only if the
        system of record fails.
        """
        walk = _Walk(list(dict.fromkeys(refs)))
        for position, tier in enumerate(self.tiers):
            if not walk.missing:
                break
            if position > self.store_index and deadline is not None:
                if not await self._ask_in_time(walk, position, trace, deadline):
                    break
            elif not self._skip(tier, deadline):
                walk.take(position, await self._ask_tier(tier, walk.missing, trace))
        await self._promote(walk.found, walk.origin, trace)
        live = {ref: rec for ref, rec in walk.found.items() if not rec.deleted}
        tiers = {ref: self.tiers[walk.origin[ref]].name for ref in live}
        return ReadResult(live, tiers, walk.pending)

    async def _ask_tier(
        self, tier: Tier, refs: list[RecordKey], trace: Trace
    ) -> dict[RecordKey, Record]:
        await self._repay(tier, trace)
        hits = await self._ask(tier, trace, tier.get_many(refs), {}, read=True)
        hits = self.owed.trusted(tier.name, hits)
        self._count(tier, len(hits), len(refs) - len(hits))
        return hits

    async def _repay(self, tier: Tier, trace: Trace) -> None:
        """Replay the writes the tier missed, if it answers again."""
        owed = self.owed.pending(tier.name)
        if not owed:
            return
        if await self._ask(tier, trace, _stored(tier, owed), False):
            self.owed.settled(tier.name, owed)

    async def _ask_in_time(
        self, walk: _Walk, position: int, trace: Trace, deadline: Deadline
    ) -> bool:
        """Ask a slow tier within the budget; False if the walk went background."""
        tier = self.tiers[position]
        budget_s = deadline.remaining_ms() / 1000.0
        refs = list(walk.missing)
        call = asyncio.ensure_future(self._ask_tier(tier, refs, trace))
        if budget_s > 0 and not self._over_budget(tier, deadline):
            try:
                walk.take(
                    position, await asyncio.wait_for(asyncio.shield(call), budget_s)
                )
                return True
            except TimeoutError:
                pass
        logger.debug("%d keys pending on %s past the deadline", len(refs), tier.name)
        walk.pending = refs
        walk.missing = []
        self._spawn(self._finish_later(call, position, refs))
        return False

    async def _finish_later(
        self,
        call: Awaitable[dict[RecordKey, Record]],
        position: int,
        refs: list[RecordKey],
    ) -> None:
        """Complete a walk past its deadline, then promote what it found."""
        walk = _Walk(refs)
        trace = Trace()
        walk.take(position, await call)
        for lower in range(position + 1, len(self.tiers)):
            if not walk.missing:
                break
            walk.take(
                lower, await self._ask_tier(self.tiers[lower], walk.missing, trace)
            )
        await self._promote(walk.found, walk.origin, trace)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self) -> None:
        """Wait for background fills (tests and shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def _skip(self, tier: Tier, deadline: Deadline | None) -> bool:
        # The store is never skipped: it decides whether a key exists at all;
        # nor is an in-process tier, which costs less than the check.
        if deadline is None or tier is self.store or tier.local:
            return False
        if self._over_budget(tier, deadline):
            logger.debug("skipping %s: its p99 is over the budget", tier.name)
            return True
        return False

    def _over_budget(self, tier: Tier, deadline: Deadline) -> bool:
        """True if the tier's recent read p99 exceeds what the request has left."""
        p99 = self.health[tier.name].percentile(99)
        return p99 is not None and p99 > deadline.remaining_ms()

    async def _promote(
        self, found: dict[RecordKey, Record], origin: dict[RecordKey, int], trace: Trace
    ) -> None:
        for position, tier in enumerate(self.caches):
            batch = [
                rec
                for ref, rec in found.items()
                if origin[ref] > position and not rec.deleted
            ]
            batch = self.freshness(batch)
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
        for listener in self.commit_listeners:
            await listener(committed)
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
            if not await self._ask(tier, trace, _stored(tier, records), False):
                self.owed.add(tier.name, records)

    # -- bookkeeping --------------------------------------------------------

    async def _ask(
        self,
        tier: Tier,
        trace: Trace,
        call: Awaitable[T],
        default: T,
        read: bool = False,
    ) -> T:
        """Run one tier call, timing it; a cache tier's failure yields default.

        While a cache tier's breaker is open the call is not made at all.
        """
        health = self.health[tier.name]
        if not tier.authoritative and health.is_open():
            if inspect.iscoroutine(call):
                call.close()
            health.skipped += 1
            return default
        started = time.perf_counter()
        try:
            result = await call
        except TierError as exc:
            health.failed()
            if tier.authoritative:
                raise
            logger.warning("tier %s failed, serving around it: %s", tier.name, exc)
            return default
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            (health.read_ms if read else health.write_ms).append(elapsed_ms)
            trace.add_time(tier.name, elapsed_ms)
        health.succeeded()
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
                    "skipped_while_failing": health.skipped,
                    "p50_ms": health.percentile(50),
                    "p99_ms": health.percentile(99),
                    "write_p50_ms": health.percentile(50, writes=True),
                    "write_p99_ms": health.percentile(99, writes=True),
                    "detail": stats.detail,
                }
            )
        return out

    async def close(self) -> None:
        await self.settle()
        for tier in self.tiers:
            try:
                await tier.close()
            except TierError as exc:
                logger.warning("closing %s failed: %s", tier.name, exc)


async def _stored(tier: Tier, records: Sequence[Record]) -> bool:
    """put_many as a call that says it succeeded."""
    await tier.put_many(records)
    return True
