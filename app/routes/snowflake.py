"""POST /v1/snowflake/embed: the Snowflake external-function protocol.

Snowflake sends batches of rows as {"data": [[row_number, text], ...]} and
expects {"data": [[row_number, result], ...]} with every row number answered.
The result is the text's embedding as an array, which SQL reads as ARRAY
(castable to VECTOR(FLOAT, 384)). A NULL text gets a NULL result.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict

from app import deps
from app.errors import BadInput
from app.responses import FastJSONResponse, traced
from app.service import TiermemService
from app.settings import Settings
from app.validation import check_batch, check_text
from memory_tiers.hierarchy import Deadline, Trace

router = APIRouter(tags=["snowflake"])


class ExternalFunctionCall(BaseModel):
    """The body Snowflake posts; rows are [row_number, argument, ...]."""

    model_config = ConfigDict(extra="forbid")

    data: list[list[Any]]


@router.post("/v1/snowflake/embed")
async def snowflake_embed(
    body: ExternalFunctionCall,
    service: TiermemService = Depends(deps.service),
    settings: Settings = Depends(deps.settings),
    deadline: Deadline = Depends(deps.deadline),
) -> FastJSONResponse:
    check_batch("data", len(body.data), settings)
    rows = [_row(i, row) for i, row in enumerate(body.data)]
    for i, (_, text) in enumerate(rows):
        if text is not None:
            check_text(f"data[{i}][1]", text, settings)
    texts = [text for _, text in rows if text is not None]

    trace = Trace()
    embedded = await service.embed(texts, trace, deadline)

    vectors = iter(embedded.vectors)
    results = [
        [number, next(vectors) if text is not None else None] for number, text in rows
    ]
    return traced({"data": results}, trace)


def _row(index: int, row: list[Any]) -> tuple[int, str | None]:
    if len(row) != 2 or not isinstance(row[0], int) or isinstance(row[0], bool):
        raise BadInput(f"data[{index}]", "must be [row_number, text]")
    if row[1] is not None and not isinstance(row[1], str):
        raise BadInput(f"data[{index}][1]", "must be a string or null")
    return row[0], row[1]
