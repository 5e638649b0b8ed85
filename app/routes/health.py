"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.responses import FastJSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> FastJSONResponse:
    """The process is up and answering."""
    return FastJSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> FastJSONResponse:
    """Ready when the model is loaded and the system of record answers."""
    service = getattr(request.app.state, "service", None)
    checks = {"model": service is not None, "system_of_record": False}
    if service is not None:
        checks["system_of_record"] = await service.ready()
    ready = all(checks.values())
    return FastJSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )
