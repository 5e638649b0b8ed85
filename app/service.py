"""What the routes ask for, in the hierarchy's terms: embed, look up, write, search.

The service owns the pieces built at start (encoder, batcher, tiers,
hierarchy) and turns API operations into record reads and writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.inference.batcher import MicroBatcher
from app.inference.encoder import Encoder
from memory_tiers.base import DERIVED_PREFIX, Record, RecordKey
from memory_tiers.hierarchy import Deadline, ReadResult, TierHierarchy, Trace
from memory_tiers.outbox import OutboxExporter
from memory_tiers.resident import ResidentTier
from memory_tiers.write_behind import WriteBehind

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Embedded:
    """Vectors for a list of texts, the tokens they took, and who served each."""

    vectors: np.ndarray
    tokens: int
    tiers: list[str]


@dataclass(slots=True)
class SearchResult:
    hits: list[tuple[float, Record]]
    exact: bool
    tier: str


class TiermemService:
    """The operations behind the HTTP routes and the MCP tools."""

    def __init__(
        self,
        encoder: Encoder,
        batcher: MicroBatcher,
        hierarchy: TierHierarchy,
        resident: Sequence[ResidentTier],
        write_behind: WriteBehind,
        resident_max_rows: int,
    ) -> None:
        self.encoder = encoder
        self.batcher = batcher
        self.hierarchy = hierarchy
        self.resident = list(resident)
        self.write_behind = write_behind
        self.resident_max_rows = resident_max_rows
        self.embedding_namespace = DERIVED_PREFIX + encoder.identity.fingerprint
        # Writes per namespace, so a namespace load that raced a write is dropped.
        self._writes: dict[str, int] = {}
        self._loading: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self.exporter: OutboxExporter | None = None

    # -- embeddings ---------------------------------------------------------

    async def embed(
        self, texts: Sequence[str], trace: Trace, deadline: Deadline
    ) -> Embedded:
        """Vectors for texts: from the embedding cache, else from the model."""
        refs = [(self.embedding_namespace, _text_key(text)) for text in texts]
        cached = await self.hierarchy.get_many(refs, trace, deadline)
        todo = {
            ref: text
            for text, ref in zip(texts, refs, strict=True)
            if ref not in cached.records
        }
        fresh = await self._encode(todo, trace)
        by_ref = dict(cached.records)
        by_ref.update({r.ref: r for r in fresh})
        tiers = [cached.tiers.get(ref, "model") for ref in refs]
        trace.count(tiers)
        vectors = (
            np.stack([by_ref[ref].vector for ref in refs])
            if refs
            else np.zeros((0, self.encoder.dim), np.float32)
        )
        tokens = sum(int((by_ref[ref].metadata or {}).get("tokens", 0)) for ref in refs)
        return Embedded(vectors, tokens, tiers)

    async def _encode(self, texts: dict[RecordKey, str], trace: Trace) -> list[Record]:
        """Compute, cache and return the embeddings of texts (one per ref)."""
        if not texts:
            return []
        started = time.perf_counter()
        encoded = await self.batcher.encode(list(texts.values()))
        trace.add_time("model", (time.perf_counter() - started) * 1000.0)
        version = time.time_ns() // 1000
        records = [
            Record(
                namespace=namespace,
                key=key,
                vector=encoded.vectors[i],
                version=version,
                metadata={"tokens": int(encoded.tokens[i])},
            )
            for i, (namespace, key) in enumerate(texts)
        ]
        await self.hierarchy.write_cached(records, trace)
        self.write_behind.add(records)
        return records

    # -- vectors ------------------------------------------------------------

    async def lookup(
        self, namespace: str, keys: Sequence[str], trace: Trace, deadline: Deadline
    ) -> ReadResult:
        refs = [(namespace, key) for key in keys]
        result = await self.hierarchy.get_many(refs, trace, deadline)
        trace.count(result.tiers.values())
        return result

    async def put_vectors(
        self,
        namespace: str,
        items: Sequence[tuple[str, np.ndarray, dict[str, Any] | None]],
        trace: Trace,
    ) -> list[Record]:
        records = [
            Record(namespace, key, vector, version=0, metadata=metadata)
            for key, vector, metadata in items
        ]
        return await self._write(namespace, records, trace)

    async def delete(self, namespace: str, key: str, trace: Trace) -> bool:
        """Delete a record; False if it did not exist."""
        existing = await self.hierarchy.store.get_many([(namespace, key)])
        record = existing.get((namespace, key))
        if record is None or record.deleted:
            return False
        self._note_write(namespace)
        await self.hierarchy.delete([(namespace, key)], trace)
        return True

    async def _write(
        self, namespace: str, records: list[Record], trace: Trace
    ) -> list[Record]:
        self._note_write(namespace)
        return await self.hierarchy.write(records, trace)

    def _note_write(self, namespace: str) -> None:
        self._writes[namespace] = self._writes.get(namespace, 0) + 1

    # -- memories -----------------------------------------------------------

    async def add_memory(
        self,
        namespace: str,
        text: str,
        metadata: dict[str, Any] | None,
        trace: Trace,
        deadline: Deadline,
    ) -> Record:
        embedded = await self.embed([text], trace, deadline)
        record = Record(
            namespace,
            uuid.uuid4().hex,
            embedded.vectors[0],
            0,
            text=text,
            metadata=metadata,
        )
        committed = await self._write(namespace, [record], trace)
        return committed[0]

    async def get_record(
        self, namespace: str, key: str, trace: Trace, deadline: Deadline
    ) -> tuple[Record, str] | None:
        result = await self.hierarchy.get_many([(namespace, key)], trace, deadline)
        record = result.records.get((namespace, key))
        if record is None:
            return None
        trace.count([result.tiers[(namespace, key)]])
        return record, result.tiers[(namespace, key)]

    async def search(
        self,
        namespace: str,
        query: np.ndarray,
        k: int,
        metadata_filter: dict[str, Any] | None,
        trace: Trace,
    ) -> SearchResult:
        """Exact search where the namespace is resident, else the HNSW index."""
        keep = _metadata_matcher(metadata_filter)
        for tier in self.resident:
            started = time.perf_counter()
            found = await tier.search(namespace, query[None, :], k, keep)
            if found is not None:
                trace.add_time(tier.name, (time.perf_counter() - started) * 1000.0)
                trace.count([tier.name] * len(found[0]))
                return SearchResult(found[0], exact=True, tier=tier.name)
        started = time.perf_counter()
        hits = await self.hierarchy.store.search(namespace, query, k, metadata_filter)
        trace.add_time(
            self.hierarchy.store.name, (time.perf_counter() - started) * 1000.0
        )
        trace.count([self.hierarchy.store.name] * len(hits))
        self._load_later(namespace)
        return SearchResult(
            [(h.score, h.record) for h in hits], exact=False, tier="pgvector"
        )

    # -- residency ----------------------------------------------------------

    def _load_later(self, namespace: str) -> None:
        if namespace in self._loading or not self.resident:
            return
        self._loading.add(namespace)
        task = asyncio.create_task(self._load(namespace), name=f"load {namespace}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _load(self, namespace: str) -> None:
        """Make a namespace resident, so that its next searches are exact.

        A load that raced a write (here, or announced by another replica) is
        dropped: it may hold a record the write replaced or deleted.
        """
        try:
            before = self._changes(namespace)
            records = await self.hierarchy.store.load_namespace(
                namespace, self.resident_max_rows
            )
            if records is None or self._changes(namespace) != before:
                return
            # The fastest tier that can hold it whole; host memory is the fallback.
            for tier in self.resident:
                if await tier.hold_namespace(namespace, records):
                    return
        except Exception:
            logger.exception("loading namespace %s into memory failed", namespace)
        finally:
            self._loading.discard(namespace)

    def _changes(self, namespace: str) -> tuple[int, ...]:
        local = self._writes.get(namespace, 0)
        return (local, *(tier.releases(namespace) for tier in self.resident))

    async def settle(self) -> None:
        """Wait for background loads and fills (tests and shutdown)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        await self.hierarchy.settle()

    async def outbox_pending(self) -> int | None:
        """Committed records not yet exported to the lower tiers (None: no export)."""
        if self.exporter is None:
            return None
        return await self.exporter.pending()

    async def ready(self) -> bool:
        return await self.hierarchy.store.ping()


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _metadata_matcher(wanted: dict[str, Any] | None) -> Any:
    """A predicate true when a record's metadata contains every wanted pair."""
    if not wanted:
        return None

    def keep(record: Record) -> bool:
        held = record.metadata or {}
        return all(held.get(name) == value for name, value in wanted.items())

    return keep
