"""T5: object storage (S3, or a local directory) through obstore.

Layout under the store's URL:
  records/{namespace}/{key}.rec    one codec record per exported key
  snapshots/{name}/manifest.json   written last; names the parts below
  snapshots/{name}/{generation}-{part}.bulk
  tables/{namespace}/*.bulk        bulk embedding tables, read-only here
Path segments are escaped (see `escape_segment`) so any namespace or key is
a single, filesystem-safe segment.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import string
import time
import uuid
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import obstore
import orjson
from obstore.exceptions import BaseError as ObstoreError
from obstore.exceptions import NotFoundError
from obstore.store import LocalStore, MemoryStore, from_url

from memory_tiers.base import Record, RecordKey, Tier, TierError, TierStats
from memory_tiers.codec import (
    BulkTable,
    CodecError,
    VectorDtype,
    decode_or_miss,
    encode_bulk,
    encode_record,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
ObjectStore = Any

_SAFE = frozenset(string.ascii_letters + string.digits + "_-")
_MAX_SEGMENT = 200
_MISSING = (FileNotFoundError, NotFoundError)
_FAILURES = (ObstoreError, OSError)
# obstore splits its settings between the store and the HTTP client; callers
# give one mapping (one env var) and these keys go to the client.
_CLIENT_KEYS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "timeout",
        "user_agent",
        "proxy_url",
        "default_headers",
        "http1_only",
        "http2_only",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
    }
)
_SECRET_WORDS = ("secret", "token", "password", "sas")


def escape_segment(value: str) -> str:
    """`value` as one path segment of [A-Za-z0-9_-] and ~XX escapes.

    Injective: "~" is always escaped, the empty string becomes "~" and an
    over-long segment becomes its head, "~~" and a SHA-256 of the whole.
    """
    if not value:
        return "~"
    out = "".join(
        ch if ch in _SAFE else "".join(f"~{byte:02X}" for byte in ch.encode())
        for ch in value
    )
    if len(out) > _MAX_SEGMENT:
        digest = hashlib.sha256(value.encode()).hexdigest()
        out = f"{out[:100]}~~{digest}"
    return out


def record_path(ref: RecordKey) -> str:
    return f"records/{escape_segment(ref[0])}/{escape_segment(ref[1])}.rec"


def redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options with secret values (keys, tokens, passwords) replaced by ***."""
    return {
        name: "***" if _is_secret(name) else value for name, value in options.items()
    }


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    if lowered.endswith("access_key_id"):
        return False
    return lowered.endswith("_key") or any(w in lowered for w in _SECRET_WORDS)


def _message(exc: BaseException) -> str:
    # obstore appends a multi-line debug dump; its first line is the cause.
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@dataclass(slots=True)
class _NamespaceTables:
    """The bulk tables of one namespace, as last listed."""

    listed_at: float = float("-inf")
    tables: dict[str, BulkTable] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def find(self, ref: RecordKey) -> tuple[BulkTable, int] | None:
        """The table row holding the highest version of `ref`, if any."""
        best: tuple[BulkTable, int] | None = None
        for table in self.tables.values():
            row = table.index.get(ref)
            if row is not None and (
                best is None or table.version(row) > best[0].version(best[1])
            ):
                best = (table, row)
        return best


