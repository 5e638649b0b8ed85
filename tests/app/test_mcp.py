"""/mcp through the official MCP client: remember, recall, forget, tiers."""

from __future__ import annotations

import json
from typing import Any

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import ServiceThread


async def call(session: ClientSession, tool: str, **arguments: Any) -> Any:
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)  # type: ignore[union-attr]


async def test_an_agent_remembers_recalls_and_forgets(
    service: ServiceThread, namespace: str
) -> None:
    async with (
        streamable_http_client(f"{service.url}/mcp") as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        names = {tool.name for tool in (await session.list_tools()).tools}

        stored = await call(
            session,
            "remember",
            text="The meeting moved to Thursday",
            namespace=namespace,
        )
        await call(session, "remember", text="Buy oat milk", namespace=namespace)
        found = await call(
            session, "recall", query="when is the meeting?", namespace=namespace, k=2
        )
        gone = await call(session, "forget", id=stored["id"], namespace=namespace)
        again = await call(
            session, "recall", query="when is the meeting?", namespace=namespace, k=2
        )
        tiers = await call(session, "tiers")

    assert {"remember", "recall", "forget", "embed", "lookup", "tiers"} <= names
    assert found["results"][0]["id"] == stored["id"]
    assert gone == {"id": stored["id"], "deleted": True}
    assert stored["id"] not in {r["id"] for r in again["results"]}
    assert len(tiers["tiers"]) == 6


async def test_bad_tool_input_is_an_error_naming_the_field(
    service: ServiceThread,
) -> None:
    async with (
        streamable_http_client(f"{service.url}/mcp") as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        result = await session.call_tool("recall", {"query": "x", "k": 5000})

    assert result.is_error
    assert "k:" in result.content[0].text  # type: ignore[union-attr]


def test_an_unknown_host_header_is_refused(service: ServiceThread) -> None:
    response = httpx.post(
        f"{service.url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={
            "Host": "evil.example:80",
            "accept": "application/json, text/event-stream",
        },
    )

    assert response.status_code == 421
