"""Binary encodings of records: one record per value, or many in a bulk blob.

A single record (Redis values, archived objects) is a 16-byte header, the
vector bytes, then orjson of {text, metadata, updated_at}. A bulk blob
(snapshots, bulk tables) stores the same fields column by column, so a reader
gets every vector as one NumPy array and builds Python objects only for the
rows it asks for.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson

from memory_tiers.base import Record, RecordKey

logger = logging.getLogger(__name__)

VectorDtype = Literal["float32", "float16"]
# What decoders accept: bytes, or a view of an object store's buffer.
Buffer = bytes | bytearray | memoryview

FORMAT_RECORD = 1
FORMAT_BULK = 1
FLAG_DELETED = 0x01

# Big-endian header: the version's bytes then sort like the number (after a
# sign-bit flip), which lets a Redis script compare versions without Lua's
# lossy doubles. Vector bytes stay little-endian, NumPy's native order on
# every machine the service runs on.
_RECORD_HEADER = struct.Struct(">BqBBIxx")
RECORD_HEADER_SIZE = _RECORD_HEADER.size
VERSION_OFFSET = 1

_BULK_MAGIC = b"TMBULK"
_BULK_HEADER = struct.Struct("<6sBBQ")
_ALIGN = 8

_DTYPE_CODES: dict[str, int] = {"float32": 1, "float16": 2}
_CODE_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f2"),
}


class CodecError(ValueError):
    """Bytes that are not a record (or bulk blob) in a known format."""


def encode_record(record: Record, dtype: VectorDtype = "float32") -> bytes:
    """One record as bytes; float16 halves the size but rounds the vector."""
    code = _dtype_code(dtype)
    vector = np.ascontiguousarray(record.vector, dtype=_CODE_DTYPES[code])
    flags = FLAG_DELETED if record.deleted else 0
    header = _RECORD_HEADER.pack(
        FORMAT_RECORD, record.version, flags, code, vector.shape[0]
    )
    return b"".join((header, vector.tobytes(), _encode_extra(record)))


def decode_or_miss(ref: RecordKey, data: Buffer | None, source: str) -> Record | None:
    """The record in `data`, or None (a miss) when absent or unreadable.

    A cache's foreign or corrupt value is logged and read as a miss: the
    system of record still holds the record.
    """
    if data is None:
        return None
    try:
        return decode_record(ref[0], ref[1], data)
    except CodecError as exc:
        logger.warning(
            "%s value of %s unreadable, read as a miss: %s", source, ref, exc
        )
        return None


def decode_record(namespace: str, key: str, data: Buffer) -> Record:
    """The record stored as `data`; raises CodecError on foreign bytes."""
    fmt, version, flags, code, dim = _unpack_record_header(data)
    dtype = _dtype_for(code)
    end = RECORD_HEADER_SIZE + dim * dtype.itemsize
    if fmt != FORMAT_RECORD or len(data) < end:
        raise CodecError(f"not a record (format {fmt}, {len(data)} bytes)")

    raw = np.frombuffer(data, dtype=dtype, count=dim, offset=RECORD_HEADER_SIZE)
    extra = _decode_extra(bytes(data[end:]))
    return Record(
        namespace=namespace,
        key=key,
        # A copy: a view would be read-only and would pin the whole value.
        vector=raw.astype(np.float32, copy=True),
        version=version,
        text=extra.get("text"),
        metadata=extra.get("metadata"),
        deleted=bool(flags & FLAG_DELETED),
        updated_at=float(extra.get("updated_at", 0.0)),
    )


def record_version(data: Buffer) -> int:
    """The version in a record's header, without decoding the rest."""
    return _unpack_record_header(data)[1]


def _unpack_record_header(data: Buffer) -> tuple[int, int, int, int, int]:
    if len(data) < RECORD_HEADER_SIZE:
        raise CodecError(f"record too short ({len(data)} bytes)")
    fmt, version, flags, code, dim = _RECORD_HEADER.unpack_from(data)
    return fmt, version, flags, code, dim


def _encode_extra(record: Record) -> bytes:
    return orjson.dumps(
        {
            "text": record.text,
            "metadata": record.metadata,
            "updated_at": record.updated_at,
        }
    )


def _decode_extra(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        extra = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"bad record tail: {exc}") from None
    if not isinstance(extra, dict):
        raise CodecError("record tail is not a JSON object")
    return extra