class ObjectTier(Tier):
    """Archived records, snapshots and bulk tables in one object store.

    `url` is s3://bucket/prefix, file:///path (created if missing),
    memory:/// or any other URL obstore knows. `options` holds the store's
    settings (endpoint, region, access_key_id, virtual_hosted_style_request,
    ...) and the HTTP client's (allow_http, timeout, ...) in one mapping.
    """

    name = "object"

    def __init__(
        self,
        url: str,
        *,
        options: Mapping[str, Any] | None = None,
        dtype: VectorDtype = "float32",
        max_concurrency: int = 32,
        max_retries: int = 3,
        retry_timeout_s: float = 30.0,
        table_refresh_s: float = 60.0,
        snapshot_part_records: int = 100_000,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency={max_concurrency}: must be >= 1")
        if snapshot_part_records < 1:
            raise ValueError(
                f"snapshot_part_records={snapshot_part_records}: must be >= 1"
            )
        self.url = url
        self.options = dict(options or {})
        self.dtype: VectorDtype = dtype
        self.table_refresh_s = table_refresh_s
        self.snapshot_part_records = snapshot_part_records
        self._store = _open_store(url, self.options, max_retries, retry_timeout_s)
        self._slots = asyncio.Semaphore(max_concurrency)
        # TODO: every bulk table of a namespace stays decoded in memory once
        # read (all its vectors); a large table costs its full size in RAM. A
        # sorted key index with range reads would bound that.
        self._tables: dict[str, _NamespaceTables] = {}
        self._healthy = True

    def __repr__(self) -> str:
        return f"ObjectTier(url={self.url!r}, options={redact_options(self.options)})"

    async def get_many(self, refs: Sequence[RecordKey]) -> dict[RecordKey, Record]:
        unique = list(dict.fromkeys(refs))
        if not unique:
            return {}

        archived = await self._gather(self._get_record(ref) for ref in unique)
        found = {ref: rec for ref, rec in zip(unique, archived, strict=True) if rec}
        for namespace in {ns for ns, _ in unique}:
            tables = await self._namespace_tables(namespace)
            for ref in (ref for ref in unique if ref[0] == namespace):
                _prefer_newer(found, ref, tables.find(ref))
        logger.debug("object get_many: %s refs, %s hits", len(unique), len(found))
        return found

    async def put_many(self, records: Sequence[Record]) -> None:
        # TODO: last writer wins; a slow exporter can overwrite a newer record
        # with an older one. A conditional put on the ETag would prevent it.
        await self._gather(
            self._put(record_path(r.ref), encode_record(r, self.dtype)) for r in records
        )

    async def delete_many(self, refs: Sequence[RecordKey]) -> None:
        """Drop archived records; a key still in a bulk table gets a tombstone.

        Bulk tables are immutable, so hiding their row takes a tombstone at
        the row's version (the archive wins ties); a later write is higher.
        """
        unique = list(dict.fromkeys(refs))
        current = await self.get_many(unique)
        writes: list[Awaitable[None]] = []
        for ref in unique:
            tables = await self._namespace_tables(ref[0])
            if ref in current and tables.find(ref) is not None:
                tombstone = _tombstone(current[ref])
                writes.append(self._put(record_path(ref), encode_record(tombstone)))
            else:
                writes.append(self._delete(record_path(ref)))
        await self._gather(writes)

    async def stats(self) -> TierStats:
        """What this process has seen; listing a bucket is not cheap."""
        cached = [t for ns in self._tables.values() for t in ns.tables.values()]
        return TierStats(
            name=self.name,
            healthy=self._healthy,
            used_bytes=sum(table.nbytes for table in cached),
            items=sum(len(table) for table in cached),
            detail={
                "url": self.url,
                "tables_cached": len(cached),
                "namespaces_cached": len(self._tables),
            },
        )

    async def close(self) -> None:
        self._tables.clear()

    async def put_table(self, namespace: str, records: Sequence[Record]) -> str:
        """Write a bulk table for `namespace`; returns its path.

        Raises ValueError when a record belongs to another namespace.
        """
        strays = {r.namespace for r in records if r.namespace != namespace}
        if strays:
            raise ValueError(f"records: namespaces {sorted(strays)} != {namespace!r}")

        blob = await asyncio.to_thread(encode_bulk, records, self.dtype)
        stamp = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        path = f"tables/{escape_segment(namespace)}/{stamp}.bulk"
        await self._put(path, blob)

        # Visible to this process at once, without waiting for a re-list.
        tables = self._tables.setdefault(namespace, _NamespaceTables())
        tables.tables[path] = await asyncio.to_thread(_parse_table, path, blob)
        logger.info(
            "object table %s: %s records, %s bytes", path, len(records), len(blob)
        )
        return path

    async def save_snapshot(self, name: str, records: Sequence[Record]) -> None:
        """Store `records` as snapshot `name`, replacing any earlier one.

        Parts go first and the manifest last, so a reader sees the old
        snapshot or the new one, never a mix or a half-written one.
        """
        prefix = f"snapshots/{escape_segment(name)}"
        old_parts = await self._manifest_parts(prefix)

        parts = await self._write_parts(prefix, records)
        manifest = {
            "name": name,
            "parts": parts,
            "records": len(records),
            "created_at": time.time(),
        }
        await self._put(f"{prefix}/manifest.json", orjson.dumps(manifest))

        stale = [f"{prefix}/{part}" for part in old_parts if part not in parts]
        await self._gather(self._delete(path) for path in stale)
        logger.info(
            "snapshot %r saved: %s records, %s parts", name, len(records), len(parts)
        )

    async def _write_parts(self, prefix: str, records: Sequence[Record]) -> list[str]:
        """Write records as bulk parts under a fresh generation; their names."""
        generation = uuid.uuid4().hex[:12]
        size = self.snapshot_part_records
        count = max(1, -(-len(records) // size))
        parts = [f"{generation}-{index:05d}.bulk" for index in range(count)]

        # One part at a time, encoded off the event loop: memory stays at one
        # part and requests keep being served while a snapshot is written.
        for index, part in enumerate(parts):
            chunk = records[index * size : (index + 1) * size]
            blob = await asyncio.to_thread(encode_bulk, chunk, self.dtype)
            await self._put(f"{prefix}/{part}", blob)
        return parts

    async def load_snapshot(self, name: str) -> list[Record]:
        """The records of snapshot `name`; empty when there is none."""
        tables = await self.load_snapshot_tables(name)
        return [record for table in tables for record in table.records()]

    async def load_snapshot_tables(self, name: str) -> list[BulkTable]:
        """Snapshot `name` as bulk tables (vectors as arrays, rows on demand)."""
        prefix = f"snapshots/{escape_segment(name)}"
        parts = await self._manifest_parts(prefix)
        blobs = await self._gather(self._get(f"{prefix}/{part}") for part in parts)
        tables = []
        for part, blob in zip(parts, blobs, strict=True):
            if blob is None:
                # TODO: a save that replaces this snapshot deletes the old parts
                # at once, so a reader holding the old manifest fails here and
                # has to retry; keeping one previous generation would avoid it.
                raise TierError(self.name, f"snapshot {name!r}: part {part} missing")
            path = f"{prefix}/{part}"
            tables.append(_parse_table(path, blob, with_index=False))
        return tables

    async def list_snapshots(self) -> list[str]:
        """Names (escaped) of the snapshots that have a manifest."""
        metas = await self._list("snapshots/")
        suffix = "/manifest.json"
        return sorted(
            m["path"][len("snapshots/") : -len(suffix)]
            for m in metas
            if m["path"].endswith(suffix)
        )

    async def _manifest_parts(self, prefix: str) -> list[str]:
        raw = await self._get(f"{prefix}/manifest.json")
        if raw is None:
            return []
        try:
            parts = orjson.loads(bytes(raw))["parts"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise TierError(self.name, f"{prefix}: bad manifest: {exc}") from exc
        return [str(part) for part in parts]

    async def _namespace_tables(self, namespace: str) -> _NamespaceTables:
        tables = self._tables.setdefault(namespace, _NamespaceTables())
        async with tables.lock:
            if time.monotonic() - tables.listed_at >= self.table_refresh_s:
                await self._refresh_tables(namespace, tables)
        return tables

    async def _refresh_tables(self, namespace: str, tables: _NamespaceTables) -> None:
        metas = await self._list(f"tables/{escape_segment(namespace)}/")
        paths = [m["path"] for m in metas if m["path"].endswith(".bulk")]
        new = [path for path in paths if path not in tables.tables]
        blobs = await self._gather(self._get(path) for path in new)

        for path, blob in zip(new, blobs, strict=True):
            if blob is not None:
                # Parsing builds the key index, a Python loop over every row.
                tables.tables[path] = await asyncio.to_thread(_parse_table, path, blob)
        for path in set(tables.tables) - set(paths):
            del tables.tables[path]
        tables.listed_at = time.monotonic()
        if new:
            logger.info("object tables of %r: %s loaded", namespace, len(new))

    async def _get_record(self, ref: RecordKey) -> Record | None:
        return decode_or_miss(ref, await self._get(record_path(ref)), "archived")

    async def _get(self, path: str) -> memoryview | None:
        async with self._slots:
            try:
                result = await obstore.get_async(self._store, path)
                data = await result.bytes_async()
            except _MISSING:
                return None
            except _FAILURES as exc:
                raise self._failure("get", path, exc) from exc
        self._healthy = True
        return memoryview(data)

    async def _put(self, path: str, data: bytes) -> None:
        async with self._slots:
            try:
                await obstore.put_async(self._store, path, data)
            except _FAILURES as exc:
                raise self._failure("put", path, exc) from exc
        self._healthy = True

    async def _delete(self, path: str) -> None:
        async with self._slots:
            try:
                await obstore.delete_async(self._store, path)
            except _MISSING:
                pass
            except _FAILURES as exc:
                raise self._failure("delete", path, exc) from exc
        self._healthy = True

    async def _list(self, prefix: str) -> list[Any]:
        try:
            stream = obstore.list(self._store, prefix=prefix)
            metas = list(await stream.collect_async())
        except _MISSING:
            return []
        except _FAILURES as exc:
            raise self._failure("list", prefix, exc) from exc
        self._healthy = True
        return metas

    def _failure(self, operation: str, path: str, exc: BaseException) -> TierError:
        self._healthy = False
        return TierError(self.name, f"{operation} {path}: {_message(exc)}")

    async def _gather(self, calls: Iterable[Awaitable[T]]) -> list[T]:
        results = await asyncio.gather(*calls, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]


def _open_store(
    url: str, options: Mapping[str, Any], max_retries: int, retry_timeout_s: float
) -> ObjectStore:
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"url={url!r}: a file URL needs an absolute path")
        return LocalStore(Path(unquote(parts.path)), mkdir=True)
    if parts.scheme == "memory":
        return MemoryStore()

    client = {k: v for k, v in options.items() if k in _CLIENT_KEYS}
    config = {k: v for k, v in options.items() if k not in _CLIENT_KEYS}
    retry = {
        "max_retries": max_retries,
        "retry_timeout": timedelta(seconds=retry_timeout_s),
    }
    # The overloads are per scheme; this call serves every remote scheme.
    store = from_url(  # type: ignore[call-overload]
        url, config=config, client_options=client, retry_config=retry
    )
    return store


def _parse_table(
    path: str, blob: bytes | memoryview, with_index: bool = True
) -> BulkTable:
    """The table in `blob`, its key index built if asked; raises TierError."""
    try:
        table = BulkTable.from_bytes(blob)
        if with_index:
            table.index  # noqa: B018  # built now, in the caller's thread
    except (CodecError, UnicodeDecodeError) as exc:
        raise TierError("object", f"{path}: {exc}") from exc
    return table


def _prefer_newer(
    found: dict[RecordKey, Record],
    ref: RecordKey,
    row: tuple[BulkTable, int] | None,
) -> None:
    if row is None:
        return
    table, index = row
    held = found.get(ref)
    # The archive wins a tie: that is how delete_many hides a table row.
    if held is None or table.version(index) > held.version:
        found[ref] = table.record(index)


def _tombstone(record: Record) -> Record:
    return Record(
        namespace=record.namespace,
        key=record.key,
        vector=record.vector[:0],
        version=record.version,
        deleted=True,
    )
