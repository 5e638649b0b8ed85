"""The one interface every tier implements, and the records they hold."""

from __future__ import annotations

import abc
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

# A record is addressed by (namespace, key) in every tier.
RecordKey = tuple[str, str]
Vector = npt.NDArray[np.float32]

# Embedding-cache namespaces start with this prefix; their records are derived
# (recomputable from text), every other namespace is authoritative.
DERIVED_PREFIX = "emb:"


class TierError(Exception):
    """A tier failed (not a miss). Carries the tier's name."""

    def __init__(self, tier: str, message: str) -> None:
        super().__init__(f"{tier}: {message}")
        self.tier = tier


@dataclass(slots=True)
class Record:
    """One vector with what the service knows about it.

    `version` grows with every write of any key; a tombstone (`deleted`) is a
    record too, so that a delete can win over an older copy held by a tier.
    """

    namespace: str
    key: str
    vector: Vector
    version: int
    text: str | None = None
    metadata: dict[str, Any] | None = None
    deleted: bool = False
    updated_at: float = field(default_factory=time.time)

    @property
    def ref(self) -> RecordKey:
        return (self.namespace, self.key)

    @property
    def derived(self) -> bool:
        return is_derived(self.namespace)

    @property
    def dim(self) -> int:
        return int(self.vector.shape[0])


def is_derived(namespace: str) -> bool:
    """True for embedding-cache namespaces, whose records can be recomputed."""
    return namespace.startswith(DERIVED_PREFIX)


def key_hash(ref: RecordKey) -> int:
    """A stable 64-bit hash of (namespace, key), the index key of resident tiers.

    0 and 1 are reserved by the hash index (empty and deleted slots).
    """
    digest = hashlib.blake2b(
        ref[0].encode() + b"\x00" + ref[1].encode(), digest_size=8
    ).digest()
    value = int.from_bytes(digest, "little")
    return value if value > 1 else value + 2


def newest_per_ref(records: Sequence[Record]) -> list[Record]:
    """One record per ref: the highest version, the last given on a tie."""
    newest: dict[RecordKey, Record] = {}
    for record in records:
        held = newest.get(record.ref)
        if held is None or record.version >= held.version:
            newest[record.ref] = record
    return list(newest.values())


@dataclass(slots=True)
class TierStats:
    """What a tier reports about itself; the hierarchy adds hits and latency."""

    name: str
    enabled: bool = True
    healthy: bool = True
    capacity_bytes: int | None = None
    used_bytes: int = 0
    items: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


class Tier(abc.ABC):
    """A store of records. A miss is absent from a result; a failure raises.

    Every method takes a whole batch so that each tier is asked once per
    request. Implementations raise TierError (never a library's own error) so
    the hierarchy can degrade around a failing cache tier.
    """

    name: str = "tier"
    # An authoritative tier's loss is data loss; a cache tier's loss is a miss.
    authoritative: bool = False
    # An in-process tier answers in microseconds and is never worth skipping.
    local: bool = False

    @abc.abstractmethod
    async def get_many(self, refs: Sequence[RecordKey]) -> dict[RecordKey, Record]:
        """Records for the refs this tier holds; tombstones are returned too."""

    @abc.abstractmethod
    async def put_many(self, records: Sequence[Record]) -> None:
        """Store records (a cache tier may decline some under its admission rule)."""

    @abc.abstractmethod
    async def delete_many(self, refs: Sequence[RecordKey]) -> None:
        """Drop the refs; absent refs are ignored."""

    @abc.abstractmethod
    async def stats(self) -> TierStats:
        """Capacity, use and health, cheaply."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and memory; the tier is unusable afterwards."""