def _dtype_code(dtype: str) -> int:
    try:
        return _DTYPE_CODES[dtype]
    except KeyError:
        allowed = ", ".join(_DTYPE_CODES)
        raise ValueError(f"dtype={dtype!r}: expected one of {allowed}") from None


def _dtype_for(code: int) -> np.dtype[Any]:
    try:
        return _CODE_DTYPES[code]
    except KeyError:
        raise CodecError(f"unknown vector dtype code {code}") from None


# Bulk blobs -----------------------------------------------------------------
#
# Layout after the header, each section padded to 8 bytes so that every
# column can be viewed in place:
#   versions int64[n], updated_at float64[n], flags uint8[n], dims uint32[n],
#   namespace lengths uint32[n], key lengths uint32[n], extra lengths
#   uint32[n], vectors (all rows back to back), names (namespace then key,
#   UTF-8, row after row), extras (orjson {text, metadata} or empty).


@dataclass(slots=True)
class _Columns:
    versions: npt.NDArray[np.int64]
    updated_at: npt.NDArray[np.float64]
    flags: npt.NDArray[np.uint8]
    dims: npt.NDArray[np.uint32]
    ns_lens: npt.NDArray[np.uint32]
    key_lens: npt.NDArray[np.uint32]
    extra_lens: npt.NDArray[np.uint32]


def encode_bulk(records: Sequence[Record], dtype: VectorDtype = "float32") -> bytes:
    """Many records as one blob; decode with `BulkTable.from_bytes`."""
    code = _dtype_code(dtype)
    names = [(r.namespace.encode(), r.key.encode()) for r in records]
    extras = [_encode_bulk_extra(r) for r in records]
    columns = _Columns(
        versions=np.array([r.version for r in records], dtype="<i8"),
        updated_at=np.array([r.updated_at for r in records], dtype="<f8"),
        flags=np.array([FLAG_DELETED * r.deleted for r in records], dtype=np.uint8),
        dims=np.array([r.dim for r in records], dtype="<u4"),
        ns_lens=np.array([len(ns) for ns, _ in names], dtype="<u4"),
        key_lens=np.array([len(key) for _, key in names], dtype="<u4"),
        extra_lens=np.array([len(extra) for extra in extras], dtype="<u4"),
    )
    vectors = _concat_vectors(records, _CODE_DTYPES[code])

    parts = [_BULK_HEADER.pack(_BULK_MAGIC, FORMAT_BULK, code, len(records))]
    parts += [_column_bytes(column) for column in _column_list(columns)]
    parts.append(_padded(vectors.tobytes()))
    parts.append(_padded(b"".join(ns + key for ns, key in names)))
    parts.append(b"".join(extras))
    return b"".join(parts)


def decode_bulk(data: Buffer) -> list[Record]:
    """Every record of a bulk blob; raises CodecError on foreign bytes."""
    return BulkTable.from_bytes(data).records()


def _encode_bulk_extra(record: Record) -> bytes:
    if record.text is None and record.metadata is None:
        return b""
    return orjson.dumps({"text": record.text, "metadata": record.metadata})


def _concat_vectors(records: Sequence[Record], dtype: np.dtype[Any]) -> np.ndarray:
    if not records:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([np.asarray(r.vector, dtype=dtype) for r in records])


def _column_list(columns: _Columns) -> list[np.ndarray]:
    return [
        columns.versions,
        columns.updated_at,
        columns.flags,
        columns.dims,
        columns.ns_lens,
        columns.key_lens,
        columns.extra_lens,
    ]


def _column_bytes(column: np.ndarray) -> bytes:
    return _padded(column.tobytes())


def _padded(raw: bytes) -> bytes:
    return raw + b"\x00" * (-len(raw) % _ALIGN)


class _Reader:
    """Walks a bulk blob section by section, checking every bound."""

    def __init__(self, data: Buffer, offset: int) -> None:
        self.data = data
        self.offset = offset

    def array(self, dtype: str | np.dtype[Any], count: int) -> np.ndarray:
        dt = np.dtype(dtype)
        raw = self.take(count * dt.itemsize)
        return np.frombuffer(raw, dtype=dt, count=count)

    def take(self, size: int, pad: bool = True) -> memoryview:
        end = self.offset + size
        if end > len(self.data):
            raise CodecError(f"bulk blob truncated at byte {len(self.data)}")
        raw = memoryview(self.data)[self.offset : end]
        self.offset = end + (-size % _ALIGN if pad else 0)
        return raw


