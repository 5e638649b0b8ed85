"""NumPy kernels: the CPU fallback and the reference every GPU kernel must match.

The hash index is open addressing with linear probing over a power-of-two
table of 64-bit key hashes (0 = empty, 1 = deleted) and an int32 row per slot.
Rows are searched in float32: NumPy has no fast float16 path.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from kernels.api import EMPTY, TOMBSTONE, Index, IntArray

F32 = npt.NDArray[np.float32]


class NumpyKernels:
    """Array kernels on host memory; semantics documented in kernels.api."""

    name = "numpy"
    storage_dtype = np.dtype(np.float32)
    on_gpu = False

    # -- memory -------------------------------------------------------------

    def zeros(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array)

    def from_host(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array)

    def new_index(self, slots: int) -> Index:
        if slots & (slots - 1):
            raise ValueError(f"index slots must be a power of two, got {slots}")
        return Index(np.zeros(slots, np.uint64), np.full(slots, -1, np.int32))

    # -- hash index ---------------------------------------------------------

    def _find(self, index: Index, hashes: np.ndarray) -> npt.NDArray[np.int64]:
        """Slot position of each hash, -1 where absent."""
        hashes = np.asarray(hashes, np.uint64)
        mask = np.uint64(index.hashes.size - 1)
        pos = (hashes & mask).astype(np.int64)
        found = np.full(hashes.size, -1, np.int64)
        active = np.arange(hashes.size)
        for _ in range(index.hashes.size):
            if active.size == 0:
                break
            seen = index.hashes[pos[active]]
            hit = seen == hashes[active]
            found[active[hit]] = pos[active[hit]]
            active = active[~(hit | (seen == EMPTY))]
            pos[active] = (pos[active] + 1) & int(mask)
        return found

    def probe(self, index: Index, hashes: np.ndarray) -> IntArray:
        slots = self._find(index, hashes)
        rows = np.full(slots.size, -1, np.int32)
        present = slots >= 0
        rows[present] = index.rows[slots[present]]
        return rows

    def insert(self, index: Index, hashes: np.ndarray, rows: np.ndarray) -> None:
        mask = index.hashes.size - 1
        for h, row in zip(np.asarray(hashes, np.uint64), np.asarray(rows), strict=True):
            pos = int(h) & mask
            while index.hashes[pos] > TOMBSTONE:
                pos = (pos + 1) & mask
            index.hashes[pos] = h
            index.rows[pos] = row

    def erase(self, index: Index, hashes: np.ndarray) -> IntArray:
        slots = self._find(index, hashes)
        rows = np.full(slots.size, -1, np.int32)
        present = slots >= 0
        rows[present] = index.rows[slots[present]]
        index.hashes[slots[present]] = TOMBSTONE
        index.rows[slots[present]] = -1
        return rows

    # -- rows ---------------------------------------------------------------

    def scatter(self, vectors: np.ndarray, rows: np.ndarray, values: F32) -> None:
        vectors[np.asarray(rows, np.int64)] = values.astype(vectors.dtype, copy=False)

    def gather(self, vectors: np.ndarray, rows: np.ndarray, normalize: bool) -> F32:
        # Fancy indexing already copies; a second copy only for float16 storage.
        out = vectors[np.asarray(rows, np.int64)].astype(np.float32, copy=False)
        if normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.where(norms > 0, norms, 1.0)
        return out

    def clock_evict(
        self, ref: np.ndarray, evictable: np.ndarray, hand: int, count: int
    ) -> tuple[IntArray, int]:
        """Pick up to `count` victims with CLOCK, clearing the bits it passes."""
        capacity = ref.size
        if count <= 0 or capacity == 0:
            return np.zeros(0, np.int32), hand
        order = (hand + np.arange(capacity)) % capacity
        can = evictable[order].astype(bool)
        bit = ref[order] != 0
        # First lap takes rows whose bit is clear; a second lap takes the rows
        # whose bit the first lap cleared, in the same order.
        lap_pos = np.concatenate(
            [np.flatnonzero(can & ~bit), capacity + np.flatnonzero(can & bit)]
        )
        taken = lap_pos[:count]
        if taken.size == 0:
            return np.zeros(0, np.int32), hand
        last = int(taken[-1])
        passed = order[: min(last + 1, capacity)]
        ref[passed[evictable[passed].astype(bool)]] = 0
        victims = order[taken % capacity].astype(np.int32)
        return victims, int((order[last % capacity] + 1) % capacity)

    # -- search -------------------------------------------------------------

    def search(
        self,
        vectors: np.ndarray,
        eligible: np.ndarray,
        queries: F32,
        k: int,
    ) -> tuple[F32, IntArray]:
        """Top-k inner products of each query over the eligible rows."""
        rows = np.flatnonzero(np.asarray(eligible, bool))
        n_q = queries.shape[0]
        k = min(k, rows.size)
        if k == 0 or n_q == 0:
            return np.zeros((n_q, k), np.float32), np.zeros((n_q, k), np.int32)
        # Rows fill from the bottom, so scoring the prefix up to the last
        # eligible row skips the unused tail of the slab.
        end = int(rows[-1]) + 1
        scores = queries.astype(np.float32) @ vectors[:end].T
        scores[:, ~np.asarray(eligible[:end], bool)] = -np.inf
        return _topk_rows(scores, k)


def _topk_rows(scores: F32, k: int) -> tuple[F32, IntArray]:
    """Top-k per row, higher score first, ties to the lower row index."""
    n_q, n = scores.shape
    out_scores = np.empty((n_q, k), np.float32)
    out_rows = np.empty((n_q, k), np.int32)
    for q in range(n_q):
        row = scores[q]
        if k < n:
            kth = np.partition(row, n - k)[n - k]
            cand = np.flatnonzero(row >= kth)
        else:
            cand = np.arange(n)
        order = np.lexsort((cand, -row[cand]))[:k]
        out_rows[q] = cand[order]
        out_scores[q] = row[cand[order]]
    return out_scores, out_rows
