"""POST /v1/embeddings: OpenAI-compatible text embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app import deps
from app.errors import BadInput
from app.responses import FastJSONResponse, traced
from app.routes.encoding import encode_vector
from app.schemas import EmbeddingsRequest
from app.service import TiermemService
from app.settings import Settings
from app.validation import check_text, check_texts
from memory_tiers.hierarchy import Deadline, Trace

router = APIRouter(tags=["embeddings"])


@router.post("/v1/embeddings")
async def create_embeddings(
    body: EmbeddingsRequest,
    service: TiermemService = Depends(deps.service),
    settings: Settings = Depends(deps.settings),
    deadline: Deadline = Depends(deps.deadline),
) -> FastJSONResponse:
    if isinstance(body.input, str):
        check_text("input", body.input, settings)
        texts = [body.input]
    else:
        check_texts("input", body.input, settings)
        texts = body.input
    _check_model(body, settings, service.encoder.dim)

    trace = Trace()
    embedded = await service.embed(texts, trace, deadline)

    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": encode_vector(vector, body.encoding_format),
        }
        for i, vector in enumerate(embedded.vectors)
    ]
    usage = {"prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens}
    content = {
        "object": "list",
        "data": data,
        "model": settings.model_name,
        "usage": usage,
    }
    return traced(content, trace)


def _check_model(body: EmbeddingsRequest, settings: Settings, dim: int) -> None:
    accepted = {settings.model_name, f"sentence-transformers/{settings.model_name}"}
    if body.model is not None and body.model not in accepted:
        raise BadInput(
            "model", f"{body.model!r} is not served; use {settings.model_name!r}"
        )
    if body.dimensions is not None and body.dimensions != dim:
        raise BadInput("dimensions", f"this model produces {dim} dimensions only")
