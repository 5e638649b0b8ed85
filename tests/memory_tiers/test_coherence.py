"""Coherence between replicas, one process playing both sides."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kernels import host_kernels
from memory_tiers.admission import AdmitAll
from memory_tiers.coherence import Coherence
from memory_tiers.embedded_servers import start_redis
from memory_tiers.invalidations import Invalidation, InvalidationStream
from memory_tiers.resident import ResidentTier
from memory_tiers.retry import Backoff
from tests.memory_tiers.records import record


def host() -> ResidentTier:
    return ResidentTier("host", host_kernels(), 2**22, [8], AdmitAll())


async def test_everything_changed_drops_authoritative_rows_but_keeps_derived(
    tmp_path: Path,
) -> None:
    tier = host()
    await tier.put_many([record("docs", "a"), record("emb:fp", "h")])
    assert await tier.hold_namespace("docs", [record("docs", "a")])
    with start_redis(tmp_path / "redis") as server:
        coherence = Coherence(InvalidationStream(server.url), [tier], "me")

        await coherence.apply(Invalidation("other", [], everything=True))
        await coherence.stop()

    assert await tier.get_many([("docs", "a")]) == {}
    assert ("emb:fp", "h") in await tier.get_many([("emb:fp", "h")])
    assert not tier.can_search("docs")


async def test_an_announcement_redis_missed_is_published_once_it_returns(
    tmp_path: Path,
) -> None:
    server = start_redis(tmp_path / "redis")
    port = server.port
    server.stop()
    writer = Coherence(InvalidationStream(server.url), [host()], "writer")
    # The first retry comes 1.5-3 s after the failure: time for the reader
    # below to subscribe first, so it can only hear of the write by the retry.
    writer.backoff = Backoff(base_s=3.0, max_s=3.0)
    await writer.start()

    await writer.announce([record("docs", "k", version=42)])
    await asyncio.sleep(0.3)  # its first retry fails too, then it backs off
    server = start_redis(tmp_path / "redis", port=port)
    reader_tier = host()
    await reader_tier.put_many([record("docs", "k", version=41)])
    reader = Coherence(InvalidationStream(server.url), [reader_tier], "reader")
    await reader.start()
    try:
        for _ in range(200):
            if reader.received:
                break
            await asyncio.sleep(0.05)
    finally:
        await writer.stop()
        await reader.stop()
        server.stop()

    assert reader.received == 1
    assert await reader_tier.get_many([("docs", "k")]) == {}
    assert reader.fresh([record("docs", "k", version=41)]) == []
