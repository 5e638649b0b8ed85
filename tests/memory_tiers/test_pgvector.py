"""T3 against a real PostgreSQL + pgvector: versions, outbox, dims, search."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from memory_tiers.pgvector_store import DimensionMismatch, PgvectorTier
from tests.memory_tiers.records import record, unit


@pytest.fixture
async def store(postgres_dsn: str) -> AsyncIterator[PgvectorTier]:
    tier = await PgvectorTier.connect(postgres_dsn, max_size=4)
    yield tier
    await tier.close()


async def test_commit_assigns_growing_versions_and_reads_back(
    store: PgvectorTier, namespace: str
) -> None:
    first = await store.commit([record(namespace, "a"), record(namespace, "b")])
    second = await store.commit([record(namespace, "a", seed=7)])

    assert first[0].version < first[1].version < second[0].version
    held = await store.get_many([(namespace, "a"), (namespace, "b"), (namespace, "zz")])
    assert set(held) == {(namespace, "a"), (namespace, "b")}
    np.testing.assert_allclose(held[(namespace, "a")].vector, unit(8, 7), rtol=1e-6)
    assert held[(namespace, "a")].version == second[0].version


async def test_each_commit_appends_outbox_rows(
    private_dsn: str, namespace: str
) -> None:
    # A database of its own: a running service's exporter drains the shared one.
    store = await PgvectorTier.connect(private_dsn, max_size=1)
    committed = await store.commit([record(namespace, "a"), record(namespace, "b")])

    async with store.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT key, version FROM tiermem_outbox WHERE namespace = $1 ORDER BY id",
            namespace,
        )
    await store.close()
    assert [(r["key"], r["version"]) for r in rows] == [
        (c.key, c.version) for c in committed
    ]


async def test_a_wrong_dim_is_refused_and_nothing_is_written(
    store: PgvectorTier, namespace: str
) -> None:
    await store.commit([record(namespace, "a", dim=8)])

    with pytest.raises(DimensionMismatch):
        await store.commit(
            [record(namespace, "b", dim=8), record(namespace, "c", dim=4)]
        )

    assert set(await store.get_many([(namespace, "b"), (namespace, "c")])) == set()


async def test_delete_leaves_a_tombstone_with_a_newer_version(
    store: PgvectorTier, namespace: str
) -> None:
    written = await store.commit([record(namespace, "a")])

    await store.delete_many([(namespace, "a")])

    held = (await store.get_many([(namespace, "a")]))[(namespace, "a")]
    assert held.deleted
    assert held.version > written[0].version
    assert await store.count(namespace) == 0


async def test_put_many_keeps_the_newest_version(
    store: PgvectorTier, namespace: str
) -> None:
    await store.put_many([record(namespace, "a", version=10, seed=10)])
    await store.put_many([record(namespace, "a", version=9, seed=9)])

    held = (await store.get_many([(namespace, "a")]))[(namespace, "a")]
    assert held.version == 10


async def test_hnsw_search_finds_the_nearest_with_metadata_filter(
    store: PgvectorTier, namespace: str
) -> None:
    records = [record(namespace, str(i), seed=i) for i in range(40)]
    for i, rec in enumerate(records):
        rec.metadata = {"group": "even" if i % 2 == 0 else "odd"}
    await store.commit(records)

    hits = await store.search(namespace, records[6].vector, 3)
    filtered = await store.search(namespace, records[7].vector, 5, {"group": "even"})

    assert hits[0].record.key == "6"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(filtered) == 5
    assert all(h.record.metadata == {"group": "even"} for h in filtered)


async def test_load_namespace_respects_the_limit(
    store: PgvectorTier, namespace: str
) -> None:
    await store.commit([record(namespace, str(i)) for i in range(5)])

    assert len(await store.load_namespace(namespace, 5) or []) == 5
    assert await store.load_namespace(namespace, 4) is None
