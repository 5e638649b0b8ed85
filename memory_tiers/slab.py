"""A fixed-capacity slab of vectors of one dimension, with a hash index.

The slab is the storage engine of both resident tiers (T0 on the GPU, T1 in
host memory). Its arrays are allocated once from a byte budget and never grow:

- vectors pool: (rows, dim) in the backend's storage dtype (float16 on a GPU,
  float32 on the CPU),
- index pool: open-addressing hash table, at least twice as many slots as rows,
- workspace pool: room for one batch of queries and their top-k results.

Per-row bookkeeping that the kernels never read (the record's key, text,
metadata, version) stays in host memory beside the arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from kernels import Kernels
from kernels.numpy_backend import NumpyKernels
from memory_tiers.base import Record, RecordKey, key_hash, newest_per_ref

logger = logging.getLogger(__name__)

INDEX_SLOT_BYTES = 12  # uint64 hash + int32 row
ROW_FLAG_BYTES = 2  # CLOCK bit + evictable flag
MAX_QUERIES = 256
MAX_K = 100
EMPTY_VECTOR = np.zeros(0, np.float32)
# The CLOCK bits live in host memory whatever the slab's backend.
_CLOCK = NumpyKernels()


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """How a byte budget is split between the three pools."""

    rows: int
    slots: int
    vector_bytes: int
    index_bytes: int
    workspace_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.vector_bytes + self.index_bytes + self.workspace_bytes


def plan_pools(dim: int, itemsize: int, budget_bytes: int) -> PoolPlan:
    """The largest slab whose three pools fit in budget_bytes (rows may be 0).

    The index is a power-of-two table with at least two slots per row, so try
    each table size and keep the one that buys the most rows.
    """
    # TODO: the workspace is reserved out of the budget but not handed to the
    # kernels: their per-call temporaries (queries, per-block candidates) come
    # from CuPy's allocator, so a search may briefly hold more device memory
    # than the reservation when its batch has many blocks.
    workspace = MAX_QUERIES * (dim * 4 + MAX_K * 8)
    row_bytes = dim * itemsize + ROW_FLAG_BYTES
    best = PoolPlan(0, 1, 0, INDEX_SLOT_BYTES, 0)
    slots = 2
    while slots * INDEX_SLOT_BYTES + workspace <= budget_bytes:
        room = budget_bytes - workspace - slots * INDEX_SLOT_BYTES
        rows = min(slots // 2, room // row_bytes)
        if rows > best.rows:
            best = PoolPlan(
                rows, slots, rows * row_bytes, slots * INDEX_SLOT_BYTES, workspace
            )
        slots *= 2
    return best


@dataclass(slots=True)
class UpsertResult:
    """What an upsert did: rows written, refs evicted to make room, refs declined."""

    written: int
    evicted: list[RecordKey]
    declined: list[RecordKey]


class VectorSlab:
    """Fixed-capacity vectors of one dim; CLOCK eviction; pinned rows stay."""

    def __init__(self, kernels: Kernels, dim: int, budget_bytes: int) -> None:
        self.kernels = kernels
        self.dim = dim
        self.plan = plan_pools(dim, kernels.storage_dtype.itemsize, budget_bytes)
        self.capacity = self.plan.rows
        self.vectors = kernels.zeros((self.capacity, dim), kernels.storage_dtype)
        self.index = kernels.new_index(self.plan.slots)
        # CLOCK state is small and touched per batch: it lives on the host.
        self.ref_bits = np.zeros(self.capacity, np.uint8)
        self.evictable = np.zeros(self.capacity, np.uint8)
        self.row_hash = np.zeros(self.capacity, np.uint64)
        self.row_ns = np.full(self.capacity, -1, np.int32)
        self.ns_ids: dict[str, int] = {}
        self.meta: list[Record | None] = [None] * self.capacity
        self.free = list(range(self.capacity - 1, -1, -1))
        self.hand = 0
        self.tombstones = 0
        self.evictions = 0

    @property
    def items(self) -> int:
        return self.capacity - len(self.free)

    @property
    def used_bytes(self) -> int:
        row_bytes = self.dim * self.kernels.storage_dtype.itemsize + ROW_FLAG_BYTES
        return self.items * row_bytes + self.plan.index_bytes

    # -- reads --------------------------------------------------------------

    def lookup(self, refs: Sequence[RecordKey]) -> dict[RecordKey, Record]:
        """Records held for refs; marks them recently used."""
        if not refs or self.capacity == 0:
            return {}
        hashes = np.array([key_hash(ref) for ref in refs], np.uint64)
        rows = self.kernels.probe(self.index, hashes)
        found = [
            (ref, int(row))
            for ref, row in zip(refs, rows, strict=True)
            if row >= 0 and self._holds(int(row), ref)
        ]
        if not found:
            return {}
        found_rows = np.array([row for _, row in found], np.int32)
        vectors = self.kernels.gather(self.vectors, found_rows, normalize=False)
        self.ref_bits[found_rows] = 1
        return {
            ref: replace(_held(self.meta[row]), vector=vectors[i])
            for i, (ref, row) in enumerate(found)
        }

    def all_records(self) -> list[Record]:
        """Every record held, vectors included, in row order."""
        rows = np.flatnonzero(self.row_ns >= 0).astype(np.int32)
        if rows.size == 0:
            return []
        vectors = self.kernels.gather(self.vectors, rows, normalize=False)
        return [
            replace(_held(self.meta[int(row)]), vector=vectors[i])
            for i, row in enumerate(rows)
        ]

    def _holds(self, row: int, ref: RecordKey) -> bool:
        # Two refs sharing a 64-bit hash must not read each other's vector.
        meta = self.meta[row]
        return meta is not None and meta.ref == ref

    def versions(self, refs: Sequence[RecordKey]) -> dict[RecordKey, int]:
        """Versions held for refs, without touching the vectors."""
        if not refs or self.capacity == 0:
            return {}
        hashes = np.array([key_hash(ref) for ref in refs], np.uint64)
        rows = self.kernels.probe(self.index, hashes)
        out = {}
        for ref, row in zip(refs, rows, strict=True):
            meta = self.meta[int(row)] if row >= 0 else None
            if meta is not None and meta.ref == ref:
                out[ref] = meta.version
        return out

    # -- writes -------------------------------------------------------------

    def upsert(self, records: Sequence[Record], pinned: bool = False) -> UpsertResult:
        """Write records, evicting unpinned rows with CLOCK when full.

        A record older than the held version is ignored, so a late promotion
        never overwrites a newer write. Refs that find no room are declined.
        """
        records = newest_per_ref(records)
        held = self.versions([r.ref for r in records])
        fresh = [r for r in records if r.ref not in held or held[r.ref] <= r.version]
        updates = [r for r in fresh if r.ref in held]
        inserts = [r for r in fresh if r.ref not in held]

        self._write_rows([self._row_of(r.ref) for r in updates], updates, pinned)
        rows, evicted = self._claim_rows(len(inserts))
        placed, declined = inserts[: len(rows)], inserts[len(rows) :]
        self._index_rows(placed, rows)
        self._write_rows(rows, placed, pinned)
        return UpsertResult(
            written=len(updates) + len(placed),
            evicted=evicted,
            declined=[r.ref for r in declined],
        )

    def remove(self, refs: Sequence[RecordKey]) -> int:
        """Drop refs; returns how many were held."""
        if not refs or self.capacity == 0:
            return 0
        hashes = np.array([key_hash(ref) for ref in refs], np.uint64)
        rows = self.kernels.probe(self.index, hashes)
        held = [
            (h, int(row))
            for h, ref, row in zip(hashes, refs, rows, strict=True)
            if row >= 0 and self._holds(int(row), ref)
        ]
        self._release([row for _, row in held])
        self.kernels.erase(self.index, np.array([h for h, _ in held], np.uint64))
        self.tombstones += len(held)
        self._maybe_rebuild_index()
        return len(held)

    def _row_of(self, ref: RecordKey) -> int:
        hashes = np.array([key_hash(ref)], np.uint64)
        return int(self.kernels.probe(self.index, hashes)[0])

    def _claim_rows(self, count: int) -> tuple[list[int], list[RecordKey]]:
        rows = [self.free.pop() for _ in range(min(count, len(self.free)))]
        if len(rows) == count:
            return rows, []
        victims, self.hand = _CLOCK.clock_evict(
            self.ref_bits, self.evictable, self.hand, count - len(rows)
        )
        victim_rows = [int(v) for v in victims]
        evicted = [meta.ref for v in victim_rows if (meta := self.meta[v]) is not None]
        self.kernels.erase(self.index, self.row_hash[victims])
        self.tombstones += len(victim_rows)
        self.evictions += len(victim_rows)
        for row in victim_rows:
            self.meta[row] = None
        self.evictable[victims] = 0
        self.row_ns[victims] = -1
        return rows + victim_rows, evicted

    def _index_rows(self, records: Sequence[Record], rows: Sequence[int]) -> None:
        if not rows:
            return
        self._maybe_rebuild_index(incoming=len(rows))
        hashes = np.array([key_hash(r.ref) for r in records], np.uint64)
        row_array = np.array(rows, np.int32)
        self.kernels.insert(self.index, hashes, row_array)
        self.row_hash[row_array] = hashes

    def _write_rows(
        self, rows: Sequence[int], records: Sequence[Record], pinned: bool
    ) -> None:
        if not rows:
            return
        row_array = np.array(rows, np.int32)
        values = np.stack([r.vector for r in records]).astype(np.float32, copy=False)
        self.kernels.scatter(self.vectors, row_array, values)
        for row, record in zip(rows, records, strict=True):
            self.meta[row] = replace(record, vector=EMPTY_VECTOR)
            self.row_ns[row] = self._ns_id(record.namespace)
        self.ref_bits[row_array] = 0
        self.evictable[row_array] = 0 if pinned else 1

    def _release(self, rows: Sequence[int]) -> None:
        for row in rows:
            self.meta[row] = None
            self.evictable[row] = 0
            self.ref_bits[row] = 0
            self.row_ns[row] = -1
            self.free.append(row)
        # Keep handing out the lowest rows first, so search scans a short prefix.
        self.free.sort(reverse=True)

    def _maybe_rebuild_index(self, incoming: int = 0) -> None:
        """Rebuild when deleted slots would make probe chains long."""
        if self.tombstones + self.items + incoming <= self.plan.slots * 3 // 4:
            return
        live = np.flatnonzero(self.row_ns >= 0).astype(np.int32)
        self.index = self.kernels.new_index(self.plan.slots)
        if live.size:
            self.kernels.insert(self.index, self.row_hash[live], live)
        self.tombstones = 0

    # -- search -------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, eligible: np.ndarray
    ) -> list[list[tuple[float, Record]]]:
        """Exact top-k inner products over eligible rows, per query."""
        if self.capacity == 0 or not eligible.any():
            return [[] for _ in range(queries.shape[0])]
        scores, rows = self.kernels.search(
            self.vectors, self.kernels.from_host(eligible.astype(np.uint8)), queries, k
        )
        out = []
        for q_scores, q_rows in zip(scores, rows, strict=True):
            hits = []
            for score, row in zip(q_scores, q_rows, strict=True):
                meta = self.meta[int(row)]
                if meta is not None:
                    hits.append((float(score), meta))
            out.append(hits)
        return out

    def rows_where(self, namespace: str) -> np.ndarray:
        """Boolean mask of the rows holding the namespace's records."""
        ns_id = self.ns_ids.get(namespace)
        if ns_id is None:
            return np.zeros(self.capacity, bool)
        return self.row_ns == ns_id

    def _ns_id(self, namespace: str) -> int:
        # TODO: ids of namespaces that left the slab are never reused; a service
        # that churns through millions of namespaces grows this dict unbounded.
        return self.ns_ids.setdefault(namespace, len(self.ns_ids))


def _held(record: Record | None) -> Record:
    if record is None:
        raise AssertionError("index points at an empty row")
    return record
