"""The contract every kernel backend fulfils, on the GPU or on the CPU.

Semantics shared by all backends:

- Hash index: a power-of-two table of uint64 key hashes (EMPTY = 0,
  TOMBSTONE = 1, live hashes >= 2) and an int32 row per slot; linear probing
  from `hash & (slots - 1)`. `probe` returns -1 for an absent hash.
- Rows: a (capacity, dim) array in `storage_dtype`; `gather` always returns
  float32 on the host, optionally L2-normalised (a zero row stays zero).
- CLOCK eviction over `ref` bits: a first lap takes rows whose bit is clear,
  clearing the bits it passes; a second lap takes the rest in the same order.
- Search: inner product of float32 queries with the eligible rows; top-k per
  query, higher score first, ties to the lower row index; k is cut to the
  number of eligible rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

EMPTY = np.uint64(0)
TOMBSTONE = np.uint64(1)

IntArray = npt.NDArray[np.int32]


@dataclass(slots=True)
class Index:
    """Hash index arrays, on whichever device the backend owns."""

    hashes: Any
    rows: Any

    @property
    def slots(self) -> int:
        return int(self.hashes.size)


class Kernels(Protocol):
    """What a resident tier needs from an array backend."""

    name: str
    storage_dtype: np.dtype[Any]
    on_gpu: bool

    def zeros(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> Any: ...

    def to_host(self, array: Any) -> np.ndarray: ...

    def from_host(self, array: np.ndarray) -> Any: ...

    def new_index(self, slots: int) -> Index: ...

    def probe(self, index: Index, hashes: np.ndarray) -> IntArray: ...

    def insert(self, index: Index, hashes: np.ndarray, rows: np.ndarray) -> None: ...

    def erase(self, index: Index, hashes: np.ndarray) -> IntArray: ...

    def scatter(self, vectors: Any, rows: np.ndarray, values: np.ndarray) -> None: ...

    def gather(
        self, vectors: Any, rows: np.ndarray, normalize: bool
    ) -> npt.NDArray[np.float32]: ...

    def clock_evict(
        self, ref: Any, evictable: Any, hand: int, count: int
    ) -> tuple[IntArray, int]: ...

    def search(
        self, vectors: Any, eligible: Any, queries: np.ndarray, k: int
    ) -> tuple[npt.NDArray[np.float32], IntArray]: ...
