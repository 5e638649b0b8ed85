"""The export of committed records from the system of record to the lower tiers.

Every authoritative commit appends outbox rows in its own transaction, so an
acknowledged write always has one. The exporter claims a batch of rows (SKIP
LOCKED, so replicas share the work), reads the records' current state, and
hands it to every sink (T4, T5). Only when every sink has taken the batch are
the rows deleted; a failing sink leaves them in place and the batch is retried
with exponential backoff. Sinks keep the higher version of a key, so a retried
batch writes each key once, however often it is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from memory_tiers.base import Record, Tier, TierError
from memory_tiers.pgvector_store import PgvectorTier
from memory_tiers.retry import Backoff

logger = logging.getLogger(__name__)

CLAIM = """
SELECT id, namespace, key, version FROM tiermem_outbox
ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
"""


class OutboxExporter:
    """Drains the outbox into the sink tiers; nothing is dropped on failure."""

    def __init__(
        self,
        store: PgvectorTier,
        sinks: Sequence[Tier],
        batch: int = 256,
        idle_s: float = 0.2,
        backoff: Backoff | None = None,
    ) -> None:
        self.store = store
        self.sinks = list(sinks)
        self.batch = batch
        self.idle_s = idle_s
        self.backoff = backoff or Backoff()
        self.exported = 0
        self.failures = 0
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-exporter")

    def poke(self) -> None:
        """Export soon: a commit just added rows."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def pending(self) -> int:
        async with self.store.pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM tiermem_outbox"))

    async def export_once(self) -> int:
        """Export one batch; returns how many rows it cleared.

        Raises TierError if a sink or the store fails; the rows then stay.
        """
        if not self.sinks:
            return 0
        try:
            async with self.store.pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(CLAIM, self.batch)
                if not rows:
                    return 0
                refs = list(dict.fromkeys((r["namespace"], r["key"]) for r in rows))
                # The current state, not the state at commit: a key written
                # twice since is exported once, at its newest version.
                current = await self.store.get_many(refs)
                await self._deliver(list(current.values()))
                await conn.execute(
                    "DELETE FROM tiermem_outbox WHERE id = ANY($1::bigint[])",
                    [r["id"] for r in rows],
                )
        except TierError:
            raise
        except Exception as exc:  # the store's own driver errors
            raise TierError("pgvector", f"outbox: {exc}") from exc
        self.exported += len(rows)
        return len(rows)

    async def _deliver(self, records: list[Record]) -> None:
        for sink in self.sinks:
            await sink.put_many(records)

    async def drain(self) -> None:
        """Export until the outbox is empty (tests, shutdown)."""
        while await self.export_once():
            pass

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                moved = await self.export_once()
                attempt = 0
            except TierError as exc:
                self.failures += 1
                self.last_error = str(exc)
                delay = self.backoff.delay_s(attempt)
                attempt += 1
                logger.warning("export failed (retry in %.2f s): %s", delay, exc)
                await asyncio.sleep(delay)
                continue
            if moved < self.batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.idle_s)
                self._wake.clear()
