"""The slab: capacity from a byte budget, hash index, CLOCK eviction, versions."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import host_kernels
from memory_tiers.slab import VectorSlab, plan_pools
from tests.memory_tiers.records import record


def slab_with_rows(rows: int, dim: int = 8) -> VectorSlab:
    """A slab whose budget buys exactly `rows` rows."""
    itemsize = host_kernels().storage_dtype.itemsize
    budget = 1
    while plan_pools(dim, itemsize, budget).rows < rows:
        budget += 64
    while plan_pools(dim, itemsize, budget).rows > rows:
        budget -= 1
    slab = VectorSlab(host_kernels(), dim, budget)
    assert slab.capacity == rows
    return slab


@pytest.mark.parametrize("budget", [0, 1, 1000, 123_457, 10_000_000, 2**30 + 7])
@pytest.mark.parametrize("dim", [1, 3, 384, 1536])
def test_pools_never_exceed_the_budget(budget: int, dim: int) -> None:
    plan = plan_pools(dim, 4, budget)

    assert plan.total_bytes <= budget or plan.rows == 0
    assert plan.slots >= 2 * plan.rows
    assert plan.slots & (plan.slots - 1) == 0


def test_a_budget_too_small_for_one_row_holds_nothing() -> None:
    slab = VectorSlab(host_kernels(), 8, 100)

    result = slab.upsert([record("n", "a")])

    assert slab.capacity == 0
    assert result.declined == [("n", "a")]
    assert slab.lookup([("n", "a")]) == {}


def test_one_slot_slab_keeps_the_latest_key() -> None:
    slab = slab_with_rows(1)

    slab.upsert([record("n", "a")])
    result = slab.upsert([record("n", "b")])

    assert result.evicted == [("n", "a")]
    assert list(slab.lookup([("n", "a"), ("n", "b")])) == [("n", "b")]
    assert slab.items == 1


def test_roundtrip_returns_the_written_vector() -> None:
    slab = slab_with_rows(4)
    written = record("n", "a", version=7)

    slab.upsert([written])
    held = slab.lookup([("n", "a")])[("n", "a")]

    np.testing.assert_allclose(held.vector, written.vector, rtol=1e-3, atol=1e-3)
    assert held.version == 7
    assert held.text == written.text


def test_duplicate_keys_in_one_batch_keep_the_newest() -> None:
    slab = slab_with_rows(4)
    old, new = record("n", "a", version=1, seed=1), record("n", "a", version=2, seed=2)

    slab.upsert([new, old, new])

    held = slab.lookup([("n", "a")])[("n", "a")]
    assert slab.items == 1
    assert held.version == 2
    np.testing.assert_allclose(held.vector, new.vector, atol=1e-3)


def test_an_older_version_never_overwrites_a_newer_one() -> None:
    slab = slab_with_rows(4)
    slab.upsert([record("n", "a", version=5, seed=5)])

    slab.upsert([record("n", "a", version=4, seed=4)])

    assert slab.lookup([("n", "a")])[("n", "a")].version == 5


def test_full_slab_evicts_unreferenced_rows_first() -> None:
    slab = slab_with_rows(3)
    slab.upsert([record("n", k) for k in "abc"])
    slab.lookup([("n", "a"), ("n", "c")])  # sets their CLOCK bits

    result = slab.upsert([record("n", "d")])

    assert result.evicted == [("n", "b")]
    assert set(slab.lookup([("n", k) for k in "abcd"])) == {
        ("n", "a"),
        ("n", "c"),
        ("n", "d"),
    }


def test_pinned_rows_are_never_evicted_and_excess_is_declined() -> None:
    slab = slab_with_rows(2)
    slab.upsert([record("p", "a"), record("p", "b")], pinned=True)

    result = slab.upsert([record("n", "x")])

    assert result.declined == [("n", "x")]
    assert result.evicted == []
    assert set(slab.lookup([("p", "a"), ("p", "b")])) == {("p", "a"), ("p", "b")}


def test_batch_larger_than_capacity_fills_it_and_declines_the_rest() -> None:
    slab = slab_with_rows(5)

    result = slab.upsert([record("n", str(i)) for i in range(9)])

    assert result.written + len(result.declined) == 9
    assert slab.items == 5
    held = slab.lookup([("n", str(i)) for i in range(9)])
    assert len(held) == 5


def test_churn_with_deletes_keeps_the_index_consistent() -> None:
    slab = slab_with_rows(16)
    rng = np.random.default_rng(3)
    live: dict[str, int] = {}
    for step in range(600):
        key = str(rng.integers(0, 40))
        if rng.random() < 0.3:
            slab.remove([("n", key)])
            live.pop(key, None)
        else:
            result = slab.upsert([record("n", key, version=step)])
            live[key] = step
            for _, gone in result.evicted:
                live.pop(gone, None)

    held = slab.lookup([("n", str(k)) for k in range(40)])
    assert {k for _, k in held} == set(live)
    assert all(held[("n", k)].version == v for k, v in live.items())
    assert slab.items == len(live)


def test_search_ranks_by_inner_product_within_eligible_rows() -> None:
    slab = slab_with_rows(10, dim=4)
    basis = np.eye(4, dtype=np.float32)
    for i in range(4):
        rec = record("n", f"e{i}", dim=4)
        rec.vector = basis[i]
        slab.upsert([rec])
    query = np.array([[0.1, 0.9, 0.3, 0.0]], np.float32)

    hits = slab.search(query, 3, slab.rows_where("n"))[0]

    assert [h[1].key for h in hits] == ["e1", "e2", "e0"]
    assert hits[0][0] == pytest.approx(0.9)
