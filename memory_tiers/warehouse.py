"""T4: the analytical warehouse, Snowflake in production and DuckDB embedded.

Both backends hold one table, tiermem_vectors, with one row per (namespace,
key): a MERGE keeps whichever version is higher, so re-exports and retries
never duplicate or regress a row. Vectors are an ARRAY of floats, which the
connector, Snowflake SQL and fakesnow all read (fakesnow has no VECTOR type).
Values only ever reach SQL as bound parameters (qmark style on both).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import orjson

from memory_tiers.base import (
    Record,
    RecordKey,
    Tier,
    TierError,
    TierStats,
    newest_per_ref,
)

logger = logging.getLogger(__name__)

TABLE = "tiermem_vectors"
_STAGE = "tiermem_stage"
_LOOKUP_CHUNK = 1000
_UPSERT_CHUNK = 10_000
_COLUMNS = "namespace, key, version, deleted, vector, text, metadata, updated_at"

# Shared by both backends; only the source relation `s` differs.
_MERGE = f"""
MERGE INTO {TABLE} t USING ({{source}}) s
ON t.namespace = s.namespace AND t.key = s.key
WHEN MATCHED AND s.version > t.version THEN UPDATE SET
  version = s.version, deleted = s.deleted, vector = s.vector, text = s.text,
  metadata = s.metadata, updated_at = s.updated_at
WHEN NOT MATCHED THEN INSERT ({_COLUMNS}) VALUES (
  s.namespace, s.key, s.version, s.deleted, s.vector, s.text, s.metadata,
  s.updated_at)
"""

T = TypeVar("T")
Connection = Any


class Backend(Protocol):
    """What differs between Snowflake and DuckDB: connecting, DDL, upserts."""

    name: str

    def connect(self) -> Connection: ...

    def create_schema(self, conn: Connection) -> None: ...

    def upsert(self, conn: Connection, records: Sequence[Record]) -> None: ...

    def is_disconnect(self, exc: BaseException) -> bool: ...

    def errors(self) -> tuple[type[BaseException], ...]: ...

    def used_bytes(self) -> int: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class SnowflakeSettings:
    """How to reach Snowflake; give a password or a private key file."""

    account: str
    user: str
    password: str | None = field(default=None, repr=False)
    private_key_path: str | None = None
    private_key_passphrase: str | None = field(default=None, repr=False)
    warehouse: str | None = None
    database: str | None = None
    schema: str | None = None
    role: str | None = None
    login_timeout_s: int = 30
    network_timeout_s: int = 60

    def __post_init__(self) -> None:
        if not self.password and not self.private_key_path:
            raise ValueError("snowflake: set password or private_key_path")

    def __repr__(self) -> str:
        secret = "***" if self.password else None
        return (
            f"SnowflakeSettings(account={self.account!r}, user={self.user!r}, "
            f"password={secret!r}, private_key_path={self.private_key_path!r}, "
            f"warehouse={self.warehouse!r}, database={self.database!r}, "
            f"schema={self.schema!r}, role={self.role!r})"
        )

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for snowflake.connector.connect."""
        optional = {
            "password": self.password,
            "private_key_file": self.private_key_path,
            "private_key_file_pwd": self.private_key_passphrase,
            "warehouse": self.warehouse,
            "database": self.database,
            "schema": self.schema,
            "role": self.role,
        }
        kwargs = {k: v for k, v in optional.items() if v is not None}
        return {
            "account": self.account,
            "user": self.user,
            "login_timeout": self.login_timeout_s,
            "network_timeout": self.network_timeout_s,
            # Server-side binding: values never pass through string formatting.
            "paramstyle": "qmark",
            "client_session_keep_alive": True,
            **kwargs,
        }


