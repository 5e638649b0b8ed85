"""Resident tiers: records held in preallocated arrays, one slab per dimension.

T0 (`hbm`) and T1 (`host`) are both a ResidentTier; they differ in the kernel
backend that owns their arrays and in their admission rule. A namespace whose
every record is held here is "resident", and its searches are exact.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import numpy as np

from kernels import Kernels
from memory_tiers.base import (
    Record,
    RecordKey,
    Tier,
    TierStats,
    is_derived,
    key_hash,
)
from memory_tiers.slab import VectorSlab

logger = logging.getLogger(__name__)

# A vector whose norm is further than this from 1 is not a unit vector, and
# inner-product search over it would not rank by cosine similarity.
UNIT_NORM_TOLERANCE = 1e-3

Hit = tuple[float, Record]
RecordFilter = Callable[[Record], bool]


class Admission(Protocol):
    def observe(self, hashes: Iterable[int]) -> None: ...

    def admits(self, key_hash: int) -> bool: ...


class ResidentTier(Tier):
    """Fixed-budget vector slabs with a hash index, CLOCK eviction and admission."""

    local = True

    def __init__(
        self,
        name: str,
        kernels: Kernels,
        budget_bytes: int,
        dims: Sequence[int],
        admission: Admission,
        pinned_namespaces: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.kernels = kernels
        self.budget_bytes = budget_bytes
        self.admission = admission
        self.pinned = frozenset(pinned_namespaces)
        share = budget_bytes // max(1, len(dims))
        self.slabs = {dim: VectorSlab(kernels, dim, share) for dim in dims}
        self.resident: set[str] = set()
        # Namespaces that ever held a non-unit vector search through pgvector.
        self.non_unit: set[str] = set()
        self.admitted = 0
        self.rejected = 0
        self._releases: dict[str, int] = {}
        # Exact search runs in a worker thread; every other use of the slabs
        # waits for it here instead of changing rows under its feet.
        self._lock = asyncio.Lock()
        for dim, slab in self.slabs.items():
            logger.info(
                "%s: dim %d holds %d rows in %d bytes on %s",
                name,
                dim,
                slab.capacity,
                slab.plan.total_bytes,
                kernels.name,
            )

    # -- the tier interface -------------------------------------------------

    async def get_many(self, refs: Sequence[RecordKey]) -> dict[RecordKey, Record]:
        self.admission.observe(key_hash(ref) for ref in refs)
        found: dict[RecordKey, Record] = {}
        async with self._lock:
            for slab in self.slabs.values():
                remaining = [ref for ref in refs if ref not in found]
                if not remaining:
                    break
                found.update(slab.lookup(remaining))
        return found

    async def put_many(self, records: Sequence[Record]) -> None:
        async with self._lock:
            self._put(records)

    def _put(self, records: Sequence[Record]) -> None:
        self._remove([r.ref for r in records if r.deleted])
        for dim, group in _by_dim(r for r in records if not r.deleted).items():
            slab = self.slabs.get(dim)
            if slab is None:
                logger.debug(
                    "%s: no slab for dim %d, %d records pass",
                    self.name,
                    dim,
                    len(group),
                )
                continue
            self._upsert(slab, group)

    async def delete_many(self, refs: Sequence[RecordKey]) -> None:
        async with self._lock:
            self._remove(refs)

    async def stats(self) -> TierStats:
        pools: dict[str, dict[str, int]] = {}
        for dim, slab in self.slabs.items():
            pools[f"dim{dim}"] = {
                "rows": slab.capacity,
                "vectors_bytes": slab.plan.vector_bytes,
                "vectors_used_bytes": slab.used_bytes - slab.plan.index_bytes,
                "index_bytes": slab.plan.index_bytes,
                "workspace_bytes": slab.plan.workspace_bytes,
            }
        return TierStats(
            name=self.name,
            capacity_bytes=self.budget_bytes,
            used_bytes=sum(s.used_bytes for s in self.slabs.values()),
            items=sum(s.items for s in self.slabs.values()),
            detail={
                "backend": self.kernels.name,
                "pools": pools,
                "resident_namespaces": sorted(self.resident),
                "admitted": self.admitted,
                "rejected": self.rejected,
                "evictions": sum(s.evictions for s in self.slabs.values()),
            },
        )

    async def close(self) -> None:
        self.slabs.clear()
        self.resident.clear()

    # -- residency and search ----------------------------------------------

    async def hold_namespace(self, namespace: str, records: Sequence[Record]) -> bool:
        """Load every record of a namespace; on success its search is exact."""
        async with self._lock:
            return self._hold(namespace, records)

    def _hold(self, namespace: str, records: Sequence[Record]) -> bool:
        live = [r for r in records if not r.deleted]
        for dim, group in _by_dim(live).items():
            slab = self.slabs.get(dim)
            if slab is None or len(group) > slab.capacity:
                return False
            result = slab.upsert(group, pinned=namespace in self.pinned)
            self._note_unit_norms(group)
            self._forget_evicted(result.evicted)
            if result.declined:
                return False
        self.resident.add(namespace)
        logger.info(
            "%s: namespace %s resident, %d records", self.name, namespace, len(live)
        )
        return True

    async def restore(self, records: Sequence[Record]) -> int:
        """Take records back from a snapshot, bypassing admission; returns how many."""
        async with self._lock:
            return self._restore(records)

    def _restore(self, records: Sequence[Record]) -> int:
        taken = 0
        for dim, group in _by_dim(r for r in records if not r.deleted).items():
            slab = self.slabs.get(dim)
            if slab is not None:
                taken += slab.upsert(group, pinned=False).written
                self._note_unit_norms(group)
        return taken

    async def dump(self) -> list[Record]:
        """Every record held, with its vector (for snapshots)."""
        async with self._lock:
            return [rec for slab in self.slabs.values() for rec in slab.all_records()]

    def release_namespace(self, namespace: str) -> None:
        """Stop treating a namespace as whole (a change arrived from elsewhere)."""
        self.resident.discard(namespace)
        self._releases[namespace] = self._releases.get(namespace, 0) + 1

    async def forget_authoritative(self) -> int:
        """Drop every record of an authoritative namespace; returns how many.

        For when changes made elsewhere may have gone unannounced: derived
        records cannot go stale, every other one might have.
        """
        async with self._lock:
            return self._forget_authoritative()

    def _forget_authoritative(self) -> int:
        dropped = 0
        for slab in self.slabs.values():
            refs = [
                meta.ref
                for meta in slab.meta
                if meta is not None and not is_derived(meta.namespace)
            ]
            dropped += slab.remove(refs)
        for namespace in list(self.resident):
            if not is_derived(namespace):
                self.release_namespace(namespace)
        return dropped

    def releases(self, namespace: str) -> int:
        """How often the namespace was released: a load that read the store
        before a release must not make the namespace resident after it."""
        return self._releases.get(namespace, 0)

    def can_search(self, namespace: str) -> bool:
        return namespace in self.resident and namespace not in self.non_unit

    async def search(
        self,
        namespace: str,
        queries: np.ndarray,
        k: int,
        keep: RecordFilter | None = None,
    ) -> list[list[Hit]] | None:
        """Exact cosine top-k within a resident namespace; None if not resident.

        The scan runs in a worker thread, so a large namespace does not hold
        up the event loop; writes to this tier wait for it to finish.
        """
        if not self.can_search(namespace):
            return None
        async with self._lock:
            return await asyncio.to_thread(self._search, namespace, queries, k, keep)

    def _search(
        self,
        namespace: str,
        queries: np.ndarray,
        k: int,
        keep: RecordFilter | None,
    ) -> list[list[Hit]]:
        unit = _normalise(queries)
        merged: list[list[Hit]] = [[] for _ in range(unit.shape[0])]
        for slab in self.slabs.values():
            eligible = slab.rows_where(namespace)
            if keep is not None:
                eligible = _filtered(slab, eligible, keep)
            for i, hits in enumerate(slab.search(unit, k, eligible)):
                merged[i].extend(hits)
        return [sorted(hits, key=lambda h: -h[0])[:k] for hits in merged]

    # -- internals ----------------------------------------------------------

    def _upsert(self, slab: VectorSlab, records: Sequence[Record]) -> None:
        held = slab.versions([r.ref for r in records])
        taken = [r for r in records if self._admits(r, held)]
        self.admitted += len(taken)
        self.rejected += len(records) - len(taken)
        pinned = [r for r in taken if r.namespace in self.pinned]
        loose = [r for r in taken if r.namespace not in self.pinned]
        for group, is_pinned in ((pinned, True), (loose, False)):
            if not group:
                continue
            result = slab.upsert(group, pinned=is_pinned)
            self._note_unit_norms(group)
            self._forget_evicted(result.evicted + result.declined)

    def _admits(self, record: Record, held: dict[RecordKey, int]) -> bool:
        # Rows already held are updated in place, and a resident namespace takes
        # every new record, or it would stop being whole.
        return (
            record.ref in held
            or record.namespace in self.resident
            or record.namespace in self.pinned
            or self.admission.admits(key_hash(record.ref))
        )

    def _remove(self, refs: Sequence[RecordKey]) -> None:
        if refs:
            for slab in self.slabs.values():
                slab.remove(refs)

    def _forget_evicted(self, refs: Sequence[RecordKey]) -> None:
        for namespace in {ns for ns, _ in refs} & self.resident:
            logger.info(
                "%s: namespace %s no longer resident (evicted)", self.name, namespace
            )
            self.resident.discard(namespace)

    def _note_unit_norms(self, records: Sequence[Record]) -> None:
        for record in records:
            if abs(float(np.linalg.norm(record.vector)) - 1.0) > UNIT_NORM_TOLERANCE:
                # TODO: a namespace stays off the exact path for the life of the
                # process after one non-unit vector; a per-row norm would fix it.
                self.non_unit.add(record.namespace)


def _by_dim(records: Iterable[Record]) -> dict[int, list[Record]]:
    groups: dict[int, list[Record]] = {}
    for record in records:
        groups.setdefault(record.dim, []).append(record)
    return groups


def _normalise(queries: np.ndarray) -> np.ndarray:
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    norms = np.linalg.norm(queries, axis=1, keepdims=True)
    out: np.ndarray = queries / np.where(norms > 0, norms, 1.0)
    return out


def _filtered(slab: VectorSlab, eligible: np.ndarray, keep: RecordFilter) -> np.ndarray:
    mask = eligible.copy()
    for row in np.flatnonzero(eligible):
        meta = slab.meta[int(row)]
        mask[row] = meta is not None and keep(meta)
    return mask
