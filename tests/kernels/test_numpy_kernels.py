"""The NumPy backend against brute-force references on awkward shapes.

The NumPy backend is the reference every GPU kernel is compared with, so its
own semantics are pinned here against plain-Python models: a dict for the
hash index, a sorted list for top-k, a literal clock hand for CLOCK.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.api import EMPTY, TOMBSTONE
from kernels.numpy_backend import NumpyKernels

# No example database: the tests leave no files behind in the work tree.
FAST = settings(max_examples=100, deadline=None, database=None)

kernels = NumpyKernels()


# -- references ---------------------------------------------------------------


def topk_reference(
    vectors: np.ndarray, eligible: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by sorting every eligible row: score descending, then row."""
    rows = [int(r) for r in np.flatnonzero(eligible)]
    k = min(k, len(rows))
    out_scores = np.zeros((len(queries), k), np.float32)
    out_rows = np.zeros((len(queries), k), np.int32)
    for q, query in enumerate(queries):
        scored = sorted((-float(query @ vectors[r]), r) for r in rows)[:k]
        out_scores[q] = [-s for s, _ in scored]
        out_rows[q] = [r for _, r in scored]
    return out_scores, out_rows


def clock_reference(
    ref: np.ndarray, evictable: np.ndarray, hand: int, count: int
) -> tuple[list[int], int]:
    """A literal clock hand: a set bit buys one more lap; a taken row leaves."""
    capacity = ref.size
    can = evictable.astype(bool).copy()
    victims: list[int] = []
    pos = hand
    for _ in range(2 * capacity):
        if len(victims) >= count:
            break
        if can[pos]:
            if ref[pos]:
                ref[pos] = 0
            else:
                victims.append(pos)
                can[pos] = False
        pos = (pos + 1) % capacity
    if not victims:
        return [], hand
    return victims, (victims[-1] + 1) % capacity


