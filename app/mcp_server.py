"""/mcp: the service's operations as MCP tools, over streamable HTTP.

An agent connected through any MCP client can remember texts, recall them by
meaning, forget them, embed texts, look vectors up by key and read the tiers'
state. The tools call the same service methods as the REST routes, with the
same limits. This module deliberately has no `from __future__ import
annotations`: the MCP SDK reads the tools' signatures at runtime to build
their JSON schemas.
"""

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette

from app.errors import BadInput
from app.service import TiermemService
from app.settings import Settings
from app.validation import check_batch, check_k, check_text, check_texts
from memory_tiers.hierarchy import Deadline, Trace
from memory_tiers.pgvector_store import DimensionMismatch

logger = logging.getLogger(__name__)

Tool = TypeVar("Tool", bound=Callable[..., Awaitable[Any]])

INSTRUCTIONS = (
    "tiermem stores texts as memories with their embeddings and finds them again "
    "by meaning. Use remember to store, recall to search, forget to delete."
)


def refusing_bad_input(tool: Tool) -> Tool:
    """Bad input becomes a tool error the client reads, naming the field;
    anything else stays a crash whose text the SDK keeps on the server."""

    @functools.wraps(tool)
    async def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return await tool(*args, **kwargs)
        except (BadInput, DimensionMismatch) as exc:
            raise ToolError(str(exc)) from exc

    return checked  # type: ignore[return-value]


def build_mcp(app: FastAPI, settings: Settings) -> MCPServer:
    """An MCP server whose tools act on the service that `app` runs."""
    # The SDK calls logging.basicConfig here; `tiermem serve` configured logging
    # before building the app, so that call leaves the service's handlers be.
    server = MCPServer(name="tiermem", instructions=INSTRUCTIONS, version="0.1.0")

    def service() -> TiermemService:
        running: TiermemService | None = getattr(app.state, "service", None)
        if running is None:
            raise RuntimeError("tiermem is still starting")
        return running

    def deadline() -> Deadline:
        return Deadline(settings.deadline_ms)

    @server.tool(description="Store a text as a memory; returns its id.")
    @refusing_bad_input
    async def remember(
        text: str, namespace: str = "default", metadata: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        check_text("text", text, settings)
        record = await service().add_memory(
            namespace, text, metadata, Trace(), deadline()
        )
        return {"id": record.key, "namespace": namespace, "version": record.version}

    @server.tool(description="Find the memories closest in meaning to a query.")
    @refusing_bad_input
    async def recall(
        query: str, namespace: str = "default", k: int = 5
    ) -> dict[str, Any]:
        check_text("query", query, settings)
        check_k(k, settings)
        trace = Trace()
        vector = (await service().embed([query], trace, deadline())).vectors[0]
        found = await service().search(namespace, vector, k, None, trace)
        results = [
            {"id": r.key, "text": r.text, "metadata": r.metadata, "score": score}
            for score, r in found.hits
        ]
        return {"exact": found.exact, "results": results}

    @server.tool(description="Delete a memory or vector by id.")
    @refusing_bad_input
    async def forget(id: str, namespace: str = "default") -> dict[str, Any]:
        deleted = await service().delete(namespace, id, Trace())
        return {"id": id, "deleted": deleted}

    @server.tool(description="Embed texts with the service's model (unit vectors).")
    @refusing_bad_input
    async def embed(texts: list[str]) -> dict[str, Any]:
        check_texts("texts", texts, settings)
        embedded = await service().embed(texts, Trace(), deadline())
        return {"dim": embedded.vectors.shape[1], "vectors": embedded.vectors.tolist()}

    @server.tool(description="Vectors by key, with the tier that served each.")
    @refusing_bad_input
    async def lookup(keys: list[str], namespace: str = "default") -> dict[str, Any]:
        check_batch("keys", len(keys), settings)
        result = await service().lookup(namespace, keys, Trace(), deadline())
        found = [
            {"key": ref[1], "tier": result.tiers[ref], "vector": rec.vector.tolist()}
            for ref, rec in result.records.items()
        ]
        pending = {key for _, key in result.pending}
        missing = [
            k
            for k in dict.fromkeys(keys)
            if (namespace, k) not in result.records and k not in pending
        ]
        return {"items": found, "missing": missing, "pending": sorted(pending)}

    @server.tool(description="Each memory tier: health, capacity, use, latency.")
    @refusing_bad_input
    async def tiers() -> dict[str, Any]:
        return {"tiers": await service().hierarchy.stats()}

    return server


def mcp_app(server: MCPServer, settings: Settings) -> Starlette:
    """The streamable-HTTP app serving `server` at /mcp.

    The SDK refuses requests whose Host header it does not know (a guard
    against DNS rebinding); TIERMEM_MCP_ALLOWED_HOSTS lists the names clients
    use to reach this service.
    """
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=list(settings.mcp_allowed_hosts),
        allowed_origins=[f"http://{host}" for host in settings.mcp_allowed_hosts],
    )
    return server.streamable_http_app(
        streamable_http_path="/mcp", transport_security=security, host=settings.host
    )