class SnowflakeBackend:
    """snowflake-connector-python; upserts go through a session temp table."""

    name = "snowflake"

    def __init__(self, settings: SnowflakeSettings) -> None:
        self.settings = settings

    def __repr__(self) -> str:
        return f"SnowflakeBackend({self.settings!r})"

    def connect(self) -> Connection:
        # Looked up at call time so that fakesnow.patch() can stand in for it.
        import snowflake.connector

        return snowflake.connector.connect(**self.settings.connect_kwargs())

    def create_schema(self, conn: Connection) -> None:
        _execute(
            conn,
            f"""CREATE TABLE IF NOT EXISTS {TABLE} (
              namespace VARCHAR NOT NULL, key VARCHAR NOT NULL,
              version NUMBER(19, 0) NOT NULL, deleted BOOLEAN NOT NULL,
              vector ARRAY, text VARCHAR, metadata VARIANT, updated_at DOUBLE)""",
        )
        # Snowflake restricts expressions in a VALUES list, so rows arrive as
        # plain text columns in a temp table and are parsed inside the MERGE.
        _execute(
            conn,
            f"""CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} (
              namespace VARCHAR, key VARCHAR, version NUMBER(19, 0),
              deleted BOOLEAN, vector_json VARCHAR, text VARCHAR,
              metadata_json VARCHAR, updated_at DOUBLE)""",
        )

    def upsert(self, conn: Connection, records: Sequence[Record]) -> None:
        rows = [
            (
                r.namespace,
                r.key,
                r.version,
                r.deleted,
                orjson.dumps(r.vector.tolist()).decode(),
                r.text,
                _metadata_json(r.metadata),
                r.updated_at,
            )
            for r in records
        ]
        source = f"""SELECT namespace, key, version, deleted,
          PARSE_JSON(vector_json) AS vector, text,
          PARSE_JSON(metadata_json) AS metadata, updated_at FROM {_STAGE}"""
        cursor = conn.cursor()
        try:
            cursor.execute(f"TRUNCATE TABLE {_STAGE}")
            cursor.executemany(
                f"INSERT INTO {_STAGE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
            cursor.execute(_MERGE.format(source=source))
        finally:
            cursor.close()

    def is_disconnect(self, exc: BaseException) -> bool:
        from snowflake.connector import errors

        # A ProgrammingError is the statement's fault; anything else may have
        # left the session unusable, so the next call reconnects.
        return isinstance(exc, errors.Error) and not isinstance(
            exc, errors.ProgrammingError
        )

    def errors(self) -> tuple[type[BaseException], ...]:
        from snowflake.connector import errors

        return (errors.Error,)

    def used_bytes(self) -> int:
        # TODO: read BYTES from INFORMATION_SCHEMA.TABLES; until then the
        # warehouse reports no storage use for Snowflake.
        return 0

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {"backend": self.name, "account": s.account, "database": s.database}


class DuckDBBackend:
    """An embedded DuckDB file; one process at a time may open it."""

    name = "duckdb"

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"DuckDBBackend(path={str(self.path)!r})"

    def connect(self) -> Connection:
        import duckdb

        self.path.parent.mkdir(parents=True, exist_ok=True)
        return duckdb.connect(str(self.path))

    def create_schema(self, conn: Connection) -> None:
        conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {TABLE} (
              namespace VARCHAR NOT NULL, key VARCHAR NOT NULL,
              version BIGINT NOT NULL, deleted BOOLEAN NOT NULL,
              vector FLOAT[], text VARCHAR, metadata JSON, updated_at DOUBLE,
              PRIMARY KEY (namespace, key))"""
        )

    def upsert(self, conn: Connection, records: Sequence[Record]) -> None:
        # One list per column, zipped back into rows by parallel unnest: one
        # statement and eight parameters whatever the batch size.
        source = """SELECT unnest(?::VARCHAR[]) AS namespace,
          unnest(?::VARCHAR[]) AS key, unnest(?::BIGINT[]) AS version,
          unnest(?::BOOLEAN[]) AS deleted, unnest(?::FLOAT[][]) AS vector,
          unnest(?::VARCHAR[]) AS text, unnest(?::VARCHAR[])::JSON AS metadata,
          unnest(?::DOUBLE[]) AS updated_at"""
        params = [
            [r.namespace for r in records],
            [r.key for r in records],
            [r.version for r in records],
            [r.deleted for r in records],
            [r.vector.tolist() for r in records],
            [r.text for r in records],
            [_metadata_json(r.metadata) for r in records],
            [r.updated_at for r in records],
        ]
        conn.execute(_MERGE.format(source=source), params)

    def is_disconnect(self, exc: BaseException) -> bool:
        import duckdb

        return isinstance(exc, duckdb.ConnectionException)

    def errors(self) -> tuple[type[BaseException], ...]:
        import duckdb

        return (duckdb.Error,)

    def used_bytes(self) -> int:
        wal = self.path.with_name(self.path.name + ".wal")
        return sum(p.stat().st_size for p in (self.path, wal) if p.exists())

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "path": str(self.path)}


class WarehouseTier(Tier):
    """Records in tiermem_vectors, falling back to per-namespace source queries.

    A source query is SQL with exactly one `?`, bound to a JSON array (text)
    of the keys asked for; it returns columns `key` and `vector`, optionally
    `text` and `metadata`. In Snowflake, e.g.
    `SELECT id AS key, emb::ARRAY AS vector FROM docs WHERE id IN
    (SELECT value::VARCHAR FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?))))`;
    in DuckDB, `... WHERE id IN (SELECT unnest(?::JSON::VARCHAR[]))`.
    Its rows get version 0, so any record written through tiermem wins.
    """

    name = "warehouse"

    def __init__(
        self, backend: Backend, *, source_queries: Mapping[str, str] | None = None
    ) -> None:
        self.backend = backend
        self._source_queries: dict[str | None, str] = {}
        for namespace, sql in (source_queries or {}).items():
            self.set_source_query(sql, namespace)
        self._conn: Connection | None = None
        self._closed = False
        # One worker thread owns the connection. A cancelled await does not
        # stop its thread, so serialising in the worker (not with an
        # asyncio.Lock) is what keeps two statements off one connection.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tiermem-warehouse")

    @classmethod
    def duckdb(cls, path: Path, **kwargs: Any) -> WarehouseTier:
        """The embedded warehouse in the DuckDB file at `path`."""
        return cls(DuckDBBackend(path), **kwargs)

    @classmethod
    def snowflake(cls, settings: SnowflakeSettings, **kwargs: Any) -> WarehouseTier:
        return cls(SnowflakeBackend(settings), **kwargs)

    def __repr__(self) -> str:
        return f"WarehouseTier({self.backend!r})"

    def set_source_query(self, sql: str | None, namespace: str | None = None) -> None:
        """Fall back to `sql` for keys of `namespace` (None: every namespace)."""
        if sql is None:
            self._source_queries.pop(namespace, None)
            return
        if sql.count("?") != 1:
            raise ValueError(
                f"source query for namespace={namespace!r}: expected exactly one "
                f"'?' placeholder (the JSON array of keys), found {sql.count('?')}"
            )
        self._source_queries[namespace] = sql

    def source_query(self, namespace: str) -> str | None:
        return self._source_queries.get(namespace, self._source_queries.get(None))

    async def get_many(self, refs: Sequence[RecordKey]) -> dict[RecordKey, Record]:
        by_namespace = _group(refs)
        if not by_namespace:
            return {}
        found = await self._run("get_many", self._lookup_all, by_namespace)
        logger.debug("warehouse get_many: %s refs, %s hits", len(refs), len(found))
        return found

    async def put_many(self, records: Sequence[Record]) -> None:
        # MERGE rejects a ref repeated in one batch.
        latest = newest_per_ref(records)
        if latest:
            await self._run("put_many", self._upsert_all, latest)

    async def delete_many(self, refs: Sequence[RecordKey]) -> None:
        by_namespace = _group(refs)
        if by_namespace:
            await self._run("delete_many", self._delete_all, by_namespace)

    async def stats(self) -> TierStats:
        """Row count and storage; healthy=False (not a raise) when unreachable."""
        detail = self.backend.describe()
        try:
            items = await self._run("stats", self._count)
        except TierError as exc:
            logger.warning("warehouse stats failed: %s", exc)
            return TierStats(name=self.name, healthy=False, detail=detail)
        used = await asyncio.to_thread(self.backend.used_bytes)
        return TierStats(name=self.name, used_bytes=used, items=items, detail=detail)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=False)

    # Everything below runs on the worker thread.

    async def _run(self, operation: str, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise TierError(self.name, f"{operation}: tier is closed")
        call = functools.partial(self._call, operation, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _call(self, operation: str, fn: Callable[..., T], *args: Any) -> T:
        failures: tuple[type[BaseException], ...] = (*self.backend.errors(), OSError)
        try:
            return fn(self._connection(), *args)
        except failures as exc:
            if self.backend.is_disconnect(exc):
                logger.warning("warehouse connection dropped: %s", exc)
                self._disconnect()
            raise TierError(self.name, f"{operation}: {exc}") from exc

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self.backend.connect()
            try:
                self.backend.create_schema(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            logger.info("warehouse connected: %s", self.backend.describe())
        return self._conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:
                logger.warning("warehouse close failed: %s", exc)

    def _lookup_all(
        self, conn: Connection, by_namespace: dict[str, list[str]]
    ) -> dict[RecordKey, Record]:
        found: dict[RecordKey, Record] = {}
        for namespace, keys in by_namespace.items():
            for record in _lookup(conn, namespace, keys):
                found[record.ref] = record
            missing = [key for key in keys if (namespace, key) not in found]
            sql = self.source_query(namespace)
            if missing and sql is not None:
                for record in _source_lookup(conn, sql, namespace, missing):
                    found.setdefault(record.ref, record)
        return found

    def _upsert_all(self, conn: Connection, records: list[Record]) -> None:
        for chunk in _chunks(records, _UPSERT_CHUNK):
            self.backend.upsert(conn, chunk)

    def _delete_all(self, conn: Connection, by_namespace: dict[str, list[str]]) -> None:
        for namespace, keys in by_namespace.items():
            for chunk in _chunks(keys, _LOOKUP_CHUNK):
                marks = ", ".join("?" * len(chunk))
                sql = f"DELETE FROM {TABLE} WHERE namespace = ? AND key IN ({marks})"
                _execute(conn, sql, [namespace, *chunk])

    def _count(self, conn: Connection) -> int:
        rows = _fetch(conn, f"SELECT COUNT(*) FROM {TABLE}")
        return int(rows[0][0])


def _lookup(conn: Connection, namespace: str, keys: list[str]) -> Iterator[Record]:
    for chunk in _chunks(keys, _LOOKUP_CHUNK):
        # Only the number of placeholders depends on the input, never a value.
        marks = ", ".join("?" * len(chunk))
        sql = f"SELECT {_COLUMNS} FROM {TABLE} WHERE namespace = ? AND key IN ({marks})"
        for row in _fetch(conn, sql, [namespace, *chunk]):
            yield _row_record(row)


def _source_lookup(
    conn: Connection, sql: str, namespace: str, keys: list[str]
) -> Iterator[Record]:
    # TODO: one source query runs per namespace per request and its rows are
    # not written back to tiermem_vectors, so a hot key pays the source scan
    # until an upper tier admits it.
    cursor = conn.cursor()
    try:
        cursor.execute(sql, [orjson.dumps(keys).decode()])
        names = [str(column[0]).lower() for column in cursor.description]
        rows = cursor.fetchall()
    finally:
        cursor.close()
    for row in rows:
        values = dict(zip(names, row, strict=True))
        yield Record(
            namespace=namespace,
            key=str(values["key"]),
            vector=_vector(values["vector"]),
            version=0,
            text=values.get("text"),
            metadata=_metadata(values.get("metadata")),
        )


def _row_record(row: Sequence[Any]) -> Record:
    namespace, key, version, deleted, vector, text, metadata, updated_at = row
    return Record(
        namespace=namespace,
        key=key,
        vector=_vector(vector),
        version=int(version),
        text=text,
        metadata=_metadata(metadata),
        deleted=bool(deleted),
        updated_at=float(updated_at) if updated_at is not None else 0.0,
    )


def _vector(value: Any) -> np.ndarray:
    # Snowflake returns ARRAY as JSON text, DuckDB as a list; VECTOR columns
    # of a source table arrive as lists too.
    # TODO: every element passes through a Python float (and JSON text for
    # Snowflake), roughly 10x the cost of a binary column; fetching Arrow
    # batches, or storing BINARY beside the ARRAY, would make bulk reads cheap.
    if value is None:
        return np.zeros(0, dtype=np.float32)
    if isinstance(value, str | bytes):
        value = orjson.loads(value)
    return np.asarray(value, dtype=np.float32)


def _metadata(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str | bytes):
        value = orjson.loads(value)
    return value if isinstance(value, dict) else None


def _metadata_json(metadata: dict[str, Any] | None) -> str | None:
    return None if metadata is None else orjson.dumps(metadata).decode()


def _execute(conn: Connection, sql: str, params: Sequence[Any] | None = None) -> None:
    cursor = conn.cursor()
    try:
        cursor.execute(sql, params)
    finally:
        cursor.close()


def _fetch(
    conn: Connection, sql: str, params: Sequence[Any] | None = None
) -> list[Sequence[Any]]:
    cursor = conn.cursor()
    try:
        cursor.execute(sql, params)
        rows: list[Sequence[Any]] = cursor.fetchall()
    finally:
        cursor.close()
    return rows


def _group(refs: Sequence[RecordKey]) -> dict[str, list[str]]:
    by_namespace: dict[str, list[str]] = {}
    for namespace, key in dict.fromkeys(refs):
        by_namespace.setdefault(namespace, []).append(key)
    return by_namespace


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def default_duckdb_path(data_dir: Path) -> Path:
    """Where the embedded warehouse lives under the service's data dir."""
    return data_dir / "warehouse" / "tiermem.duckdb"
