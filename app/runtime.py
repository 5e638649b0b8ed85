"""Builds the running system from settings: stores, tiers, encoder, service."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from app.inference.batcher import MicroBatcher
from app.inference.encoder import Encoder, bundled_model_dir
from app.service import TiermemService
from app.settings import Settings
from kernels import device_kernels, host_kernels
from memory_tiers.admission import AdmitAll, SeenTwice
from memory_tiers.base import Tier
from memory_tiers.embedded import EmbeddedPostgres
from memory_tiers.hierarchy import TierHierarchy
from memory_tiers.pgvector_store import PgvectorTier
from memory_tiers.resident import ResidentTier
from memory_tiers.write_behind import WriteBehind

logger = logging.getLogger(__name__)


def resident_tiers(settings: Settings) -> list[ResidentTier]:
    """T0 on the device kernels with seen-twice admission, T1 on the host."""
    hbm = ResidentTier(
        "hbm",
        device_kernels(),
        settings.hbm_bytes,
        settings.resident_dims,
        SeenTwice(settings.admission_window_s),
        settings.hbm_pinned_namespaces,
    )
    host = ResidentTier(
        "host", host_kernels(), settings.host_bytes, settings.resident_dims, AdmitAll()
    )
    return [hbm, host]


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[TiermemService]:
    """Start every part in order; stop them in reverse on exit."""
    async with contextlib.AsyncExitStack() as stack:
        dsn = _postgres_dsn(settings, stack)
        store = await PgvectorTier.connect(
            dsn, settings.postgres_pool_max, settings.hnsw_ef_search
        )
        encoder = Encoder(
            settings.model_name, bundled_model_dir(), settings.max_seq_tokens
        )
        resident = resident_tiers(settings)
        tiers: list[Tier] = [*resident, store]
        hierarchy = TierHierarchy(tiers, store)
        stack.push_async_callback(hierarchy.close)

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
        stack.push_async_callback(service.settle)
        logger.info("tiermem ready: tiers %s", ", ".join(t.name for t in tiers))
        yield service


def _postgres_dsn(settings: Settings, stack: contextlib.AsyncExitStack) -> str:
    if settings.postgres_dsn is not None:
        return settings.postgres_dsn.get_secret_value()
    embedded = EmbeddedPostgres(settings.data_dir)
    stack.callback(embedded.stop)
    return embedded.dsn