class BulkTable:
    """A decoded bulk blob: columns as arrays, rows built on demand.

    Vectors are kept in the blob's dtype; `record()` converts one row to
    float32. Lookups by ref go through `index`, built once.
    """

    def __init__(
        self,
        columns: _Columns,
        vectors: np.ndarray,
        names: memoryview,
        extras: memoryview,
    ) -> None:
        self._columns = columns
        self._vectors = vectors
        self._names = names
        self._extras = extras
        self._vector_starts = _starts(columns.dims)
        self._name_starts = _starts(columns.ns_lens + columns.key_lens)
        self._extra_starts = _starts(columns.extra_lens)
        self._index: dict[RecordKey, int] | None = None

    @classmethod
    def from_bytes(cls, data: Buffer) -> BulkTable:
        """Parse a blob written by `encode_bulk`; raises CodecError."""
        magic, fmt, code, count = _unpack_bulk_header(data)
        if magic != _BULK_MAGIC or fmt != FORMAT_BULK:
            raise CodecError("not a tiermem bulk blob")

        reader = _Reader(data, _BULK_HEADER.size)
        columns = _Columns(
            versions=reader.array("<i8", count),
            updated_at=reader.array("<f8", count),
            flags=reader.array("u1", count),
            dims=reader.array("<u4", count),
            ns_lens=reader.array("<u4", count),
            key_lens=reader.array("<u4", count),
            extra_lens=reader.array("<u4", count),
        )
        vectors = reader.array(_dtype_for(code), int(columns.dims.sum()))
        name_bytes = int(columns.ns_lens.sum()) + int(columns.key_lens.sum())
        names = reader.take(name_bytes)
        extras = reader.take(int(columns.extra_lens.sum()), pad=False)
        return cls(columns, vectors, names, extras)

    def __len__(self) -> int:
        return int(self._columns.versions.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the vectors, names and extras."""
        return self._vectors.nbytes + len(self._names) + len(self._extras)

    @property
    def index(self) -> dict[RecordKey, int]:
        """Row number of every ref (the last row wins for a repeated ref)."""
        if self._index is None:
            self._index = {self.ref(row): row for row in range(len(self))}
        return self._index

    def ref(self, row: int) -> RecordKey:
        start = int(self._name_starts[row])
        ns_len = int(self._columns.ns_lens[row])
        key_len = int(self._columns.key_lens[row])
        raw = self._names[start : start + ns_len + key_len]
        return (bytes(raw[:ns_len]).decode(), bytes(raw[ns_len:]).decode())

    def version(self, row: int) -> int:
        return int(self._columns.versions[row])

    def matrix(self) -> np.ndarray | None:
        """All vectors as one (rows, dim) array when every row has one dim."""
        dims = self._columns.dims
        if len(self) == 0 or np.any(dims != dims[0]):
            return None
        return self._vectors.reshape(len(self), int(dims[0]))

    def record(self, row: int) -> Record:
        namespace, key = self.ref(row)
        start = int(self._vector_starts[row])
        vector = self._vectors[start : start + int(self._columns.dims[row])]
        extra = self._extra(row)
        return Record(
            namespace=namespace,
            key=key,
            vector=vector.astype(np.float32, copy=True),
            version=self.version(row),
            text=extra.get("text"),
            metadata=extra.get("metadata"),
            deleted=bool(self._columns.flags[row] & FLAG_DELETED),
            updated_at=float(self._columns.updated_at[row]),
        )

    def records(self) -> list[Record]:
        return [self.record(row) for row in range(len(self))]

    def _extra(self, row: int) -> dict[str, Any]:
        start = int(self._extra_starts[row])
        size = int(self._columns.extra_lens[row])
        return _decode_extra(bytes(self._extras[start : start + size]))


def _unpack_bulk_header(data: Buffer) -> tuple[bytes, int, int, int]:
    if len(data) < _BULK_HEADER.size:
        raise CodecError(f"bulk blob too short ({len(data)} bytes)")
    magic, fmt, code, count = _BULK_HEADER.unpack_from(data)
    return magic, fmt, code, count


def _starts(lengths: np.ndarray) -> npt.NDArray[np.int64]:
    starts = np.zeros(lengths.shape[0], dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return starts
