"""T5 on a local directory and on S3 (moto over HTTP)."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from memory_tiers.base import Record, Tier, TierError
from memory_tiers.object_store import ObjectTier, escape_segment, record_path
from tests.conftest import S3Server, start_s3

from .conftest import MakeRecord

ODD_KEYS = ["a/b", "..", ".", "", "~7E", "x y?z#", "ключ", "k" * 300]


@pytest.fixture(params=["local", "s3"])
async def tier(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ObjectTier]:
    if request.param == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")
        prefix = f"run-{uuid.uuid4().hex[:8]}"
        tier = ObjectTier(s3.url(prefix), options=s3.options, snapshot_part_records=10)
    else:
        url = f"file://{tmp_path}/objects"
        tier = ObjectTier(url, snapshot_part_records=10)
    yield tier
    await tier.close()


def twin(tier: ObjectTier) -> ObjectTier:
    """Another replica's view of the same store, re-listing on every call."""
    return ObjectTier(tier.url, options=tier.options, table_refresh_s=0.0)


def test_object_tier_implements_the_whole_interface() -> None:
    assert not ObjectTier.__abstractmethods__
    for name in Tier.__abstractmethods__:
        assert inspect.iscoroutinefunction(getattr(ObjectTier, name)), name
    assert ObjectTier.name == "object"


def test_escaped_segments_are_safe_and_distinct() -> None:
    escaped = [escape_segment(key) for key in [*ODD_KEYS, "a~2Fb", "~"]]

    assert len(set(escaped)) == len(escaped)
    for segment in escaped:
        assert segment and "/" not in segment and set(segment) - set("~") != {"."}
        assert len(segment) <= 200 + 2 + 64
    assert escape_segment("plain-Key_1") == "plain-Key_1"
    assert record_path(("n/s", "k")) == "records/n~2Fs/k.rec"


async def test_archive_roundtrip(tier: ObjectTier, make_record: MakeRecord) -> None:
    records = [
        make_record("ns", key, seed=i, dim=16, text="t", metadata={"i": i})
        for i, key in enumerate(ODD_KEYS)
    ]

    await tier.put_many(records)
    found = await tier.get_many([r.ref for r in records] + [("ns", "missing")])

    assert set(found) == {r.ref for r in records}
    for record in records:
        np.testing.assert_array_equal(found[record.ref].vector, record.vector)
        assert found[record.ref].metadata == record.metadata

    await tier.delete_many([records[0].ref, ("ns", "never-there")])
    assert records[0].ref not in await tier.get_many([records[0].ref])


async def test_snapshot_roundtrip_and_replace(
    tier: ObjectTier, make_record: MakeRecord
) -> None:
    records = [make_record("ns", f"k{i}", seed=i, dim=8) for i in range(25)]
    records.append(Record("ns", "gone", np.zeros(0, np.float32), 3, deleted=True))

    await tier.save_snapshot("warm", records)
    loaded = await tier.load_snapshot("warm")

    assert [r.ref for r in loaded] == [r.ref for r in records]
    np.testing.assert_array_equal(loaded[24].vector, records[24].vector)
    assert loaded[-1].deleted
    tables = await tier.load_snapshot_tables("warm")
    assert len(tables) == 3  # 10 records a part

    await tier.save_snapshot("warm", records[:4])
    assert [r.key for r in await tier.load_snapshot("warm")] == ["k0", "k1", "k2", "k3"]
    assert await tier.list_snapshots() == ["warm"]
    assert await tier.load_snapshot("never-saved") == []


async def test_empty_snapshot(tier: ObjectTier) -> None:
    await tier.save_snapshot("empty", [])

    assert await tier.load_snapshot("empty") == []


async def test_bulk_table_serves_keys_missing_from_the_archive(
    tier: ObjectTier, make_record: MakeRecord
) -> None:
    table_rows = [make_record("emb", f"k{i}", version=5, seed=i) for i in range(4)]
    await tier.put_table("emb", table_rows)
    await tier.put_many([make_record("emb", "k0", version=9, seed=90)])
    await tier.put_many([make_record("emb", "k1", version=2, seed=20)])

    refs = [r.ref for r in table_rows] + [("emb", "absent")]
    for view in (tier, twin(tier)):
        found = await view.get_many(refs)
        assert set(found) == {r.ref for r in table_rows}
        assert found[("emb", "k0")].version == 9  # the archive is newer
        assert found[("emb", "k1")].version == 5  # the table is newer
        np.testing.assert_array_equal(found[("emb", "k3")].vector, table_rows[3].vector)

    stats = await tier.stats()
    assert stats.healthy and stats.items >= 4


async def test_delete_hides_a_table_row_until_a_newer_write(
    tier: ObjectTier, make_record: MakeRecord
) -> None:
    await tier.put_table("emb", [make_record("emb", "k", version=5)])

    await tier.delete_many([("emb", "k")])
    held = (await twin(tier).get_many([("emb", "k")]))[("emb", "k")]
    assert held.deleted and held.version == 5

    await tier.put_many([make_record("emb", "k", version=6, seed=6)])
    held = (await tier.get_many([("emb", "k")]))[("emb", "k")]
    assert not held.deleted and held.version == 6


async def test_put_table_refuses_other_namespaces(
    tier: ObjectTier, make_record: MakeRecord
) -> None:
    with pytest.raises(ValueError, match="records: namespaces"):
        await tier.put_table("emb", [make_record("other", "k")])


async def test_corrupt_archived_record_is_a_miss(tmp_path: Path) -> None:
    tier = ObjectTier(f"file://{tmp_path}")
    path = tmp_path / record_path(("ns", "k"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")

    assert await tier.get_many([("ns", "k")]) == {}


def test_repr_redacts_secrets() -> None:
    tier = ObjectTier(
        "s3://bucket/p",
        options={
            "access_key_id": "AKIAEXAMPLE",
            "secret_access_key": "very-secret",
            "session_token": "tok-secret",
            "endpoint": "http://127.0.0.1:1",
        },
    )

    text = repr(tier)
    assert "very-secret" not in text and "tok-secret" not in text
    assert "AKIAEXAMPLE" in text


async def test_stopped_s3_raises_tier_error(make_record: MakeRecord) -> None:
    s3 = start_s3()
    tier = ObjectTier(s3.url("p"), options=s3.options, max_retries=0)
    await tier.put_many([make_record("ns", "k")])

    s3.server.stop()

    for call in (
        tier.get_many([("ns", "k")]),
        tier.put_many([make_record("ns", "k", version=2)]),
        tier.save_snapshot("s", [make_record("ns", "k")]),
        tier.load_snapshot("s"),
    ):
        with pytest.raises(TierError) as raised:
            await call
        assert raised.value.tier == "object"
    assert not (await tier.stats()).healthy
