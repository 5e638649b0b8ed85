"""CuPy kernels: the T0 tier on a CUDA device, rows stored as float16.

The hot paths are the CUDA sources in kernels/cuda/, compiled by CuPy (NVRTC)
on first use. Results that the contract returns to the host are copied back
here; `search_device` and `gather_device` keep them on the device for callers
(and benchmarks) that stay there.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib import resources
from typing import Any

import cupy
import numpy as np
import numpy.typing as npt

from kernels.api import Index, IntArray
from kernels.numpy_backend import NumpyKernels, _topk_rows

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]

THREADS = 256  # every kernel runs 256-thread blocks
GATHER_ROWS_PER_BLOCK = 8  # one warp per row; matches rows.cu
TILE_ROWS = 64  # rows per block step in search.cu
MAX_FUSED_K = 128  # search.cu keeps k plus one tile in a 256-entry buffer
QUERY_GROUPS = (1, 2, 4, 8, 16)  # the fused_topk_q* entry points
MAX_QUERY_BYTES = 96 * 1024  # shared memory for one block's float32 queries
FALLBACK_BLOCKS_PER_SM = 4  # if the driver cannot say how many blocks fit
UNFUSED_CHUNK_ROWS = 65536  # rows scored per matmul on the fallback path


@cache
def gpu_unavailable_reason() -> str | None:
    """Why no CUDA device can be used, or None when one can. Never raises."""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            return "no CUDA device is visible"
        cupy.zeros(1, cupy.uint8).get()
    except Exception as exc:  # any driver or runtime failure means "no GPU"
        return f"CUDA is not usable ({type(exc).__name__}: {exc})"
    return None


def gpu_available() -> bool:
    """True when CuPy can allocate on a CUDA device."""
    reason = gpu_unavailable_reason()
    if reason is not None:
        logger.debug("GPU check failed: %s", reason)
    return reason is None


def _load_module(name: str) -> Any:
    source = resources.files("kernels").joinpath("cuda", name).read_text()
    return cupy.RawModule(code=source)


def _blocks(items: int, per_block: int) -> tuple[int]:
    return ((items + per_block - 1) // per_block,)


def _run(
    kernel: Any, grid: tuple[int, ...], args: tuple[Any, ...], shared_mem: int = 0
) -> None:
    """Launches a kernel in blocks of THREADS; scalars must be NumPy-typed."""
    kernel(grid, (THREADS,), args, shared_mem=shared_mem)


def _device(array: Any, dtype: npt.DTypeLike) -> Any:
    """A C-contiguous device copy (or view) of a host or device array."""
    return cupy.ascontiguousarray(cupy.asarray(array, dtype=dtype))


def _checked_rows(rows: Any, capacity: int) -> Any:
    """Rows as device int32, refusing any outside [0, capacity).

    A kernel writing past the slab would corrupt memory silently, so this
    check is not optional; NumPy, by contrast, would wrap negative rows.
    """
    host = np.asarray(cupy.asnumpy(rows), np.int64).ravel()
    if host.size and (host.min() < 0 or host.max() >= capacity):
        low, high = int(host.min()), int(host.max())
        raise IndexError(f"rows must lie in [0, {capacity}), got {low}..{high}")
    return cupy.asarray(host.astype(np.int32))


def _mask_bytes(eligible: Any) -> Any:
    """The eligibility mask as contiguous uint8 0/1 on the device."""
    mask = cupy.asarray(eligible)
    if mask.dtype not in (cupy.bool_, cupy.uint8):
        mask = mask != 0
    return cupy.ascontiguousarray(mask).view(cupy.uint8)


def _query_group(n_queries: int, dim: int) -> int:
    """Queries per block: enough to cover the batch, as shared memory allows."""
    group = next((g for g in QUERY_GROUPS if g >= n_queries), QUERY_GROUPS[-1])
    while group > 1 and group * dim * 4 > MAX_QUERY_BYTES:
        group //= 2
    return group


class CupyKernels:
    """Array kernels on GPU memory; semantics documented in kernels.api."""

    name = "cupy"
    storage_dtype = np.dtype(np.float16)
    on_gpu = True

    def __init__(self) -> None:
        self._index = _load_module("hash_index.cu")
        self._rows = _load_module("rows.cu")
        self._search = _load_module("search.cu")
        self._sm_count = int(cupy.cuda.Device().attributes["MultiProcessorCount"])
        self._functions: dict[str, Any] = {}
        self._smem_opt_in: dict[str, int] = {}
        self._resident: dict[tuple[int, int], int] = {}
        self._host = NumpyKernels()
        logger.info("CUDA kernels ready on a device with %d SMs", self._sm_count)

    # -- memory -------------------------------------------------------------

    def zeros(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> Any:
        return cupy.zeros(shape, dtype=dtype)

    def to_host(self, array: Any) -> np.ndarray:
        return np.asarray(cupy.asnumpy(array))

    def from_host(self, array: np.ndarray) -> Any:
        return cupy.asarray(array)

    def new_index(self, slots: int) -> Index:
        if slots < 1 or slots & (slots - 1):
            raise ValueError(f"index slots must be a power of two, got {slots}")
        return Index(cupy.zeros(slots, cupy.uint64), cupy.full(slots, -1, cupy.int32))

    # -- hash index ---------------------------------------------------------

    def _walk(self, kernel: str, index: Index, hashes: Any) -> IntArray:
        """Runs probe or erase: one thread per key, a row (or -1) back."""
        keys = _device(hashes, cupy.uint64).ravel()
        out = cupy.empty(keys.size, cupy.int32)
        if keys.size:
            mask = np.uint64(index.slots - 1)
            _run(
                self._function(self._index, kernel),
                _blocks(keys.size, THREADS),
                (index.hashes, index.rows, mask, keys, np.int32(keys.size), out),
            )
        return np.asarray(out.get(), np.int32)

    def probe(self, index: Index, hashes: np.ndarray) -> IntArray:
        return self._walk("index_probe", index, hashes)

    def insert(self, index: Index, hashes: np.ndarray, rows: np.ndarray) -> None:
        """Inserts unique, absent hashes; raises RuntimeError if the table is full."""
        keys = _device(hashes, cupy.uint64).ravel()
        values = _device(rows, cupy.int32).ravel()
        if keys.size != values.size:
            raise ValueError(f"{keys.size} hashes but {values.size} rows")
        if keys.size == 0:
            return
        failed = cupy.zeros(1, cupy.int32)
        mask = np.uint64(index.slots - 1)
        _run(
            self._function(self._index, "index_insert"),
            _blocks(keys.size, THREADS),
            (index.hashes, index.rows, mask, keys, values, np.int32(keys.size), failed),
        )
        lost = int(failed.get()[0])
        if lost:
            raise RuntimeError(
                f"hash index full: {lost} of {keys.size} keys found no free slot"
            )

    def erase(self, index: Index, hashes: np.ndarray) -> IntArray:
        return self._walk("index_erase", index, hashes)

    # -- rows ---------------------------------------------------------------

    def scatter(self, vectors: Any, rows: np.ndarray, values: np.ndarray) -> None:
        """Writes float32 values into unique rows, rounded to float16."""
        capacity, dim = vectors.shape
        targets = _checked_rows(rows, capacity)
        data = _device(values, cupy.float32).reshape(targets.size, dim)
        if targets.size == 0:
            return
        # A grid-stride loop covers the rest, so the grid need not grow with it.
        grid = (min(_blocks(data.size, THREADS)[0], 65535),)
        _run(
            self._function(self._rows, "scatter_rows"),
            grid,
            (vectors, np.int32(dim), targets, data, np.int64(data.size)),
        )

    def gather_device(self, vectors: Any, rows: Any, normalize: bool) -> Any:
        """Rows as a float32 device array, optionally L2-normalised."""
        capacity, dim = vectors.shape
        picks = _checked_rows(rows, capacity)
        out = cupy.empty((picks.size, dim), cupy.float32)
        if picks.size:
            flag = np.int32(bool(normalize))
            _run(
                self._function(self._rows, "gather_rows"),
                _blocks(picks.size, GATHER_ROWS_PER_BLOCK),
                (vectors, np.int32(dim), picks, np.int32(picks.size), flag, out),
            )
        return out

    def gather(self, vectors: Any, rows: np.ndarray, normalize: bool) -> F32:
        return np.asarray(self.gather_device(vectors, rows, normalize).get())

    def clock_evict(
        self, ref: Any, evictable: Any, hand: int, count: int
    ) -> tuple[IntArray, int]:
        """Pick up to `count` victims with CLOCK, clearing the bits it passes."""
        # Runs on the host: where the scan stops depends on every bit before
        # it, a poor fit for a kernel, and the arrays are one byte per row.
        # TODO: this copies ref and evictable down and ref back up (3 bytes a
        # row, ~30 MB at 10M rows) per call; a device version built on a
        # prefix sum would avoid the round trip.
        ref_host = np.array(cupy.asnumpy(ref))
        victims, hand = self._host.clock_evict(
            ref_host, cupy.asnumpy(evictable), hand, count
        )
        if victims.size:
            on_device = isinstance(ref, cupy.ndarray)
            ref[...] = cupy.asarray(ref_host) if on_device else ref_host
        return victims, hand

    # -- search -------------------------------------------------------------

    def search(
        self, vectors: Any, eligible: Any, queries: np.ndarray, k: int
    ) -> tuple[F32, IntArray]:
        """Top-k inner products of each query over the eligible rows."""
        batch = np.ascontiguousarray(queries, np.float32)
        mask = _mask_bytes(eligible)
        n_q = batch.shape[0]
        k = min(k, int(cupy.count_nonzero(mask)))
        if k == 0 or n_q == 0:
            return np.zeros((n_q, k), np.float32), np.zeros((n_q, k), np.int32)
        scores, rows = self.search_device(vectors, mask, cupy.asarray(batch), k)
        return np.asarray(scores.get()), np.asarray(rows.get())

    def search_device(
        self, vectors: Any, eligible: Any, queries: Any, k: int
    ) -> tuple[Any, Any]:
        """search() on device arrays; k must already be cut to 1..eligible rows."""
        if not vectors.flags.c_contiguous or vectors.dtype != cupy.float16:
            raise ValueError("vectors must be a C-contiguous float16 device array")
        dim = vectors.shape[1]
        queries = _device(queries, cupy.float32).reshape(-1, dim)
        if k > MAX_FUSED_K or dim % 8 or dim * 4 > MAX_QUERY_BYTES:
            # TODO: k > 128 or a width that is not a multiple of 8 takes a slow
            # path that copies the whole Q x N score matrix to the host.
            logger.warning("search k=%d dim=%d is off the fused path", k, dim)
            return self._search_unfused(vectors, eligible, queries, k)
        return self._search_fused(vectors, _mask_bytes(eligible), queries, k)

    def _search_fused(
        self, vectors: Any, mask: Any, queries: Any, k: int
    ) -> tuple[Any, Any]:
        # TODO: the dot products run on CUDA cores in float32; from Q ~ 32 up
        # that is compute-bound, where a tensor-core (mma.sync) path would be
        # several times faster and cuBLAS-based torch is likely to win today.
        n_q, dim = queries.shape
        n_rows = min(vectors.shape[0], mask.size)
        group = _query_group(n_q, dim)
        n_groups = -(-n_q // group)
        query_bytes = group * dim * 4
        kernel = self._fused_kernel(group, query_bytes)
        # One wave of resident blocks: each takes every n_blocks-th tile, so
        # all finish together and no half-empty second wave trails behind.
        wave = self._sm_count * self._resident_blocks(kernel, query_bytes)
        n_blocks = max(1, min(-(-n_rows // TILE_ROWS), wave // n_groups))
        parts = (
            cupy.empty((n_q, n_blocks, k), cupy.float32),
            cupy.empty((n_q, n_blocks, k), cupy.int32),
        )
        args = (
            vectors,
            mask,
            np.int32(n_rows),
            np.int32(dim),
            queries,
            np.int32(n_q),
            np.int32(k),
            *parts,
        )
        _run(kernel, (n_groups, n_blocks), args, shared_mem=query_bytes)
        return self._merge(*parts, k)

    def _fused_kernel(self, group: int, query_bytes: int) -> Any:
        """The entry point for a query group, allowed its shared memory."""
        name = f"fused_topk_q{group}"
        kernel = self._function(self._search, name)
        # Past 48 KiB (static + dynamic) a kernel must opt in; raising the
        # limit is one driver call, so only make it when the need grows.
        if query_bytes > self._smem_opt_in.get(name, 0):
            kernel.max_dynamic_shared_size_bytes = query_bytes
            self._smem_opt_in[name] = query_bytes
        return kernel

    def _resident_blocks(self, kernel: Any, shared_bytes: int) -> int:
        """Blocks of `kernel` that fit on one SM at once, per the driver."""
        key = (id(kernel), shared_bytes)
        if key not in self._resident:
            try:
                ptr = kernel.kernel.ptr
                fit = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
                    ptr, THREADS, shared_bytes
                )
            except Exception as exc:  # an API this CuPy lacks: guess instead
                logger.warning("occupancy query failed (%s); guessing", exc)
                fit = FALLBACK_BLOCKS_PER_SM
            self._resident[key] = max(1, int(fit))
        return self._resident[key]

    def _function(self, module: Any, name: str) -> Any:
        """A kernel handle, looked up once: attributes set on it then stick."""
        if name not in self._functions:
            self._functions[name] = module.get_function(name)
        return self._functions[name]

    def _merge(self, part_scores: Any, part_rows: Any, k: int) -> tuple[Any, Any]:
        n_q, n_blocks, _ = part_scores.shape
        scores = cupy.empty((n_q, k), cupy.float32)
        rows = cupy.empty((n_q, k), cupy.int32)
        per_query = np.int32(n_blocks * k)
        _run(
            self._function(self._search, "merge_topk"),
            (n_q,),
            (part_scores, part_rows, per_query, np.int32(k), scores, rows),
        )
        return scores, rows

    def _search_unfused(
        self, vectors: Any, eligible: Any, queries: Any, k: int
    ) -> tuple[Any, Any]:
        n_rows = min(vectors.shape[0], int(eligible.size))
        scores = cupy.empty((queries.shape[0], n_rows), cupy.float32)
        batch = cupy.asarray(queries, cupy.float32)
        for start in range(0, n_rows, UNFUSED_CHUNK_ROWS):
            chunk = vectors[start : start + UNFUSED_CHUNK_ROWS].astype(cupy.float32)
            scores[:, start : start + chunk.shape[0]] = batch @ chunk.T
        scores[:, ~cupy.asarray(eligible[:n_rows], bool)] = -np.inf
        top_scores, top_rows = _topk_rows(scores.get(), k)
        return cupy.asarray(top_scores), cupy.asarray(top_rows)


def memory_info() -> tuple[int, int]:
    """(free, total) bytes of the current CUDA device."""
    free, total = cupy.cuda.runtime.memGetInfo()
    return int(free), int(total)


def host_memory_is_coherent() -> bool:
    """True where the GPU reads host memory through the CPU's page tables at
    memory speed (GH200's NVLink-C2C), not over PCIe."""
    attributes = cupy.cuda.Device().attributes
    return bool(attributes.get("PageableMemoryAccessUsesHostPageTables", 0))


class PinnedHostKernels(CupyKernels):
    """The same kernels over arrays in pinned host memory.

    Pinned memory is mapped into the GPU's address space (unified addressing
    gives it one pointer on both sides), so the kernels read the rows where
    they lie: on a GH200 over NVLink-C2C, with no copy into device memory
    first. This is T1 on such a machine; exact search runs over it directly.
    """

    name = "cupy-pinned-host"

    def zeros(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> Any:
        kind = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape)) * kind.itemsize)
        pinned = cupy.cuda.alloc_pinned_memory(nbytes)
        # The pinned block owns the memory; the device view keeps it alive.
        memory = cupy.cuda.UnownedMemory(pinned.ptr, nbytes, pinned)
        array = cupy.ndarray(shape, kind, cupy.cuda.MemoryPointer(memory, 0))
        array.fill(0)
        return array
