"""GET /v1/tiers: what each tier holds, how healthy and how fast it is."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app import deps
from app.responses import FastJSONResponse
from app.service import TiermemService

router = APIRouter(tags=["tiers"])


@router.get("/v1/tiers")
async def tiers(service: TiermemService = Depends(deps.service)) -> FastJSONResponse:
    return FastJSONResponse({"tiers": await service.hierarchy.stats()})
