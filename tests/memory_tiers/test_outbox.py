"""The export from the outbox to T4 and T5, with the S3 server stopped midway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from memory_tiers.base import TierError
from memory_tiers.object_store import ObjectTier
from memory_tiers.outbox import OutboxExporter
from memory_tiers.pgvector_store import PgvectorTier
from memory_tiers.retry import Backoff
from memory_tiers.warehouse import WarehouseTier
from tests.conftest import S3Server, start_s3
from tests.memory_tiers.records import record


@pytest.fixture
async def store(private_dsn: str) -> AsyncIterator[PgvectorTier]:
    tier = await PgvectorTier.connect(private_dsn, max_size=4)
    yield tier
    await tier.close()


@pytest.fixture
def s3() -> Iterator[S3Server]:
    """An S3 server of this test's own, so stopping it disturbs no one else."""
    server = start_s3()
    yield server
    server.server.stop()


async def archived_keys(objects: ObjectTier, namespace: str) -> list[str]:
    """Every archived object of the namespace, duplicates included."""
    listed = await objects._list(f"records/{namespace}/")
    return sorted(
        meta["path"].rsplit("/", 1)[-1].removesuffix(".rec") for meta in listed
    )


async def exporter_for(
    store: PgvectorTier, s3: S3Server, tmp_path: Path
) -> tuple[OutboxExporter, ObjectTier, WarehouseTier]:
    objects = ObjectTier(s3.url("export"), options=s3.options, max_retries=0)
    warehouse = WarehouseTier.duckdb(tmp_path / "wh.duckdb")
    exporter = OutboxExporter(store, [warehouse, objects], batch=64, idle_s=0.05)
    exporter.backoff = Backoff(base_s=0.02, max_s=0.2)
    return exporter, objects, warehouse


async def test_rows_committed_while_s3_is_down_arrive_exactly_once(
    store: PgvectorTier, s3: S3Server, tmp_path: Path, namespace: str
) -> None:
    exporter, objects, warehouse = await exporter_for(store, s3, tmp_path)
    s3.server.stop()
    committed = await store.commit([record(namespace, f"k{i}") for i in range(30)])
    committed += await store.commit([record(namespace, "k0", seed=5)])  # k0 twice

    with pytest.raises(TierError):
        await exporter.export_once()
    assert await exporter.pending() >= 31

    s3.server.start()
    await exporter.drain()

    assert await exporter.pending() == 0
    keys = [f"k{i}" for i in range(30)]
    assert await archived_keys(objects, namespace) == sorted(keys)
    archived = await objects.get_many([(namespace, k) for k in keys])
    assert archived[(namespace, "k0")].version == committed[-1].version
    in_warehouse = await warehouse.get_many([(namespace, k) for k in keys])
    assert len(in_warehouse) == 30
    assert in_warehouse[(namespace, "k0")].version == committed[-1].version
    await warehouse.close()


async def test_background_export_retries_until_the_sink_returns(
    store: PgvectorTier, s3: S3Server, tmp_path: Path, namespace: str
) -> None:
    exporter, objects, warehouse = await exporter_for(store, s3, tmp_path)
    s3.server.stop()
    exporter.start()
    await store.commit([record(namespace, f"k{i}") for i in range(10)])
    exporter.poke()
    for _ in range(200):
        if exporter.failures >= 2:
            break
        await asyncio.sleep(0.02)
    assert exporter.failures >= 2

    s3.server.start()
    for _ in range(500):
        if await exporter.pending() == 0:
            break
        await asyncio.sleep(0.02)
    await exporter.stop()

    assert await exporter.pending() == 0
    assert await archived_keys(objects, namespace) == sorted(f"k{i}" for i in range(10))
    await warehouse.close()


async def test_a_delete_is_exported_as_a_tombstone(
    store: PgvectorTier, s3: S3Server, tmp_path: Path, namespace: str
) -> None:
    exporter, objects, warehouse = await exporter_for(store, s3, tmp_path)
    await store.commit([record(namespace, "gone")])
    await store.delete_many([(namespace, "gone")])

    await exporter.drain()

    archived = await objects.get_many([(namespace, "gone")])
    assert archived[(namespace, "gone")].deleted
    await warehouse.close()
