"""Vectors by key: batch lookup, batch upsert, delete."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from app import deps
from app.errors import BadInput
from app.responses import FastJSONResponse, trace_headers, traced
from app.routes.encoding import encode_vector
from app.schemas import Key, LookupRequest, Namespace, PutVectorsRequest
from app.service import TiermemService
from app.settings import Settings
from app.validation import check_batch, check_dim, check_vector
from memory_tiers.hierarchy import Deadline, Trace

router = APIRouter(tags=["vectors"])


@router.post("/v1/lookup")
async def lookup(
    body: LookupRequest,
    service: TiermemService = Depends(deps.service),
    settings: Settings = Depends(deps.settings),
    deadline: Deadline = Depends(deps.deadline),
) -> FastJSONResponse:
    check_batch("keys", len(body.keys), settings)

    trace = Trace()
    result = await service.lookup(body.namespace, body.keys, trace, deadline)

    pending = {key for _, key in result.pending}
    items, missing = [], []
    for key in dict.fromkeys(body.keys):
        record = result.records.get((body.namespace, key))
        if record is None:
            if key not in pending:
                missing.append(key)
            continue
        items.append(
            {
                "key": key,
                "tier": result.tiers[(body.namespace, key)],
                "version": record.version,
                "metadata": record.metadata,
                "vector": encode_vector(record.vector, body.encoding_format),
            }
        )
    content = {
        "namespace": body.namespace,
        "items": items,
        "missing": missing,
        "pending": sorted(pending),
    }
    return traced(content, trace)


@router.put("/v1/vectors")
async def put_vectors(
    body: PutVectorsRequest,
    service: TiermemService = Depends(deps.service),
    settings: Settings = Depends(deps.settings),
) -> FastJSONResponse:
    check_batch("items", len(body.items), settings)
    vectors = [
        check_vector(f"items[{i}].vector", item.vector, settings)
        for i, item in enumerate(body.items)
    ]
    _check_same_dim(
        vectors, await service.hierarchy.store.namespace_dim(body.namespace)
    )

    trace = Trace()
    items = [
        (it.key, vec, it.metadata) for it, vec in zip(body.items, vectors, strict=True)
    ]
    committed = await service.put_vectors(body.namespace, items, trace)

    versions = [{"key": r.key, "version": r.version} for r in committed]
    return traced({"namespace": body.namespace, "items": versions}, trace)


def _check_same_dim(vectors: list[np.ndarray], expected: int | None) -> None:
    first = expected if expected is not None else len(vectors[0])
    for i, vector in enumerate(vectors):
        check_dim(f"items[{i}].vector", len(vector), first)


@router.delete("/v1/vectors/{key}", status_code=204)
async def delete_vector(
    key: Key,
    namespace: Namespace = Query("default"),
    service: TiermemService = Depends(deps.service),
) -> Response:
    return await delete_record(service, namespace, key, field="key")


async def delete_record(
    service: TiermemService, namespace: str, key: str, field: str
) -> Response:
    """204 once the tombstone is committed; 404 naming `field` if absent."""
    trace = Trace()
    if not await service.delete(namespace, key, trace):
        raise BadInput(field, f"{key!r} does not exist in namespace {namespace!r}", 404)
    return Response(status_code=204, headers=trace_headers(trace))
