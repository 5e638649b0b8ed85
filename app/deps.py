"""Request-scoped access to the service and settings built at start."""

from __future__ import annotations

from fastapi import Request

from app.errors import BadInput
from app.service import TiermemService
from app.settings import Settings
from memory_tiers.hierarchy import Deadline

DEADLINE_HEADER = "X-Tiermem-Deadline-Ms"
MAX_DEADLINE_MS = 600_000.0


def service(request: Request) -> TiermemService:
    svc: TiermemService = request.app.state.service
    return svc


def settings(request: Request) -> Settings:
    conf: Settings = request.app.state.settings
    return conf


def deadline(request: Request) -> Deadline:
    """The request's time budget: the header if given, else the configured default."""
    raw = request.headers.get(DEADLINE_HEADER)
    budget = settings(request).deadline_ms
    if raw is not None:
        try:
            budget = float(raw)
        except ValueError:
            raise BadInput(
                DEADLINE_HEADER, f"must be a number of milliseconds, got {raw!r}"
            ) from None
        if not 0 < budget <= MAX_DEADLINE_MS:
            raise BadInput(DEADLINE_HEADER, f"must be in (0, {MAX_DEADLINE_MS:.0f}] ms")
    return Deadline(budget)
