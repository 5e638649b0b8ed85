"""Errors as clients see them: 4xx naming the field, 5xx without internals."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from app.responses import FastJSONResponse
from memory_tiers.base import TierError
from memory_tiers.pgvector_store import DimensionMismatch

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"


class BadInput(Exception):
    """Input that passed the schema but breaks a rule; names the field."""

    def __init__(self, field: str, message: str, status_code: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status_code = status_code


def _body(kind: str, message: str, field: str | None = None) -> dict[str, object]:
    error: dict[str, object] = {"type": kind, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def _field_name(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


async def _validation(request: Request, exc: Exception) -> FastJSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    field = _field_name(tuple(first.get("loc", ())))
    messages = [
        f"{_field_name(tuple(e.get('loc', ())))}: {e['msg']}" for e in exc.errors()
    ]
    return FastJSONResponse(
        _body("invalid_request", "; ".join(messages[:5]), field), status_code=422
    )


async def _bad_input(request: Request, exc: Exception) -> FastJSONResponse:
    assert isinstance(exc, BadInput)
    return FastJSONResponse(
        _body("invalid_request", str(exc), exc.field), status_code=exc.status_code
    )


async def _dimension(request: Request, exc: Exception) -> FastJSONResponse:
    return FastJSONResponse(
        _body("invalid_request", str(exc), "vector"), status_code=422
    )


async def _http(request: Request, exc: Exception) -> FastJSONResponse:
    assert isinstance(exc, HTTPException)
    return FastJSONResponse(
        _body("http_error", str(exc.detail)),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _tier(request: Request, exc: Exception) -> FastJSONResponse:
    assert isinstance(exc, TierError)
    request_id = _request_id(request)
    logger.error("request %s: system of record failed: %s", request_id, exc)
    return FastJSONResponse(
        _body("unavailable", f"{exc.tier} is unavailable; request id {request_id}"),
        status_code=503,
        headers={REQUEST_ID_HEADER: request_id},
    )


async def _unexpected(request: Request, exc: Exception) -> FastJSONResponse:
    request_id = _request_id(request)
    logger.exception("request %s failed", request_id)
    return FastJSONResponse(
        _body("internal_error", f"internal error; request id {request_id}"),
        status_code=500,
        headers={REQUEST_ID_HEADER: request_id},
    )


def _request_id(request: Request) -> str:
    existing = getattr(request.state, "request_id", None)
    return existing if isinstance(existing, str) else uuid.uuid4().hex


def install(app: FastAPI) -> None:
    """Register the handlers that turn exceptions into responses."""
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(BadInput, _bad_input)
    app.add_exception_handler(DimensionMismatch, _dimension)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(TierError, _tier)
    app.add_exception_handler(Exception, _unexpected)
