"""T3: PostgreSQL + pgvector, the system of record.

Every authoritative write commits here first, in one transaction that also
appends an outbox row per record for the export to the lower tiers. Versions
come from one sequence, so they grow across keys, namespaces and replicas.
Dimensions are fixed per namespace; each dimension in use gets a partial HNSW
index over `embedding::vector(dim)` with cosine distance.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import numpy as np
import orjson
from pgvector.asyncpg import register_vector

from memory_tiers.base import Record, RecordKey, Tier, TierError, TierStats

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE SEQUENCE IF NOT EXISTS tiermem_version_seq;
CREATE TABLE IF NOT EXISTS tiermem_namespaces (
    namespace text PRIMARY KEY,
    dim integer NOT NULL CHECK (dim > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS tiermem_records (
    namespace text NOT NULL,
    key text NOT NULL,
    dim integer NOT NULL,
    embedding vector,
    text text,
    metadata jsonb,
    version bigint NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, key)
);
CREATE TABLE IF NOT EXISTS tiermem_outbox (
    id bigserial PRIMARY KEY,
    namespace text NOT NULL,
    key text NOT NULL,
    version bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

# Serialises schema changes between replicas starting at the same time.
SCHEMA_LOCK_ID = 0x7469_6572_6D65_6D
_EMPTY = np.zeros(0, np.float32)

COLUMNS = (
    "namespace, key, embedding, text, metadata, version, deleted,"
    " extract(epoch from updated_at) AS updated_at"
)

UPSERT = """
INSERT INTO tiermem_records
    (namespace, key, dim, embedding, text, metadata, version, deleted, updated_at)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, to_timestamp($9))
ON CONFLICT (namespace, key) DO UPDATE SET
    dim = EXCLUDED.dim, embedding = EXCLUDED.embedding, text = EXCLUDED.text,
    metadata = EXCLUDED.metadata, version = EXCLUDED.version,
    deleted = EXCLUDED.deleted, updated_at = EXCLUDED.updated_at
WHERE tiermem_records.version < EXCLUDED.version
"""


class DimensionMismatch(ValueError):
    """A vector's dimension differs from the one fixed for its namespace."""

    def __init__(self, namespace: str, expected: int, got: int) -> None:
        super().__init__(
            f"namespace {namespace!r} holds {expected}-dimensional vectors, got {got}"
        )
        self.namespace = namespace
        self.expected = expected
        self.got = got


@dataclass(slots=True)
class SearchHit:
    score: float
    record: Record