def small_ints(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Integers in [-3, 3] as float32: exact dot products and many ties."""
    return rng.integers(-3, 4, size=shape).astype(np.float32)


# -- hash index -----------------------------------------------------------------


def colliding_hashes(rng: np.random.Generator, n: int, slots: int) -> np.ndarray:
    """Unique live hashes (>= 2) crowded onto a few home slots."""
    homes = rng.integers(0, max(1, slots // 4), size=n, dtype=np.uint64)
    high = rng.choice(1 << 40, size=n, replace=False).astype(np.uint64) + 1
    return high * np.uint64(slots) + homes


def assert_index_matches(index, model: dict[int, int], absent: np.ndarray) -> None:
    keys = np.array(sorted(model), np.uint64)
    assert kernels.probe(index, keys).tolist() == [model[int(h)] for h in keys]
    assert (kernels.probe(index, absent) == -1).all()
    live = index.hashes[index.hashes > TOMBSTONE]
    assert sorted(live.tolist()) == sorted(model)


@FAST
@given(
    slots_log2=st.integers(1, 7),
    seed=st.integers(0, 2**32 - 1),
    rounds=st.integers(1, 6),
)
def test_index_matches_a_dict_through_inserts_and_erases(
    slots_log2: int, seed: int, rounds: int
) -> None:
    slots = 1 << slots_log2
    rng = np.random.default_rng(seed)
    pool = colliding_hashes(rng, 8 * slots, slots)
    index = kernels.new_index(slots)
    model: dict[int, int] = {}
    fresh = iter(pool.tolist())
    for _ in range(rounds):
        # Never fill every slot: the reference insert needs one free slot.
        room = slots - len(model) - 1
        batch = np.array([next(fresh) for _ in range(rng.integers(0, room + 1))])
        rows = rng.integers(0, 10_000, size=batch.size).astype(np.int32)
        kernels.insert(index, batch.astype(np.uint64), rows)
        model.update(zip(batch.tolist(), rows.tolist(), strict=True))
        doomed = [h for h in model if rng.random() < 0.4] + [next(fresh)]
        erased = kernels.erase(index, np.array(doomed, np.uint64))
        assert erased.tolist() == [model.pop(h, -1) for h in doomed]
    assert_index_matches(index, model, np.array(list(fresh), np.uint64))


def test_index_probe_and_erase_of_an_empty_batch() -> None:
    index = kernels.new_index(8)
    none = np.zeros(0, np.uint64)
    assert kernels.probe(index, none).shape == (0,)
    assert kernels.erase(index, none).shape == (0,)
    kernels.insert(index, none, np.zeros(0, np.int32))
    assert (index.hashes == EMPTY).all()


def test_index_with_no_empty_slot_left() -> None:
    """Every slot live or a tombstone: probes must still end, inserts reuse."""
    slots = 16
    rng = np.random.default_rng(7)
    keys = colliding_hashes(rng, 2 * slots, slots)
    index = kernels.new_index(slots)
    kernels.insert(index, keys[:slots], np.arange(slots, dtype=np.int32))
    assert (kernels.probe(index, keys[slots:]) == -1).all()
    assert kernels.erase(index, keys[:5]).tolist() == list(range(5))
    assert int((index.hashes == TOMBSTONE).sum()) == 5
    assert (index.hashes != EMPTY).all()
    kernels.insert(index, keys[slots : slots + 5], np.arange(100, 105, dtype=np.int32))
    model = dict(zip(keys[5:slots].tolist(), range(5, slots), strict=True))
    model |= dict(zip(keys[slots : slots + 5].tolist(), range(100, 105), strict=True))
    assert_index_matches(index, model, keys[slots + 5 :])


def test_index_finds_keys_past_tombstones_and_wraps_around() -> None:
    slots = 8
    index = kernels.new_index(slots)
    # Four keys whose home is the last slot: the chain wraps to slot 0.
    keys = np.array([slots * m + 7 for m in range(1, 5)], np.uint64)
    kernels.insert(index, keys, np.array([10, 11, 12, 13], np.int32))
    assert index.hashes[[7, 0, 1, 2]].tolist() == keys.tolist()
    kernels.erase(index, keys[:2])
    assert kernels.probe(index, keys).tolist() == [-1, -1, 12, 13]
    kernels.insert(index, keys[:1], np.array([20], np.int32))
    assert index.hashes[7] == keys[0]  # the first tombstone is reused
    assert kernels.probe(index, keys).tolist() == [20, -1, 12, 13]


def test_index_slots_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        kernels.new_index(12)


# -- rows -----------------------------------------------------------------------


@FAST
@given(
    n_rows=st.integers(1, 70),
    dim=st.integers(1, 33),
    picks=st.integers(0, 90),
    seed=st.integers(0, 2**32 - 1),
)
def test_gather_matches_indexing_and_normalises(
    n_rows: int, dim: int, picks: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n_rows, dim)).astype(np.float32)
    vectors[rng.random(n_rows) < 0.2] = 0.0  # zero rows must stay zero
    rows = rng.integers(0, n_rows, size=picks)
    plain = kernels.gather(vectors, rows, normalize=False)
    unit = kernels.gather(vectors, rows, normalize=True)
    assert plain.dtype == unit.dtype == np.float32
    assert plain.shape == unit.shape == (picks, dim)
    np.testing.assert_array_equal(plain, vectors[rows])
    norms = np.linalg.norm(vectors[rows].astype(np.float64), axis=1, keepdims=True)
    expected = np.divide(
        vectors[rows], norms, where=norms > 0, out=np.zeros_like(plain)
    )
    np.testing.assert_allclose(unit, expected, rtol=1e-6, atol=1e-7)


def test_scatter_then_gather_round_trips_with_storage_rounding() -> None:
    rng = np.random.default_rng(3)
    vectors = np.zeros((37, 5), np.float16)
    rows = rng.permutation(37)[:11]
    values = rng.standard_normal((11, 5)).astype(np.float32)
    kernels.scatter(vectors, rows, values)
    back = kernels.gather(vectors, rows, normalize=False)
    np.testing.assert_array_equal(back, values.astype(np.float16).astype(np.float32))
    untouched = np.setdiff1d(np.arange(37), rows)
    assert (vectors[untouched] == 0).all()


# -- CLOCK ----------------------------------------------------------------------


@FAST
@given(
    capacity=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(0, 50),
)
def test_clock_matches_a_literal_clock_hand(
    capacity: int, seed: int, count: int
) -> None:
    rng = np.random.default_rng(seed)
    ref = (rng.random(capacity) < 0.5).astype(np.uint8)
    evictable = (rng.random(capacity) < 0.7).astype(np.uint8)
    hand = int(rng.integers(0, capacity))
    expected_ref = ref.copy()
    victims, new_hand = kernels.clock_evict(ref, evictable, hand, count)
    want, want_hand = clock_reference(expected_ref, evictable, hand, count)
    assert victims.dtype == np.int32
    assert victims.tolist() == want
    assert new_hand == want_hand
    np.testing.assert_array_equal(ref, expected_ref)


def test_clock_first_lap_takes_clear_bits_and_clears_what_it_passes() -> None:
    ref = np.array([1, 0, 1, 0, 1, 0], np.uint8)
    evictable = np.ones(6, np.uint8)
    victims, hand = kernels.clock_evict(ref, evictable, hand=2, count=2)
    assert victims.tolist() == [3, 5]
    assert hand == 0
    # Rows 2 and 4 were passed and lose their bit; row 0 was not reached.
    assert ref.tolist() == [1, 0, 0, 0, 0, 0]


def test_clock_second_lap_takes_rows_whose_bit_the_first_lap_cleared() -> None:
    ref = np.array([1, 1, 0, 1], np.uint8)
    evictable = np.array([1, 1, 1, 0], np.uint8)
    victims, hand = kernels.clock_evict(ref, evictable, hand=1, count=3)
    # Lap one: 1 loses its bit, 2 goes, 3 is pinned, 0 loses its bit.
    assert victims.tolist() == [2, 1, 0]
    assert hand == 1
    # The pinned row 3 keeps its bit; every evictable bit was cleared.
    assert ref.tolist() == [0, 0, 0, 1]


def test_clock_with_nothing_evictable_changes_nothing() -> None:
    ref = np.array([1, 0, 1], np.uint8)
    victims, hand = kernels.clock_evict(ref, np.zeros(3, np.uint8), hand=1, count=2)
    assert victims.size == 0
    assert hand == 1
    assert ref.tolist() == [1, 0, 1]


# -- search ---------------------------------------------------------------------


@FAST
@given(
    n_rows=st.integers(1, 150),
    dim=st.integers(1, 12),
    n_queries=st.integers(0, 4),
    k=st.integers(1, 170),
    density=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_search_matches_a_full_sort_with_ties_to_the_lower_row(
    n_rows: int, dim: int, n_queries: int, k: int, density: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    vectors = small_ints(rng, (n_rows, dim))
    eligible = rng.random(n_rows) < density
    queries = small_ints(rng, (n_queries, dim))
    scores, rows = kernels.search(vectors, eligible, queries, k)
    want_scores, want_rows = topk_reference(vectors, eligible, queries, k)
    assert scores.dtype == np.float32
    assert rows.dtype == np.int32
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(scores, want_scores)


@pytest.mark.parametrize("n_rows", [1, 63, 64, 65, 255, 257, 1000, 4099])
def test_search_on_sizes_off_every_block_size(n_rows: int) -> None:
    rng = np.random.default_rng(n_rows)
    vectors = small_ints(rng, (n_rows, 16))
    eligible = rng.random(n_rows) < 0.8
    queries = small_ints(rng, (3, 16))
    for k in (1, 10, 100):
        got = kernels.search(vectors, eligible, queries, k)
        want = topk_reference(vectors, eligible, queries, k)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])


def test_search_with_k_above_the_eligible_rows_returns_them_all() -> None:
    vectors = np.eye(4, dtype=np.float32)
    eligible = np.array([True, False, True, True])
    scores, rows = kernels.search(vectors, eligible, np.ones((2, 4), np.float32), 50)
    assert rows.tolist() == [[0, 2, 3], [0, 2, 3]]
    assert scores.tolist() == [[1.0, 1.0, 1.0]] * 2


def test_search_with_no_queries_or_no_eligible_rows() -> None:
    vectors = np.ones((5, 3), np.float32)
    scores, rows = kernels.search(vectors, np.ones(5, bool), np.zeros((0, 3)), 4)
    assert scores.shape == rows.shape == (0, 4)
    scores, rows = kernels.search(vectors, np.zeros(5, bool), np.ones((2, 3)), 4)
    assert scores.shape == rows.shape == (2, 0)


def test_search_breaks_ties_between_duplicate_rows_to_the_lower_row() -> None:
    base = np.eye(4, 8, dtype=np.float32) * np.array([[1], [2], [5], [3]], np.float32)
    vectors = np.concatenate([base, base, base])  # rows r, r + 4, r + 8 tie
    query = np.eye(1, 8, 2, dtype=np.float32)
    scores, rows = kernels.search(vectors, np.ones(12, bool), query, 5)
    assert rows.tolist() == [[2, 6, 10, 0, 1]]
    assert scores.tolist() == [[5.0, 5.0, 5.0, 0.0, 0.0]]


def test_search_ignores_ineligible_rows_even_when_they_score_best() -> None:
    vectors = np.array([[5.0], [1.0], [9.0], [2.0]], np.float32)
    eligible = np.array([True, True, False, True])
    scores, rows = kernels.search(vectors, eligible, np.ones((1, 1), np.float32), 2)
    assert rows.tolist() == [[0, 3]]
    assert scores.tolist() == [[5.0, 2.0]]
