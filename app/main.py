"""The FastAPI application: routes, error handlers, and the lifespan."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request, Response

from app import errors, metrics
from app.mcp_server import build_mcp, mcp_app
from app.routes import (
    dashboard,
    embeddings,
    health,
    memories,
    snowflake,
    tiers,
    vectors,
)
from app.runtime import running
from app.settings import Settings, load_settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app that builds the whole system when its lifespan starts."""
    conf = settings if settings is not None else load_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(conf) as service, mcp.session_manager.run():
            app.state.service = service
            yield

    app = FastAPI(title="tiermem", version="0.1.0", lifespan=lifespan)
    mcp = build_mcp(app, conf)
    app.state.settings = conf
    app.state.metrics = metrics.Metrics()
    errors.install(app)
    app.middleware("http")(app.state.metrics.middleware)
    app.middleware("http")(_request_id)
    routers = (embeddings, vectors, memories, snowflake, tiers, health, metrics)
    for module in (*routers, dashboard):
        app.include_router(module.router)
    # Last: the MCP app answers /mcp and nothing else; mounted at the root so
    # that its one route keeps its exact path.
    app.mount("/", mcp_app(mcp, conf))
    return app


async def _request_id(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    request_id = request.headers.get(errors.REQUEST_ID_HEADER) or uuid.uuid4().hex
    request.state.request_id = request_id[:64]
    response = await call_next(request)
    response.headers[errors.REQUEST_ID_HEADER] = request.state.request_id
    return response