class PgvectorTier(Tier):
    """Records in PostgreSQL; HNSW search; versions and the outbox."""

    name = "pgvector"
    authoritative = True

    def __init__(self, pool: asyncpg.Pool, ef_search: int = 100) -> None:
        self.pool = pool
        self.ef_search = ef_search
        self.dims: dict[str, int] = {}
        self.indexed_dims: set[int] = set()

    @classmethod
    async def connect(
        cls, dsn: str, max_size: int = 8, ef_search: int = 100
    ) -> PgvectorTier:
        """Open a pool and create the schema if needed.

        Raises TierError when the server cannot be reached.
        """
        try:
            await _create_schema(dsn)
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=max_size, init=register_vector
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise TierError("pgvector", f"cannot connect: {exc}") from exc
        tier = cls(pool, ef_search)
        await tier._load_dims()
        return tier

    # -- the tier interface -------------------------------------------------

    async def get_many(self, refs: Sequence[RecordKey]) -> dict[RecordKey, Record]:
        if not refs:
            return {}
        sql = (
            f"SELECT {COLUMNS} FROM tiermem_records r"
            " JOIN unnest($1::text[], $2::text[]) AS q(ns, k)"
            " ON r.namespace = q.ns AND r.key = q.k"
        )
        rows = await self._fetch(sql, [ns for ns, _ in refs], [k for _, k in refs])
        return {(row["namespace"], row["key"]): _record(row) for row in rows}

    async def put_many(self, records: Sequence[Record]) -> None:
        """Store records with the versions they carry (derived-cache flushes)."""
        if not records:
            return
        await self._ensure_dims(records)
        async with self._connection() as conn:
            await conn.executemany(UPSERT, [_params(r) for r in records])

    async def delete_many(self, refs: Sequence[RecordKey]) -> None:
        await self.commit([_tombstone(ns, key) for ns, key in refs])

    async def stats(self) -> TierStats:
        sql = (
            "SELECT pg_total_relation_size('tiermem_records') AS bytes,"
            " (SELECT count(*) FROM tiermem_records WHERE NOT deleted) AS items"
        )
        rows = await self._fetch(sql)
        return TierStats(
            name=self.name,
            used_bytes=int(rows[0]["bytes"]),
            items=int(rows[0]["items"]),
            detail={"hnsw_dims": sorted(self.indexed_dims)},
        )

    async def close(self) -> None:
        await self.pool.close()

    # -- system of record ---------------------------------------------------

    async def commit(self, records: Sequence[Record]) -> list[Record]:
        """Write authoritative records in one transaction, with outbox rows.

        Returns the records with the versions this commit assigned. Raises
        DimensionMismatch before writing anything if a dim is wrong.
        """
        if not records:
            return []
        await self._ensure_dims(records)
        async with self._connection() as conn, conn.transaction():
            versions = await conn.fetch(
                "SELECT nextval('tiermem_version_seq') AS v"
                " FROM generate_series(1, $1)",
                len(records),
            )
            stamped = [
                replace(r, version=int(row["v"]))
                for r, row in zip(records, versions, strict=True)
            ]
            await conn.executemany(UPSERT, [_params(r) for r in stamped])
            await conn.executemany(
                "INSERT INTO tiermem_outbox (namespace, key, version)"
                " VALUES ($1, $2, $3)",
                [(r.namespace, r.key, r.version) for r in stamped],
            )
        return stamped

    async def namespace_dim(self, namespace: str) -> int | None:
        return self.dims.get(namespace)

    async def count(self, namespace: str) -> int:
        rows = await self._fetch(
            "SELECT count(*) AS n FROM tiermem_records"
            " WHERE namespace = $1 AND NOT deleted",
            namespace,
        )
        return int(rows[0]["n"])

    async def load_namespace(self, namespace: str, limit: int) -> list[Record] | None:
        """Every live record of a namespace, or None if it has more than limit."""
        rows = await self._fetch(
            f"SELECT {COLUMNS} FROM tiermem_records"
            " WHERE namespace = $1 AND NOT deleted LIMIT $2",
            namespace,
            limit + 1,
        )
        if len(rows) > limit:
            return None
        return [_record(row) for row in rows]

    async def search(
        self,
        namespace: str,
        query: np.ndarray,
        k: int,
        metadata_filter: dict[str, Any] | None = None,
    ) -> list[SearchHit]:
        """Approximate cosine top-k through the namespace dimension's HNSW index."""
        dim = self.dims.get(namespace)
        if dim is None:
            return []
        where = "namespace = $2 AND dim = $3 AND NOT deleted"
        args: list[Any] = [np.asarray(query, np.float32), namespace, dim, k]
        if metadata_filter:
            where += " AND metadata @> $5::jsonb"
            args.append(orjson.dumps(metadata_filter).decode())
        # dim is an int from our own table, safe to inline; the index matches
        # only an expression spelled exactly like its own.
        distance = f"embedding::vector({dim}) <=> $1::vector({dim})"
        sql = (
            f"SELECT {COLUMNS}, 1 - ({distance}) AS score FROM tiermem_records"
            f" WHERE {where} ORDER BY {distance} LIMIT $4"
        )
        async with self._connection() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL hnsw.ef_search = {int(self.ef_search)}")
            await conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            rows = await conn.fetch(sql, *args)
        hits = [SearchHit(float(row["score"]), _record(row)) for row in rows]
        # relaxed_order may return slightly out of order: restore it.
        return sorted(hits, key=lambda h: -h.score)

    async def ping(self) -> bool:
        try:
            await self._fetch("SELECT 1")
        except TierError:
            return False
        return True

    # -- internals ----------------------------------------------------------

    async def _load_dims(self) -> None:
        rows = await self._fetch("SELECT namespace, dim FROM tiermem_namespaces")
        self.dims = {row["namespace"]: row["dim"] for row in rows}
        for dim in set(self.dims.values()):
            await self._ensure_index(dim)

    async def _ensure_dims(self, records: Sequence[Record]) -> None:
        for record in records:
            if record.deleted:
                continue
            expected = self.dims.get(record.namespace)
            if expected is None:
                expected = await self._register(record.namespace, record.dim)
            if expected != record.dim:
                raise DimensionMismatch(record.namespace, expected, record.dim)

    async def _register(self, namespace: str, dim: int) -> int:
        rows = await self._fetch(
            "INSERT INTO tiermem_namespaces (namespace, dim) VALUES ($1, $2)"
            " ON CONFLICT (namespace) DO UPDATE SET namespace = EXCLUDED.namespace"
            " RETURNING dim",
            namespace,
            dim,
        )
        fixed = int(rows[0]["dim"])
        self.dims[namespace] = fixed
        await self._ensure_index(fixed)
        return fixed

    async def _ensure_index(self, dim: int) -> None:
        if dim in self.indexed_dims:
            return
        sql = (
            f"CREATE INDEX IF NOT EXISTS tiermem_hnsw_{int(dim)} ON tiermem_records"
            f" USING hnsw ((embedding::vector({int(dim)})) vector_cosine_ops)"
            f" WHERE dim = {int(dim)} AND NOT deleted"
        )
        async with self._connection() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", SCHEMA_LOCK_ID)
            try:
                await conn.execute(sql)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", SCHEMA_LOCK_ID)
        self.indexed_dims.add(dim)

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._connection() as conn:
            return list(await conn.fetch(sql, *args))

    def _connection(self) -> _Guarded:
        return _Guarded(self.pool)


