"""T2 against a real Redis-protocol server (system redis-server or valkey)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from memory_tiers.base import Record, Tier, TierError
from memory_tiers.embedded_servers import EmbeddedRedis, redis_binary, start_redis
from memory_tiers.redis_cache import (
    RedisTier,
    redact_url,
    redis_key,
)

from .conftest import MakeRecord


@pytest.fixture
async def tier(redis_server: EmbeddedRedis) -> AsyncIterator[RedisTier]:
    tier = RedisTier(redis_server.url, ttl_s=60.0)
    yield tier
    await tier.close()


@pytest.fixture
async def raw(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def test_redis_tier_implements_the_whole_interface() -> None:
    assert not RedisTier.__abstractmethods__
    for name in Tier.__abstractmethods__:
        assert inspect.iscoroutinefunction(getattr(RedisTier, name)), name
    assert RedisTier.name == "redis"


async def test_put_get_delete(
    tier: RedisTier, ns: str, make_record: MakeRecord
) -> None:
    records = [
        make_record(ns, f"k{i}", seed=i, text="t", metadata={"i": i}) for i in range(5)
    ]

    await tier.put_many(records)
    found = await tier.get_many([r.ref for r in records] + [(ns, "missing")])

    assert set(found) == {r.ref for r in records}
    for record in records:
        got = found[record.ref]
        np.testing.assert_array_equal(got.vector, record.vector)
        assert (got.version, got.text, got.metadata) == (1, "t", record.metadata)

    await tier.delete_many([records[0].ref, (ns, "never-there")])
    assert records[0].ref not in await tier.get_many([records[0].ref])


async def test_big_batch_spans_several_mgets(
    tier: RedisTier, ns: str, make_record: MakeRecord
) -> None:
    records = [make_record(ns, f"k{i}", seed=i, dim=4) for i in range(2500)]
    await tier.put_many(records)

    refs = [r.ref for r in records]
    found = await tier.get_many(refs + refs[:10])

    assert len(found) == 2500
    np.testing.assert_array_equal(found[(ns, "k2499")].vector, records[2499].vector)


async def test_colons_in_names_do_not_collide(
    tier: RedisTier, make_record: MakeRecord
) -> None:
    left = make_record("a:b", "c", seed=1)
    right = make_record("a", "b:c", seed=2)

    await tier.put_many([left, right])
    found = await tier.get_many([left.ref, right.ref])

    assert redis_key(left.ref) != redis_key(right.ref)
    np.testing.assert_array_equal(found[left.ref].vector, left.vector)
    np.testing.assert_array_equal(found[right.ref].vector, right.vector)
    await tier.delete_many([left.ref, right.ref])


async def test_an_older_version_never_overwrites_a_newer_one(
    tier: RedisTier, ns: str, make_record: MakeRecord
) -> None:
    ref = (ns, "k")
    await tier.put_many([make_record(ns, "k", version=5, seed=5)])
    await tier.put_many([make_record(ns, "k", version=3, seed=3)])
    assert (await tier.get_many([ref]))[ref].version == 5

    big = 2**53 + 2  # above what Lua's doubles hold exactly
    await tier.put_many([make_record(ns, "k", version=big, seed=1)])
    await tier.put_many([make_record(ns, "k", version=big - 1, seed=2)])
    assert (await tier.get_many([ref]))[ref].version == big

    tombstone = Record(ns, "k", np.zeros(0, np.float32), version=big + 1, deleted=True)
    await tier.put_many([tombstone])
    held = (await tier.get_many([ref]))[ref]
    assert held.deleted and held.version == big + 1


async def test_negative_and_positive_versions_order(
    tier: RedisTier, ns: str, make_record: MakeRecord
) -> None:
    await tier.put_many([make_record(ns, "k", version=-1)])
    await tier.put_many([make_record(ns, "k", version=1)])
    await tier.put_many([make_record(ns, "k", version=-7)])

    assert (await tier.get_many([(ns, "k")]))[(ns, "k")].version == 1


async def test_ttl_per_namespace(
    redis_server: EmbeddedRedis, raw: aioredis.Redis, make_record: MakeRecord
) -> None:
    tier = RedisTier(
        redis_server.url,
        ttl_s=100.0,
        namespace_ttl_s={"pinned": None, "emb:*": 10.0, "emb:long*": 1000.0},
    )
    records = [
        make_record("plain", "k"),
        make_record("pinned", "k"),
        make_record("emb:abc", "k"),
        make_record("emb:longer", "k"),
    ]
    await tier.put_many(records)

    ttls = [await raw.pttl(redis_key(r.ref)) for r in records]

    assert 90_000 < ttls[0] <= 100_000
    assert ttls[1] == -1
    assert 0 < ttls[2] <= 10_000
    assert 900_000 < ttls[3] <= 1_000_000
    await tier.delete_many([r.ref for r in records])
    await tier.close()


def test_non_positive_ttls_are_refused() -> None:
    with pytest.raises(ValueError, match="ttl_s=0"):
        RedisTier("redis://localhost", ttl_s=0)
    with pytest.raises(ValueError, match="emb:\\*=-1"):
        RedisTier("redis://localhost", namespace_ttl_s={"emb:*": -1})


async def test_expired_records_are_misses(
    redis_server: EmbeddedRedis, ns: str, make_record: MakeRecord
) -> None:
    tier = RedisTier(redis_server.url, ttl_s=0.05)
    await tier.put_many([make_record(ns, "k")])

    await asyncio.sleep(0.2)

    assert await tier.get_many([(ns, "k")]) == {}
    await tier.close()


async def test_unreadable_value_is_a_miss(
    tier: RedisTier, raw: aioredis.Redis, ns: str
) -> None:
    await raw.set(redis_key((ns, "junk")), b"not a record")

    assert await tier.get_many([(ns, "junk")]) == {}


async def test_script_cache_flush_is_survived(
    tier: RedisTier, raw: aioredis.Redis, ns: str, make_record: MakeRecord
) -> None:
    await tier.put_many([make_record(ns, "a")])
    await raw.script_flush()

    await tier.put_many([make_record(ns, "b")])

    assert set(await tier.get_many([(ns, "a"), (ns, "b")])) == {(ns, "a"), (ns, "b")}


async def test_stats_report_memory_and_capacity(
    tier: RedisTier, raw: aioredis.Redis, ns: str, make_record: MakeRecord
) -> None:
    await tier.put_many([make_record(ns, "k")])
    stats = await tier.stats()
    assert stats.healthy and stats.items >= 1 and stats.used_bytes > 0
    assert stats.capacity_bytes is None

    await raw.config_set("maxmemory", str(512 * 2**20))
    try:
        assert (await tier.stats()).capacity_bytes == 512 * 2**20
    finally:
        await raw.config_set("maxmemory", "0")


async def test_repr_redacts_password() -> None:
    tier = RedisTier("redis://user:s3cret@cache.internal:6380/2")

    assert "s3cret" not in repr(tier)
    assert "user:***@cache.internal:6380" in repr(tier)
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"
    await tier.close()


async def test_stopped_server_raises_tier_error(
    tmp_path: Path, ns: str, make_record: MakeRecord
) -> None:
    server = start_redis(tmp_path / "redis")
    tier = RedisTier(server.url, retries=0)
    await tier.put_many([make_record(ns, "k")])

    server.stop()

    for call in (
        tier.get_many([(ns, "k")]),
        tier.put_many([make_record(ns, "k", version=2)]),
        tier.delete_many([(ns, "k")]),
    ):
        with pytest.raises(TierError) as raised:
            await call
        assert raised.value.tier == "redis"
    assert not (await tier.stats()).healthy
    await tier.close()


def test_system_redis_server_is_preferred(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    bundled = redis_binary()
    assert Path(bundled).name == "valkey-server"

    # A redis-server on PATH (here the same binary under that name) wins.
    (tmp_path / "redis-server").symlink_to(bundled)
    assert redis_binary() == str(tmp_path / "redis-server")
    with start_redis(tmp_path / "data") as server:
        assert server.binary == str(tmp_path / "redis-server")
        assert "redis-server" in repr(server)
