"""Memories: texts stored with their embeddings, found again by meaning."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from app import deps
from app.errors import BadInput
from app.responses import FastJSONResponse, traced
from app.routes.vectors import delete_record
from app.schemas import MemoryCreate, MemorySearch, Namespace
from app.service import TiermemService
from app.settings import Settings
from app.validation import check_dim, check_k, check_text, check_vector
from memory_tiers.base import Record
from memory_tiers.hierarchy import Deadline, Trace

router = APIRouter(tags=["memories"])

MemoryId = str


def _memory(record: Record, tier: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": record.key,
        "namespace": record.namespace,
        "text": record.text,
        "metadata": record.metadata,
        "version": record.version,
        "updated_at": record.updated_at,
    }
    if tier is not None:
        out["tier"] = tier
    return out


@router.post("/v1/memories", status_code=201)
async def create_memory(
    body: MemoryCreate,
    service: TiermemService = Depends(deps.service),
    settings: Settings = Depends(deps.settings),
    deadline: Deadline = Depends(deps.deadline),
) -> FastJSONResponse:
    check_text("text", body.text, settings)
    check_dim(
        "text",
        service.encoder.dim,
        await service.hierarchy.store.namespace_dim(body.namespace),
    )

    trace = Trace()
    record = await service.add_memory(
        body.namespace, body.text, body.metadata, trace, deadline
    )
    return traced(_memory(record), trace, status_code=201)


@router.get("/v1/memories/{memory_id}")
async def get_memory(
    memory_id: MemoryId,
    namespace: Namespace = Query("default"),
    service: TiermemService = Depends(deps.service),
    deadline: Deadline = Depends(deps.deadline),
) -> FastJSONResponse:
    trace = Trace()
    found = await service.get_record(namespace, memory_id, trace, deadline)
    if found is None:
        raise BadInput("id", f"no memory {memory_id!r} in namespace {namespace!r}", 404)
    record, tier = found
    return traced(_memory(record, tier), trace)


@router.delete("/v1/memories/{memory_id}", status_code=204)
async def delete_memory(
    memory_id: MemoryId,
    namespace: Namespace = Query("default"),
    service: TiermemService = Depends(deps.service),
) -> Response:
    return await delete_record(service, namespace, memory_id, field="id")


@router.post("/v1/memories/search")
async def search_memories(
    body: MemorySearch,
    service: TiermemService = Depends(deps.service),
    settings: Settings = Depends(deps.settings),
    deadline: Deadline = Depends(deps.deadline),
) -> FastJSONResponse:
    check_k(body.k, settings)
    if (body.query is None) == (body.vector is None):
        raise BadInput("query", "give exactly one of query (text) or vector")

    trace = Trace()
    if body.query is not None:
        check_text("query", body.query, settings)
        query = (await service.embed([body.query], trace, deadline)).vectors[0]
    else:
        query = check_vector("vector", body.vector or [], settings)
    check_dim(
        "vector",
        len(query),
        await service.hierarchy.store.namespace_dim(body.namespace),
    )
    result = await service.search(body.namespace, query, body.k, body.filter, trace)

    hits = [{**_memory(record), "score": score} for score, record in result.hits]
    content = {
        "namespace": body.namespace,
        "exact": result.exact,
        "tier": result.tier,
        "results": hits,
    }
    return traced(content, trace)