class _Guarded:
    """A pooled connection whose driver errors surface as TierError."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.acquire: Any = None

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            self.acquire = self.pool.acquire()
            return await self.acquire.__aenter__()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise TierError("pgvector", str(exc)) from exc

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self.acquire.__aexit__(exc_type, exc, tb)
        if isinstance(exc, (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            raise TierError("pgvector", str(exc)) from exc


async def _create_schema(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", SCHEMA_LOCK_ID)
        await conn.execute(SCHEMA)
        await conn.execute("SELECT pg_advisory_unlock($1)", SCHEMA_LOCK_ID)
    finally:
        await conn.close()


def _record(row: asyncpg.Record) -> Record:
    embedding = row["embedding"]
    metadata = row["metadata"]
    return Record(
        namespace=row["namespace"],
        key=row["key"],
        vector=_EMPTY if embedding is None else embedding.to_numpy().astype(np.float32),
        version=int(row["version"]),
        text=row["text"],
        metadata=orjson.loads(metadata) if metadata is not None else None,
        deleted=bool(row["deleted"]),
        updated_at=float(row["updated_at"]),
    )


def _params(record: Record) -> tuple[Any, ...]:
    metadata = (
        None if record.metadata is None else orjson.dumps(record.metadata).decode()
    )
    return (
        record.namespace,
        record.key,
        0 if record.deleted else record.dim,
        None if record.deleted else np.asarray(record.vector, np.float32),
        record.text,
        metadata,
        record.version,
        record.deleted,
        record.updated_at,
    )


def _tombstone(namespace: str, key: str) -> Record:
    return Record(namespace, key, np.zeros(0, np.float32), version=0, deleted=True)
