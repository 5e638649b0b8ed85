"""Dynamic micro-batching: concurrent requests share one forward pass.

The first waiting request opens a batch and takes every request already
queued. If the last batch served a single request, nobody else is around and
the batch runs at once; otherwise it also waits for more, until it holds
max_batch texts or max_wait_ms has passed. So a lone request pays no wait,
and a busy service fills its batches. Texts are sorted by length inside a
batch so padding stays small.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import numpy as np

from app.inference.encoder import Encoded, Encoder

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    texts: list[str]
    done: asyncio.Future[Encoded] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class MicroBatcher:
    """Queues encode requests and runs them in batches on one worker thread."""

    def __init__(self, encoder: Encoder, max_batch: int, max_wait_ms: float) -> None:
        self.encoder = encoder
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0
        self._last_jobs = 0

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    async def encode(self, texts: list[str]) -> Encoded:
        """Vectors for texts, batched with whatever else is waiting."""
        if not texts:
            return Encoded(
                np.zeros((0, self.encoder.dim), np.float32), np.zeros(0, np.int64)
            )
        job = _Job(list(texts))
        await self._queue.put(job)
        return await job.done

    async def _run(self) -> None:
        while True:
            jobs = await self._collect()
            try:
                await self._serve(jobs)
            except Exception as exc:  # a failed batch fails its callers, not the worker
                logger.exception("encoding a batch of %d jobs failed", len(jobs))
                for job in jobs:
                    if not job.done.done():
                        job.done.set_exception(exc)

    async def _collect(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        size = len(jobs[0].texts)
        while size < self.max_batch and not self._queue.empty():
            jobs.append(self._queue.get_nowait())
            size += len(jobs[-1].texts)
        if self._last_jobs > 1 or len(jobs) > 1:
            await self._wait_for_more(jobs, size)
        self._last_jobs = len(jobs)
        return jobs

    async def _wait_for_more(self, jobs: list[_Job], size: int) -> None:
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while size < self.max_batch:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                return
            try:
                job = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                return
            jobs.append(job)
            size += len(job.texts)

    async def _serve(self, jobs: list[_Job]) -> None:
        texts = [text for job in jobs for text in job.texts]
        order = np.array(sorted(range(len(texts)), key=lambda i: len(texts[i])))
        vectors = np.empty((len(texts), self.encoder.dim), np.float32)
        tokens = np.zeros(len(texts), np.int64)
        for start in range(0, len(order), self.max_batch):
            chunk = order[start : start + self.max_batch]
            batch = [texts[i] for i in chunk]
            encoded = await asyncio.to_thread(self.encoder.encode, batch)
            vectors[chunk] = encoded.vectors
            tokens[chunk] = encoded.tokens
        self.batches += 1
        offset = 0
        for job in jobs:
            end = offset + len(job.texts)
            if not job.done.done():
                job.done.set_result(Encoded(vectors[offset:end], tokens[offset:end]))
            offset = end
