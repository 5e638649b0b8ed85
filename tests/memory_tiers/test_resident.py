"""Resident tiers: admission on put, residency of namespaces, exact search."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from kernels import host_kernels
from memory_tiers.admission import AdmitAll, SeenTwice
from memory_tiers.resident import ResidentTier
from memory_tiers.slab import VectorSlab
from tests.memory_tiers.records import record, unit

MiB = 2**20


def hbm(budget: int = 4 * MiB, pinned: tuple[str, ...] = ()) -> ResidentTier:
    return ResidentTier("hbm", host_kernels(), budget, [8], SeenTwice(60), pinned)


async def test_seen_twice_tier_admits_only_on_the_second_sighting() -> None:
    tier = hbm()
    rec = record("n", "a")

    await tier.get_many([rec.ref])
    await tier.put_many([rec])
    assert await tier.get_many([rec.ref]) == {}

    await tier.put_many([rec])
    assert rec.ref in await tier.get_many([rec.ref])


async def test_pinned_namespace_is_admitted_at_once() -> None:
    tier = hbm(pinned=("p",))
    rec = record("p", "a")

    await tier.put_many([rec])

    assert rec.ref in await tier.get_many([rec.ref])


async def test_held_rows_are_updated_even_without_a_new_sighting() -> None:
    tier = ResidentTier("host", host_kernels(), 4 * MiB, [8], AdmitAll())
    await tier.put_many([record("n", "a", version=1, seed=1)])

    await tier.put_many([record("n", "a", version=2, seed=2)])

    held = (await tier.get_many([("n", "a")]))[("n", "a")]
    assert held.version == 2


async def test_a_tombstone_removes_the_record() -> None:
    tier = ResidentTier("host", host_kernels(), 4 * MiB, [8], AdmitAll())
    rec = record("n", "a")
    await tier.put_many([rec])

    gone = record("n", "a", version=2)
    gone.deleted = True
    await tier.put_many([gone])

    assert await tier.get_many([rec.ref]) == {}


async def test_vectors_of_other_dims_pass_through() -> None:
    tier = ResidentTier("host", host_kernels(), 4 * MiB, [8], AdmitAll())

    await tier.put_many([record("n", "wide", dim=16)])

    assert await tier.get_many([("n", "wide")]) == {}


async def test_resident_namespace_search_is_exact_and_matches_brute_force() -> None:
    tier = ResidentTier("host", host_kernels(), 4 * MiB, [8], AdmitAll())
    records = [record("docs", str(i), seed=i) for i in range(57)]
    records += [record("other", str(i), seed=1000 + i) for i in range(20)]
    assert await tier.hold_namespace("docs", records[:57])
    await tier.put_many(records[57:])
    query = unit(8, 99)

    found = await tier.search("docs", query[None, :], 5)

    assert found is not None
    matrix = np.stack([r.vector for r in records[:57]])
    expected = np.argsort(-(matrix @ query), kind="stable")[:5]
    assert [h[1].key for h in found[0]] == [str(i) for i in expected]
    assert await tier.search("other", query[None, :], 5) is None


async def test_search_applies_a_record_filter() -> None:
    tier = ResidentTier("host", host_kernels(), 4 * MiB, [8], AdmitAll())
    records = [record("docs", str(i), seed=i) for i in range(10)]
    for i, rec in enumerate(records):
        rec.metadata = {"even": i % 2 == 0}
    await tier.hold_namespace("docs", records)

    found = await tier.search(
        "docs", unit(8, 5)[None, :], 10, lambda r: bool(r.metadata["even"])
    )

    assert found is not None
    assert sorted(int(h[1].key) for h in found[0]) == [0, 2, 4, 6, 8]


async def test_eviction_of_a_resident_row_ends_residency() -> None:
    tier = ResidentTier("host", host_kernels(), 300_000, [8], AdmitAll())
    capacity = tier.slabs[8].capacity
    assert await tier.hold_namespace(
        "docs", [record("docs", str(i)) for i in range(capacity)]
    )

    await tier.put_many([record("other", "x")])

    assert not tier.can_search("docs")


async def test_namespace_larger_than_the_tier_is_not_resident() -> None:
    tier = ResidentTier("host", host_kernels(), 300_000, [8], AdmitAll())
    capacity = tier.slabs[8].capacity

    held = await tier.hold_namespace(
        "docs", [record("docs", str(i)) for i in range(capacity + 1)]
    )

    assert not held
    assert not tier.can_search("docs")


async def test_stats_report_pools_within_the_budget() -> None:
    tier = hbm(budget=2 * MiB)
    await tier.put_many([record("n", "a")])

    stats = await tier.stats()

    pools = stats.detail["pools"]["dim8"]
    total = pools["vectors_bytes"] + pools["index_bytes"] + pools["workspace_bytes"]
    assert total <= 2 * MiB
    assert stats.capacity_bytes == 2 * MiB


async def test_a_release_is_counted_so_a_racing_load_can_tell() -> None:
    tier = ResidentTier("host", host_kernels(), 4 * MiB, [8], AdmitAll())
    assert await tier.hold_namespace("docs", [record("docs", "a")])
    before = tier.releases("docs")

    tier.release_namespace("docs")

    assert tier.releases("docs") == before + 1
    assert not tier.can_search("docs")


async def test_exact_search_leaves_the_event_loop_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tier = ResidentTier("host", host_kernels(), 4 * MiB, [8], AdmitAll())
    assert await tier.hold_namespace("docs", [record("docs", str(i)) for i in range(9)])
    gate = threading.Event()
    scan = VectorSlab.search

    def gated(self: VectorSlab, *args: object) -> object:
        # Were the scan on the event loop, nothing could open the gate.
        assert gate.wait(timeout=10), "the event loop was blocked"
        return scan(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(VectorSlab, "search", gated)
    searching = asyncio.create_task(tier.search("docs", unit(8, 1)[None, :], 3))
    await asyncio.sleep(0.05)
    gate.set()
    found = await asyncio.wait_for(searching, timeout=10)

    assert found is not None
    assert len(found[0]) == 3
