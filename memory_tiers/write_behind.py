"""Write-behind of recomputable records to the system of record, in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from memory_tiers.base import Record, Tier, TierError

logger = logging.getLogger(__name__)


class WriteBehind:
    """Buffers derived records and flushes them with one put_many per interval.

    The records are recomputable, so a full buffer drops its oldest entries
    (with a warning) rather than grow without bound while the store is down.
    """

    def __init__(
        self,
        store: Tier,
        interval_ms: float,
        max_batch: int = 512,
        max_buffer: int = 100_000,
    ) -> None:
        self.store = store
        self.interval_s = interval_ms / 1000.0
        self.max_batch = max_batch
        self.max_buffer = max_buffer
        self._buffer: list[Record] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.flushed = 0
        self.dropped = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="write-behind")

    def add(self, records: Sequence[Record]) -> None:
        self._buffer.extend(records)
        overflow = len(self._buffer) - self.max_buffer
        if overflow > 0:
            del self._buffer[:overflow]
            self.dropped += overflow
            logger.warning(
                "write-behind buffer full: dropped %d derived records", overflow
            )
        if len(self._buffer) >= self.max_batch:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def flush(self) -> None:
        """Write everything buffered now. Raises TierError if the store fails."""
        while self._buffer:
            batch = self._buffer[: self.max_batch]
            await self.store.put_many(batch)
            del self._buffer[: len(batch)]
            self.flushed += len(batch)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            try:
                await self.flush()
            except TierError as exc:
                logger.warning(
                    "write-behind to %s failed, will retry: %s", self.store.name, exc
                )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self.flush()
        except TierError as exc:
            logger.warning(
                "final write-behind flush failed, %d records lost: %s",
                self.pending,
                exc,
            )
