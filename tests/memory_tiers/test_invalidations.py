"""The invalidation stream against a real Redis-protocol server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from memory_tiers.embedded_servers import EmbeddedRedis, start_redis
from memory_tiers.invalidations import (
    Invalidation,
    InvalidationStream,
    parse_invalidation,
)


class Inbox:
    """Collects what a listener delivers, and the gaps it reports."""

    def __init__(self) -> None:
        self.messages: list[Invalidation] = []
        self.gaps = 0
        self.changed = asyncio.Event()

    async def handle(self, message: Invalidation) -> None:
        self.messages.append(message)
        self.changed.set()

    async def gap(self) -> None:
        self.gaps += 1
        self.changed.set()

    async def wait_for(self, predicate: object, timeout_s: float = 10.0) -> None:
        async def until() -> None:
            while not predicate():  # type: ignore[operator]
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), timeout_s)


@pytest.fixture
def stream_name() -> str:
    return f"test:invalidations:{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def raw(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def test_messages_arrive_in_order_and_own_ones_are_skipped(
    redis_server: EmbeddedRedis, raw: aioredis.Redis, stream_name: str
) -> None:
    a = InvalidationStream(redis_server.url, stream=stream_name)
    b = InvalidationStream(redis_server.url, stream=stream_name)
    inbox = Inbox()
    await b.subscribe(inbox.handle, ignore_origin="b")

    await b.publish([(("ns", "own"), 1)], "b")
    await raw.xadd(stream_name, {b"m": b"{malformed"})
    await a.publish([(("ns", "k:1"), 7), (("n:s", "k2"), 2**60)], "a")
    await a.publish([], "a", everything=True)
    await inbox.wait_for(lambda: len(inbox.messages) == 2)
    await a.close()
    await b.close()

    assert inbox.messages == [
        Invalidation("a", [(("ns", "k:1"), 7), (("n:s", "k2"), 2**60)]),
        Invalidation("a", [], everything=True),
    ]


async def test_a_handler_error_does_not_stop_the_listener(
    redis_server: EmbeddedRedis, stream_name: str
) -> None:
    stream = InvalidationStream(redis_server.url, stream=stream_name)
    seen: list[int] = []

    async def handler(message: Invalidation) -> None:
        seen.append(message.items[0][1])
        if len(seen) == 1:
            raise RuntimeError("handler bug")

    await stream.subscribe(handler)
    await stream.publish([(("ns", "k"), 1)], "x")
    await stream.publish([(("ns", "k"), 2)], "x")
    for _ in range(200):
        if len(seen) == 2:
            break
        await asyncio.sleep(0.02)
    await stream.close()

    assert seen == [1, 2]


async def test_messages_sent_while_disconnected_arrive_after_reconnecting(
    redis_server: EmbeddedRedis, raw: aioredis.Redis, stream_name: str
) -> None:
    listener = InvalidationStream(redis_server.url, stream=stream_name)
    inbox = Inbox()
    await listener.subscribe(inbox.handle, on_gap=inbox.gap)
    await raw.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

    writer = InvalidationStream(redis_server.url, stream=stream_name)
    await writer.publish([(("ns", "while-away"), 3)], "w")
    await inbox.wait_for(lambda: inbox.messages)
    await writer.close()
    await listener.close()

    assert inbox.messages[0].items == [(("ns", "while-away"), 3)]
    assert inbox.gaps == 0


async def test_trimmed_unread_entries_are_reported_as_a_gap(
    redis_server: EmbeddedRedis, raw: aioredis.Redis, stream_name: str
) -> None:
    writer = InvalidationStream(redis_server.url, stream=stream_name)
    await writer.publish([(("ns", "before"), 1)], "w")
    listener = InvalidationStream(redis_server.url, stream=stream_name)
    inbox = Inbox()
    await listener.subscribe(inbox.handle, on_gap=inbox.gap)

    await raw.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    await raw.xadd(stream_name, {b"m": b"{}"})
    await raw.xtrim(stream_name, maxlen=0)
    await inbox.wait_for(lambda: inbox.gaps)
    await writer.close()
    await listener.close()

    assert inbox.gaps == 1


async def test_a_redis_restart_is_reported_as_a_gap(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis")
    listener = InvalidationStream(server.url)
    inbox = Inbox()
    await listener.subscribe(inbox.handle, on_gap=inbox.gap)
    server.stop()
    await asyncio.sleep(0.3)
    server = start_redis(tmp_path / "redis", port=server.port)
    try:
        await inbox.wait_for(lambda: inbox.gaps)
        writer = InvalidationStream(server.url)
        await writer.publish([(("ns", "after"), 5)], "w")
        await inbox.wait_for(lambda: inbox.messages)
        await writer.close()
    finally:
        await listener.close()
        server.stop()

    assert inbox.gaps == 1
    assert inbox.messages[0].items == [(("ns", "after"), 5)]


def test_malformed_messages_are_refused() -> None:
    assert parse_invalidation(b"[]") is None
    assert parse_invalidation(b'{"origin": "a"}') is None
    assert parse_invalidation(b'{"origin": "a", "items": [{"namespace": "n"}]}') is None
    assert parse_invalidation(b"not json") is None


async def test_publishing_to_a_stopped_server_raises_tier_error(tmp_path: Path) -> None:
    from memory_tiers.base import TierError

    server = start_redis(tmp_path / "redis")
    stream = InvalidationStream(server.url)
    server.stop()

    with pytest.raises(TierError) as raised:
        await stream.publish([(("ns", "k"), 2)], "x")
    await stream.close()

    assert raised.value.tier == "redis"
