"""The record and bulk encodings shared by Redis and object storage."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from memory_tiers.base import Record
from memory_tiers.codec import (
    RECORD_HEADER_SIZE,
    VERSION_OFFSET,
    BulkTable,
    CodecError,
    decode_bulk,
    decode_record,
    encode_bulk,
    encode_record,
    record_version,
)

from .conftest import MakeRecord


def assert_same(got: Record, want: Record) -> None:
    assert got.ref == want.ref
    assert got.version == want.version
    assert got.deleted == want.deleted
    assert got.text == want.text
    assert got.metadata == want.metadata
    assert got.updated_at == want.updated_at
    assert got.vector.dtype == np.float32
    np.testing.assert_array_equal(got.vector, want.vector)


@pytest.mark.parametrize("version", [0, 1, 2**53 + 1, 2**63 - 1, -5])
def test_record_roundtrip_is_exact(make_record: MakeRecord, version: int) -> None:
    record = make_record(
        "ns", "k", version=version, dim=384, text="héllo", metadata={"a": [1, 2]}
    )

    data = encode_record(record)

    assert len(data) > RECORD_HEADER_SIZE + 384 * 4
    assert record_version(data) == version
    assert_same(decode_record("ns", "k", data), record)


def test_record_decodes_from_a_memoryview(make_record: MakeRecord) -> None:
    record = make_record("ns", "k")

    decoded = decode_record("ns", "k", memoryview(encode_record(record)))

    assert_same(decoded, record)
    decoded.vector[0] = 1.0  # a private, writable copy


def test_tombstone_roundtrip() -> None:
    tombstone = Record("ns", "gone", np.zeros(0, np.float32), version=9, deleted=True)

    decoded = decode_record("ns", "gone", encode_record(tombstone))

    assert decoded.deleted and decoded.dim == 0 and decoded.version == 9


def test_float16_halves_vector_bytes_and_rounds(make_record: MakeRecord) -> None:
    record = make_record("ns", "k", dim=256)

    small = encode_record(record, dtype="float16")
    full = encode_record(record)

    assert len(full) - len(small) == 256 * 2
    decoded = decode_record("ns", "k", small)
    np.testing.assert_allclose(decoded.vector, record.vector, rtol=1e-3, atol=1e-3)


def test_unknown_dtype_is_refused(make_record: MakeRecord) -> None:
    with pytest.raises(ValueError, match="dtype='int8'"):
        encode_record(make_record("ns", "k"), dtype="int8")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01short",
        b"\x07" + bytes(40),  # unknown format
        struct.pack(">BqBBIxx", 1, 1, 0, 9, 0),  # unknown dtype code
        struct.pack(">BqBBIxx", 1, 1, 0, 1, 100) + bytes(10),  # truncated
        struct.pack(">BqBBIxx", 1, 1, 0, 1, 0) + b"{not json",
        struct.pack(">BqBBIxx", 1, 1, 0, 1, 0) + b"[1]",
    ],
)
def test_foreign_bytes_raise_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_record("ns", "k", data)


def test_header_version_bytes_sort_like_versions(make_record: MakeRecord) -> None:
    # The Redis script compares these 8 bytes, first byte's sign bit flipped.
    rng = np.random.default_rng(1)
    versions = [int(v) for v in rng.integers(-(2**63), 2**63 - 1, 200)]
    versions += [0, -1, 1, 2**53, 2**53 + 1, 2**63 - 1, -(2**63)]

    def sort_key(version: int) -> bytes:
        raw = encode_record(make_record("ns", "k", version=version))
        head = raw[VERSION_OFFSET : VERSION_OFFSET + 8]
        return bytes([head[0] ^ 0x80]) + head[1:]

    assert sorted(versions, key=sort_key) == sorted(versions)


def test_bulk_roundtrip_mixed_rows(make_record: MakeRecord) -> None:
    records = [
        make_record("ns", "a", dim=4, version=3, text="t", metadata={"m": 1}),
        make_record("other", "ключ/к/ключу", dim=7, seed=2),
        Record("ns", "gone", np.zeros(0, np.float32), version=5, deleted=True),
        make_record("ns", "", dim=4, seed=3, metadata={"x": None}),
    ]

    decoded = decode_bulk(encode_bulk(records))

    assert len(decoded) == len(records)
    for got, want in zip(decoded, records, strict=True):
        assert_same(got, want)


def test_bulk_table_gives_matrix_and_index(make_record: MakeRecord) -> None:
    records = [make_record("ns", f"k{i}", dim=16, seed=i) for i in range(50)]

    table = BulkTable.from_bytes(encode_bulk(records))

    matrix = table.matrix()
    assert matrix is not None and matrix.shape == (50, 16)
    np.testing.assert_array_equal(matrix[7], records[7].vector)
    assert table.index[("ns", "k42")] == 42
    assert_same(table.record(42), records[42])
    assert table.nbytes >= 50 * 16 * 4


def test_bulk_matrix_is_none_for_mixed_dims(make_record: MakeRecord) -> None:
    records = [make_record("ns", "a", dim=4), make_record("ns", "b", dim=5)]

    assert BulkTable.from_bytes(encode_bulk(records)).matrix() is None


def test_empty_bulk_roundtrip() -> None:
    table = BulkTable.from_bytes(encode_bulk([]))

    assert len(table) == 0 and table.records() == [] and table.matrix() is None


def test_bulk_float16(make_record: MakeRecord) -> None:
    records = [make_record("ns", f"k{i}", dim=32, seed=i) for i in range(5)]

    decoded = decode_bulk(encode_bulk(records, dtype="float16"))

    for got, want in zip(decoded, records, strict=True):
        np.testing.assert_allclose(got.vector, want.vector, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("cut", [0, 10, 30, 100])
def test_truncated_bulk_raises_codec_error(make_record: MakeRecord, cut: int) -> None:
    blob = encode_bulk([make_record("ns", f"k{i}", dim=8) for i in range(4)])

    with pytest.raises(CodecError):
        BulkTable.from_bytes(blob[:cut])


def test_bulk_rejects_record_bytes(make_record: MakeRecord) -> None:
    with pytest.raises(CodecError, match="not a tiermem bulk"):
        BulkTable.from_bytes(encode_record(make_record("ns", "k")) + bytes(64))
