"""CupyKernels against the NumPy reference on the same random inputs.

The reference is given the float16-rounded values the GPU stores, so scores
differ only by summation order. Integer-valued data makes every score exact,
so there rows must match everywhere, ties included.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from kernels.numpy_backend import NumpyKernels


def _gpu_unavailable() -> str | None:
    try:
        # CuPy may warn at import on a machine without CUDA; that is the
        # situation being detected, not a failure of these tests.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from kernels.cupy_backend import gpu_unavailable_reason
    except ImportError as exc:
        return f"CuPy is not importable ({exc})"
    return gpu_unavailable_reason()


WHY_NOT = _gpu_unavailable()

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(WHY_NOT is not None, reason=f"needs a CUDA device: {WHY_NOT}"),
]

ref = NumpyKernels()


@pytest.fixture(scope="module", params=["device-memory", "pinned-host-memory"])
def gpu(request: pytest.FixtureRequest) -> Any:
    """Both GPU backends: rows in device memory (T0) and in pinned host memory
    read in place by the GPU (T1 on a GH200)."""
    from kernels.cupy_backend import CupyKernels, PinnedHostKernels

    return CupyKernels() if request.param == "device-memory" else PinnedHostKernels()


def test_pinned_host_arrays_live_in_host_memory() -> None:
    import cupy

    from kernels.cupy_backend import PinnedHostKernels

    rows = PinnedHostKernels().zeros((1000, 384), np.float16)
    where = cupy.cuda.runtime.pointerGetAttributes(rows.data.ptr)

    assert where.type == cupy.cuda.runtime.memoryTypeHost
    assert float(rows.sum()) == 0.0


def stored(values: np.ndarray) -> np.ndarray:
    """What float16 storage keeps of float32 values, as float32."""
    return values.astype(np.float16).astype(np.float32)


def slabs(gpu: Any, values: np.ndarray) -> tuple[Any, np.ndarray]:
    """The same rows on the GPU (float16) and for the reference (float32)."""
    device = gpu.zeros(values.shape, gpu.storage_dtype)
    gpu.scatter(device, np.arange(len(values)), values)
    return device, stored(values)


def int_rows(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-3, 4, size=shape).astype(np.float32)


# -- hash index -----------------------------------------------------------------


def colliding_hashes(rng: np.random.Generator, n: int, slots: int) -> np.ndarray:
    homes = rng.integers(0, slots // 8, size=n, dtype=np.uint64)
    high = rng.choice(1 << 40, size=n, replace=False).astype(np.uint64) + 1
    return high * np.uint64(slots) + homes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_index_probe_insert_erase_match(gpu: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    slots = 1024
    keys = colliding_hashes(rng, 4 * slots, slots)
    host, device = ref.new_index(slots), gpu.new_index(slots)
    used = 0
    for _ in range(5):
        batch = keys[used : used + int(rng.integers(100, 300))]
        used += batch.size
        rows = rng.integers(0, 1 << 20, size=batch.size).astype(np.int32)
        ref.insert(host, batch, rows)
        gpu.insert(device, batch, rows)
        doomed = rng.choice(keys[:used], size=150, replace=False)
        np.testing.assert_array_equal(
            gpu.erase(device, doomed), ref.erase(host, doomed)
        )
    np.testing.assert_array_equal(gpu.probe(device, keys), ref.probe(host, keys))


def test_index_filled_to_the_last_slot_in_one_batch(gpu: Any) -> None:
    rng = np.random.default_rng(5)
    keys = colliding_hashes(rng, 256 + 10, 256)
    index = gpu.new_index(256)
    gpu.insert(index, keys[:256], np.arange(256, dtype=np.int32))
    assert gpu.probe(index, keys[:256]).tolist() == list(range(256))
    assert (gpu.probe(index, keys[256:]) == -1).all()
    with pytest.raises(RuntimeError, match="hash index full"):
        gpu.insert(index, keys[256:], np.zeros(10, np.int32))


def test_index_empty_batches(gpu: Any) -> None:
    index = gpu.new_index(8)
    none = np.zeros(0, np.uint64)
    assert gpu.probe(index, none).shape == gpu.erase(index, none).shape == (0,)
    gpu.insert(index, none, np.zeros(0, np.int32))


# -- rows -----------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 7, 384])
@pytest.mark.parametrize("normalize", [False, True])
def test_scatter_and_gather_match(gpu: Any, dim: int, normalize: bool) -> None:
    rng = np.random.default_rng(dim)
    values = rng.standard_normal((301, dim)).astype(np.float32) * 50
    values[::7] = 0.0
    device, host = slabs(gpu, values)
    np.testing.assert_array_equal(gpu.to_host(device), values.astype(np.float16))
    rows = rng.integers(0, 301, size=4099)
    got = gpu.gather(device, rows, normalize)
    want = ref.gather(host, rows, normalize)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    assert gpu.gather(device, rows[:0], normalize).shape == (0, dim)


def test_rows_out_of_range_are_refused(gpu: Any) -> None:
    device = gpu.zeros((4, 8), gpu.storage_dtype)
    with pytest.raises(IndexError):
        gpu.gather(device, np.array([4]), False)
    with pytest.raises(IndexError):
        gpu.scatter(device, np.array([-1]), np.zeros((1, 8), np.float32))


# -- CLOCK ----------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 17, 300, 900])
def test_clock_evict_matches(gpu: Any, count: int) -> None:
    rng = np.random.default_rng(count)
    bits = (rng.random(777) < 0.5).astype(np.uint8)
    evictable = (rng.random(777) < 0.8).astype(np.uint8)
    device_bits = gpu.from_host(bits.copy())
    got = gpu.clock_evict(device_bits, gpu.from_host(evictable), 123, count)
    want = ref.clock_evict(bits, evictable, 123, count)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1] == want[1]
    np.testing.assert_array_equal(gpu.to_host(device_bits), bits)


# -- search ---------------------------------------------------------------------

SHAPES = [
    # rows, dim, queries, k: sizes off every block size, k past the rows,
    # a k and a width that leave the fused path.
    (1, 8, 1, 10),
    (63, 16, 3, 5),
    (65, 384, 17, 100),
    (1000, 384, 1, 10),
    (1000, 384, 40, 128),
    (4099, 24, 5, 129),
    (700, 12, 2, 10),
    (20_011, 384, 33, 10),
]


Answer = tuple[np.ndarray, np.ndarray]


def run_both(
    gpu: Any, values: np.ndarray, eligible: np.ndarray, queries: np.ndarray, k: int
) -> tuple[Answer, Answer]:
    """The GPU's answer and the reference's, on the same stored rows."""
    device, host = slabs(gpu, values)
    got = gpu.search(device, gpu.from_host(eligible), queries, k)
    return got, ref.search(host, eligible, queries, k)


@pytest.mark.parametrize(("n_rows", "dim", "n_q", "k"), SHAPES)
@pytest.mark.parametrize("density", [0.02, 0.7, 1.0])
def test_search_is_exact_on_integer_data(
    gpu: Any, n_rows: int, dim: int, n_q: int, k: int, density: float
) -> None:
    rng = np.random.default_rng(n_rows * 31 + n_q)
    values = int_rows(rng, (n_rows, dim))
    eligible = (rng.random(n_rows) < density).astype(np.uint8)
    queries = int_rows(rng, (n_q, dim))
    (scores, rows), (want_scores, want_rows) = run_both(
        gpu, values, eligible, queries, k
    )
    assert scores.dtype == np.float32
    assert rows.dtype == np.int32
    np.testing.assert_array_equal(scores, want_scores)
    np.testing.assert_array_equal(rows, want_rows)


@pytest.mark.parametrize(("n_rows", "dim", "n_q", "k"), SHAPES)
def test_search_matches_on_gaussian_data(
    gpu: Any, n_rows: int, dim: int, n_q: int, k: int
) -> None:
    rng = np.random.default_rng(n_rows + dim)
    values = rng.standard_normal((n_rows, dim)).astype(np.float32)
    eligible = rng.random(n_rows) < 0.9
    queries = rng.standard_normal((n_q, dim)).astype(np.float32)
    (scores, rows), (want_scores, want_rows) = run_both(
        gpu, values, eligible, queries, k
    )
    tol = 1e-5 * np.sqrt(dim) * np.abs(want_scores).max(initial=1.0)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=tol)
    # Rows must agree wherever the score is clear of its neighbours.
    gaps = np.diff(want_scores, axis=1, prepend=np.inf, append=-np.inf)
    clear = (np.abs(gaps[:, :-1]) > 2 * tol) & (np.abs(gaps[:, 1:]) > 2 * tol)
    np.testing.assert_array_equal(rows[clear], want_rows[clear])


def test_search_breaks_ties_between_duplicate_rows_to_the_lower_row(gpu: Any) -> None:
    rng = np.random.default_rng(9)
    base = rng.standard_normal((50, 384)).astype(np.float32)
    values = np.concatenate([base] * 5)  # row r ties with r + 50, r + 100, ...
    queries = rng.standard_normal((4, 384)).astype(np.float32)
    device, _ = slabs(gpu, values)
    scores, rows = gpu.search(device, gpu.from_host(np.ones(250, bool)), queries, 20)
    for q in range(4):
        pairs = list(zip(scores[q].tolist(), rows[q].tolist(), strict=True))
        assert pairs == sorted(pairs, key=lambda p: (-p[0], p[1]))
        assert rows[q][:5].tolist() == [rows[q][0] + 50 * i for i in range(5)]


def test_search_with_no_queries_or_no_eligible_rows(gpu: Any) -> None:
    device = gpu.zeros((10, 8), gpu.storage_dtype)
    everyone, nobody = np.ones(10, bool), np.zeros(10, bool)
    scores, rows = gpu.search(device, gpu.from_host(everyone), np.zeros((0, 8)), 3)
    assert scores.shape == rows.shape == (0, 3)
    scores, rows = gpu.search(device, gpu.from_host(nobody), np.ones((2, 8)), 3)
    assert scores.shape == rows.shape == (2, 0)
