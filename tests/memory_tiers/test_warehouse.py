"""T4 on embedded DuckDB and on Snowflake's code path through fakesnow."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memory_tiers import warehouse
from memory_tiers.base import Record, Tier, TierError
from memory_tiers.warehouse import SnowflakeSettings, WarehouseTier

from .conftest import MakeRecord

# fakesnow reads DuckDB results through a DB-API call that duckdb 2.0 warns
# about; the warehouse's own DuckDB path does not, so only this module needs it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Arrow output on a DB-API result:UserWarning"
)

NASTY_KEYS = [
    "it's",
    "'; DROP TABLE tiermem_vectors; --",
    'double "quoted"',
    "question?mark",
    "%s %(x)s {0}",
    "back\\slash",
    "юникод ✓",
    "",
]

SETTINGS = SnowflakeSettings(
    account="acct",
    user="svc",
    password="pw-secret",
    database="tiermem_db",
    schema="tiermem",
)


@dataclass
class Backend:
    """One backend under test: the tier, and SQL run beside it."""

    kind: str
    tier: WarehouseTier
    path: Path | None

    def sql(self, statements: list[tuple[str, list[Any]]]) -> None:
        conn = self._connect()
        try:
            for sql, params in statements:
                cursor = conn.cursor()
                cursor.execute(sql, params or None)
                cursor.close()
        finally:
            conn.close()

    def _connect(self) -> Any:
        if self.kind == "duckdb":
            import duckdb

            return duckdb.connect(str(self.path))
        import snowflake.connector

        return snowflake.connector.connect(**SETTINGS.connect_kwargs())


@pytest.fixture
def snowflake_fake() -> Iterator[None]:
    import fakesnow

    with fakesnow.patch():
        yield


@pytest.fixture(params=["duckdb", "snowflake"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Backend]:
    if request.param == "snowflake":
        request.getfixturevalue("snowflake_fake")
        tier = WarehouseTier.snowflake(SETTINGS)
        result = Backend("snowflake", tier, None)
    else:
        path = tmp_path / "wh" / "tiermem.duckdb"
        result = Backend("duckdb", WarehouseTier.duckdb(path), path)
    yield result
    await result.tier.close()


def test_warehouse_tier_implements_the_whole_interface() -> None:
    assert not WarehouseTier.__abstractmethods__
    for name in Tier.__abstractmethods__:
        assert inspect.iscoroutinefunction(getattr(WarehouseTier, name)), name
    assert WarehouseTier.name == "warehouse"


async def test_roundtrip_is_exact(backend: Backend, make_record: MakeRecord) -> None:
    records = [
        make_record("ns", "a", dim=384, text="hello", metadata={"tags": ["x"], "n": 1}),
        make_record("ns", "b", dim=3, seed=1),
        Record("ns", "gone", np.zeros(0, np.float32), version=4, deleted=True),
    ]

    await backend.tier.put_many(records)
    found = await backend.tier.get_many([r.ref for r in records] + [("ns", "nope")])

    assert set(found) == {r.ref for r in records}
    for record in records:
        got = found[record.ref]
        np.testing.assert_array_equal(got.vector, record.vector)
        assert got.vector.dtype == np.float32
        assert (got.version, got.deleted) == (record.version, record.deleted)
        assert (got.text, got.metadata) == (record.text, record.metadata)
        assert got.updated_at == pytest.approx(record.updated_at)


async def test_merge_keeps_one_row_and_the_higher_version(
    backend: Backend, make_record: MakeRecord
) -> None:
    tier = backend.tier
    await tier.put_many([make_record("ns", "k", version=2, seed=2)])
    await tier.put_many([make_record("ns", "k", version=1, seed=1)])
    assert (await tier.get_many([("ns", "k")]))[("ns", "k")].version == 2

    # A batch may repeat a ref; the highest version of it wins.
    await tier.put_many([make_record("ns", "k", version=v, seed=v) for v in (5, 9, 3)])
    held = (await tier.get_many([("ns", "k")]))[("ns", "k")]

    assert held.version == 9
    np.testing.assert_array_equal(held.vector, make_record("ns", "k", seed=9).vector)
    assert (await tier.stats()).items == 1


async def test_batched_lookups_across_chunks_and_namespaces(
    backend: Backend, make_record: MakeRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(warehouse, "_LOOKUP_CHUNK", 3)
    records = [make_record(f"ns{i % 2}", f"k{i}", seed=i) for i in range(11)]
    await backend.tier.put_many(records)

    refs = [r.ref for r in records] + [("ns0", "k1"), ("ns9", "k0")]
    found = await backend.tier.get_many(refs)

    assert set(found) == {r.ref for r in records}
    await backend.tier.delete_many([r.ref for r in records[:7]])
    assert set(await backend.tier.get_many(refs)) == {r.ref for r in records[7:]}


async def test_keys_with_sql_metacharacters_stay_data(
    backend: Backend, make_record: MakeRecord
) -> None:
    records = [make_record("ns'; --", key, seed=i) for i, key in enumerate(NASTY_KEYS)]

    await backend.tier.put_many(records)
    found = await backend.tier.get_many([r.ref for r in records])

    assert set(found) == {r.ref for r in records}
    await backend.tier.delete_many([records[1].ref])
    assert (await backend.tier.stats()).items == len(records) - 1


def source_setup(kind: str) -> tuple[list[tuple[str, list[Any]]], str]:
    """A source table (as Cortex output would be) and the query reading it."""
    rows = [("doc-1", [1.0, 2.0, 3.0], "one"), ("it's", [4.0, 5.0, 6.0], "quote")]
    if kind == "duckdb":
        create = "CREATE TABLE docs (id VARCHAR, emb FLOAT[3], body VARCHAR)"
        insert = "INSERT INTO docs VALUES (?, ?, ?)"
        statements = [(create, []), *[(insert, list(row)) for row in rows]]
        query = (
            "SELECT id AS key, emb AS vector, body AS text FROM docs "
            "WHERE id IN (SELECT unnest(?::JSON::VARCHAR[]))"
        )
        return statements, query
    create = "CREATE TABLE docs (id VARCHAR, emb ARRAY, body VARCHAR)"
    insert = "INSERT INTO docs SELECT ?, PARSE_JSON(?), ?"
    statements = [(create, [])]
    statements += [(insert, [key, str(vec), body]) for key, vec, body in rows]
    query = (
        "SELECT id AS key, emb AS vector, body AS text FROM docs WHERE id IN "
        "(SELECT value::VARCHAR FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?))))"
    )
    return statements, query


async def test_source_query_fills_keys_missing_from_the_table(
    backend: Backend, make_record: MakeRecord
) -> None:
    await backend.tier.get_many([("docs", "warm-up")])  # creates the schema
    statements, query = source_setup(backend.kind)
    backend.sql(statements)
    backend.tier.set_source_query(query, namespace="docs")
    written = make_record("docs", "doc-1", version=3, dim=3)
    await backend.tier.put_many([written])

    refs = [("docs", "doc-1"), ("docs", "it's"), ("docs", "absent"), ("other", "it's")]
    found = await backend.tier.get_many(refs)

    assert set(found) == {("docs", "doc-1"), ("docs", "it's")}
    np.testing.assert_array_equal(found[("docs", "doc-1")].vector, written.vector)
    sourced = found[("docs", "it's")]
    assert (sourced.version, sourced.text) == (0, "quote")
    np.testing.assert_array_equal(sourced.vector, [4.0, 5.0, 6.0])

    backend.tier.set_source_query(query)  # the default, for every namespace
    assert ("other", "it's") in await backend.tier.get_many([("other", "it's")])


async def test_broken_source_query_raises_tier_error(backend: Backend) -> None:
    backend.tier.set_source_query("SELECT * FROM no_such_table WHERE x = ?")

    with pytest.raises(TierError) as raised:
        await backend.tier.get_many([("ns", "k")])

    assert raised.value.tier == "warehouse"


def test_source_query_needs_exactly_one_placeholder(tmp_path: Path) -> None:
    tier = WarehouseTier.duckdb(tmp_path / "w.duckdb")

    for sql in ("SELECT 1", "SELECT ? , ?"):
        with pytest.raises(ValueError, match="exactly one"):
            tier.set_source_query(sql, "ns")
    with pytest.raises(ValueError, match="exactly one"):
        WarehouseTier.duckdb(tmp_path / "x.duckdb", source_queries={"ns": "SELECT 1"})


async def test_stats_and_close(backend: Backend, make_record: MakeRecord) -> None:
    await backend.tier.put_many([make_record("ns", f"k{i}") for i in range(3)])

    stats = await backend.tier.stats()
    assert stats.healthy and stats.items == 3 and stats.name == "warehouse"
    if backend.kind == "duckdb":
        assert stats.used_bytes > 0

    await backend.tier.close()
    with pytest.raises(TierError, match="closed"):
        await backend.tier.get_many([("ns", "k0")])


async def test_unusable_duckdb_file_raises_tier_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    tier = WarehouseTier.duckdb(blocker / "w.duckdb")

    with pytest.raises(TierError) as raised:
        await tier.put_many([Record("ns", "k", np.ones(2, np.float32), version=1)])

    assert raised.value.tier == "warehouse"
    assert not (await tier.stats()).healthy
    await tier.close()


def test_snowflake_settings_redact_and_bind_server_side() -> None:
    assert "pw-secret" not in repr(SETTINGS)
    assert "pw-secret" not in repr(WarehouseTier.snowflake(SETTINGS))
    kwargs = SETTINGS.connect_kwargs()
    assert kwargs["paramstyle"] == "qmark"
    assert "role" not in kwargs  # unset settings are not passed

    keyed = SnowflakeSettings(account="a", user="u", private_key_path="/k.p8")
    assert keyed.connect_kwargs()["private_key_file"] == "/k.p8"
    with pytest.raises(ValueError, match="password or private_key_path"):
        SnowflakeSettings(account="a", user="u")
