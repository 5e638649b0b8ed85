"""The hierarchy over real tiers: walk, promote, write through, degrade."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from kernels import host_kernels
from memory_tiers.admission import AdmitAll, SeenTwice
from memory_tiers.base import Record, RecordKey, TierError, TierStats
from memory_tiers.hierarchy import TierHierarchy, Trace
from memory_tiers.pgvector_store import PgvectorTier
from memory_tiers.resident import ResidentTier
from tests.memory_tiers.records import record

MiB = 2**20


class BrokenTier(ResidentTier):
    """A cache tier whose every call fails, as a crashed cache server would."""

    async def get_many(self, refs: Sequence[RecordKey]) -> dict[RecordKey, Record]:
        raise TierError(self.name, "connection refused")

    async def put_many(self, records: Sequence[Record]) -> None:
        raise TierError(self.name, "connection refused")

    async def stats(self) -> TierStats:
        raise TierError(self.name, "connection refused")


@pytest.fixture
async def store(postgres_dsn: str) -> AsyncIterator[PgvectorTier]:
    tier = await PgvectorTier.connect(postgres_dsn, max_size=4)
    yield tier
    await tier.close()


def tiers(store: PgvectorTier) -> tuple[ResidentTier, ResidentTier, TierHierarchy]:
    hbm = ResidentTier("hbm", host_kernels(), 4 * MiB, [8], SeenTwice(60))
    host = ResidentTier("host", host_kernels(), 4 * MiB, [8], AdmitAll())
    return hbm, host, TierHierarchy([hbm, host, store], store)


async def test_reads_walk_down_and_promote_under_admission(
    store: PgvectorTier, namespace: str
) -> None:
    _, _, hierarchy = tiers(store)
    await store.commit([record(namespace, "a")])
    ref = (namespace, "a")

    first = await hierarchy.get_many([ref], Trace())
    second = await hierarchy.get_many([ref], Trace())
    third = await hierarchy.get_many([ref], Trace())

    assert first.tiers[ref] == "pgvector"  # T1 admits this hit at once
    assert second.tiers[ref] == "host"  # the second sighting admits it into T0
    assert third.tiers[ref] == "hbm"


async def test_each_tier_is_asked_only_for_what_is_still_missing(
    store: PgvectorTier, namespace: str
) -> None:
    _, host, hierarchy = tiers(store)
    committed = await store.commit([record(namespace, k) for k in "abc"])
    await host.put_many(committed[:1])
    trace = Trace()

    result = await hierarchy.get_many([(namespace, k) for k in "abcd"], trace)

    assert result.tiers == {
        (namespace, "a"): "host",
        (namespace, "b"): "pgvector",
        (namespace, "c"): "pgvector",
    }
    assert hierarchy.health["pgvector"].misses == 1  # only "d" missed everywhere
    assert set(trace.timings_ms) == {"hbm", "host", "pgvector"}


async def test_write_is_committed_then_cached(
    store: PgvectorTier, namespace: str
) -> None:
    _, host, hierarchy = tiers(store)

    committed = await hierarchy.write([record(namespace, "a")], Trace())

    assert (await store.get_many([(namespace, "a")]))[
        (namespace, "a")
    ].version == committed[0].version
    assert (namespace, "a") in await host.get_many([(namespace, "a")])


async def test_delete_removes_the_key_from_every_tier(
    store: PgvectorTier, namespace: str
) -> None:
    _, host, hierarchy = tiers(store)
    await hierarchy.write([record(namespace, "a")], Trace())

    await hierarchy.delete([(namespace, "a")], Trace())

    assert (await hierarchy.get_many([(namespace, "a")], Trace())).records == {}
    assert await host.get_many([(namespace, "a")]) == {}


async def test_a_failing_cache_tier_costs_speed_not_correctness(
    store: PgvectorTier, namespace: str
) -> None:
    broken = BrokenTier("host", host_kernels(), MiB, [8], AdmitAll())
    hierarchy = TierHierarchy([broken, store], store)

    committed = await hierarchy.write([record(namespace, "a")], Trace())
    result = await hierarchy.get_many([(namespace, "a")], Trace())

    assert result.records[(namespace, "a")].version == committed[0].version
    assert result.tiers[(namespace, "a")] == "pgvector"
    stats = {s["name"]: s for s in await hierarchy.stats()}
    assert stats["host"]["healthy"] is False
    assert stats["host"]["errors"] == 1  # the write failed and opened the breaker
    assert stats["host"]["skipped_while_failing"] >= 1  # the read went around


async def test_a_failing_store_fails_the_write(
    postgres_dsn: str, namespace: str
) -> None:
    store = await PgvectorTier.connect(postgres_dsn, max_size=1)
    hierarchy = TierHierarchy([store], store)
    await store.close()

    with pytest.raises(TierError):
        await hierarchy.write([record(namespace, "a")], Trace())


class FlakyTier(ResidentTier):
    """A cache tier that fails while `down` is set, then recovers."""

    down = True

    async def get_many(self, refs: Sequence[RecordKey]) -> dict[RecordKey, Record]:
        if self.down:
            raise TierError(self.name, "connection refused")
        return await super().get_many(refs)


async def test_the_breaker_probes_again_and_closes_once_the_tier_is_back(
    store: PgvectorTier, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("memory_tiers.hierarchy.BREAKER_BASE_S", 0.05)
    flaky = FlakyTier("host", host_kernels(), MiB, [8], AdmitAll())
    hierarchy = TierHierarchy([flaky, store], store)
    await store.commit([record(namespace, "a")])
    ref = (namespace, "a")

    await hierarchy.get_many([ref], Trace())  # fails: the breaker opens
    await hierarchy.get_many([ref], Trace())  # not asked while open
    flaky.down = False
    await asyncio.sleep(0.1)
    await hierarchy.get_many([ref], Trace())  # the probe succeeds
    served = await hierarchy.get_many([ref], Trace())

    health = hierarchy.health["host"]
    assert health.errors == 1
    assert health.skipped >= 1
    assert health.healthy
    assert served.tiers == {ref: "host"}


class PartitionedTier(ResidentTier):
    """A cache tier cut off from writes while `writes_down` is set; it keeps
    whatever it held, as a Redis behind a network partition would."""

    writes_down = False

    async def put_many(self, records: Sequence[Record]) -> None:
        if self.writes_down:
            raise TierError(self.name, "connection reset")
        await super().put_many(records)


async def test_a_write_a_cache_missed_is_never_contradicted_by_its_old_copy(
    store: PgvectorTier, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No breaker pause: the cut-off cache is read at once, stale copy and all.
    monkeypatch.setattr("memory_tiers.hierarchy.BREAKER_BASE_S", 0.0)
    cache = PartitionedTier("host", host_kernels(), MiB, [8], AdmitAll())
    hierarchy = TierHierarchy([cache, store], store)
    ref = (namespace, "a")
    await hierarchy.write([record(namespace, "a", seed=1)], Trace())

    cache.writes_down = True
    newer = await hierarchy.write([record(namespace, "a", seed=2)], Trace())
    still_cut = await hierarchy.get_many([ref], Trace())
    cache.writes_down = False
    healed = await hierarchy.get_many([ref], Trace())

    assert still_cut.tiers == {ref: "pgvector"}  # the stale copy was not trusted
    assert still_cut.records[ref].version == newer[0].version
    assert healed.tiers == {ref: "host"}  # the missed write was replayed
    assert healed.records[ref].version == newer[0].version
