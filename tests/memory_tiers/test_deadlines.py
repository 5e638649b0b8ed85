"""Reads that fall through to T4/T5 never hold a request past its deadline."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kernels import host_kernels
from memory_tiers.admission import AdmitAll
from memory_tiers.embedded_servers import EmbeddedRedis
from memory_tiers.hierarchy import Deadline, TierHierarchy, Trace
from memory_tiers.object_store import ObjectTier
from memory_tiers.pgvector_store import PgvectorTier
from memory_tiers.redis_cache import RedisTier
from memory_tiers.resident import ResidentTier
from memory_tiers.warehouse import WarehouseTier
from tests.memory_tiers.records import record


@pytest.fixture
async def store(postgres_dsn: str) -> AsyncIterator[PgvectorTier]:
    tier = await PgvectorTier.connect(postgres_dsn, max_size=4)
    yield tier
    await tier.close()


Stack = tuple[ResidentTier, ObjectTier, TierHierarchy]


@pytest.fixture
async def stack(
    store: PgvectorTier, tmp_path: Path
) -> AsyncIterator[tuple[ResidentTier, ObjectTier, TierHierarchy]]:
    host = ResidentTier("host", host_kernels(), 2**22, [8], AdmitAll())
    warehouse = WarehouseTier.duckdb(tmp_path / "wh.duckdb")
    objects = ObjectTier((tmp_path / "objects").as_uri())
    hierarchy = TierHierarchy([host, store, warehouse, objects], store)
    yield host, objects, hierarchy
    await hierarchy.settle()
    await warehouse.close()
    await objects.close()


async def test_an_exhausted_deadline_reports_pending_and_fills_in_the_background(
    stack: tuple[ResidentTier, ObjectTier, TierHierarchy], namespace: str
) -> None:
    _, objects, hierarchy = stack
    await objects.put_table(namespace, [record(namespace, "bulk")])
    ref = (namespace, "bulk")

    hurried = await hierarchy.get_many([ref], Trace(), Deadline(0.001))
    await hierarchy.settle()
    retried = await hierarchy.get_many([ref], Trace(), Deadline(0.001))

    assert hurried.records == {}
    assert hurried.pending == [ref]
    assert retried.tiers == {ref: "host"}
    assert retried.pending == []


async def test_a_caller_with_a_long_deadline_waits_for_the_slow_tier(
    stack: tuple[ResidentTier, ObjectTier, TierHierarchy], namespace: str
) -> None:
    _, objects, hierarchy = stack
    await objects.put_table(namespace, [record(namespace, "bulk")])
    ref = (namespace, "bulk")

    patient = await hierarchy.get_many([ref], Trace(), Deadline(30_000))

    assert patient.tiers == {ref: "object"}
    assert patient.pending == []


async def test_keys_in_the_system_of_record_never_wait_on_slow_tiers(
    stack: tuple[ResidentTier, ObjectTier, TierHierarchy],
    store: PgvectorTier,
    namespace: str,
) -> None:
    _, _, hierarchy = stack
    await store.commit([record(namespace, "a")])
    ref = (namespace, "a")

    result = await hierarchy.get_many([ref], Trace(), Deadline(0.001))

    assert result.tiers == {ref: "pgvector"}
    assert result.pending == []


async def test_a_cache_tier_slower_than_the_budget_is_skipped(
    store: PgvectorTier, redis_server: EmbeddedRedis, namespace: str
) -> None:
    redis = RedisTier(redis_server.url)
    hierarchy = TierHierarchy([redis, store], store)
    committed = await store.commit([record(namespace, "a")])
    await redis.put_many(committed)
    ref = (namespace, "a")
    # Its recent reads took 100 ms; a bulk write's time does not count.
    hierarchy.health["redis"].read_ms.extend([100.0] * 20)
    hierarchy.health["pgvector"].write_ms.extend([5_000.0] * 20)

    skipped = await hierarchy.get_many([ref], Trace(), Deadline(50))
    asked_while_slow = hierarchy.health["redis"].hits + hierarchy.health["redis"].misses
    patient = await hierarchy.get_many([ref], Trace(), Deadline(30_000))
    await redis.close()

    assert skipped.tiers == {ref: "pgvector"}
    assert asked_while_slow == 0
    assert patient.tiers == {ref: "redis"}
