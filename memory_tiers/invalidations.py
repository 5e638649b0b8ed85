"""The invalidation channel between replicas: a Redis stream, not pub/sub.

Pub/sub forgets what it sends while a listener is disconnected. A stream
keeps its entries (the newest `max_entries`), so a listener that reconnects
reads on from the last entry it handled and misses nothing. When it cannot
tell whether it missed something (Redis restarted, or entries it had not read
were trimmed), it reports a gap, and the replica drops everything its
resident tiers hold for authoritative namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from memory_tiers.base import RecordKey
from memory_tiers.redis_cache import redis_errors

logger = logging.getLogger(__name__)

STREAM = "tiermem:invalidations"
MAX_ENTRIES = 100_000
BLOCK_MS = 1_000
READ_COUNT = 500
RETRY_MAX_S = 5.0


@dataclass(slots=True, frozen=True)
class Invalidation:
    """Refs written by `origin_id`; `everything` means all may have changed."""

    origin_id: str
    items: list[tuple[RecordKey, int]]
    everything: bool = False


InvalidationHandler = Callable[[Invalidation], Awaitable[None]]
GapHandler = Callable[[], Awaitable[None]]


class InvalidationStream:
    """Publishes invalidations and delivers everyone else's, in order."""

    def __init__(
        self,
        url: str,
        *,
        stream: str = STREAM,
        max_entries: int = MAX_ENTRIES,
        connect_timeout_s: float = 0.5,
    ) -> None:
        self.stream = stream
        self.max_entries = max_entries
        # Reads block for up to BLOCK_MS; the socket must outwait them.
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=BLOCK_MS / 1000 + 5,
            socket_connect_timeout=connect_timeout_s,
        )
        self._listeners: list[asyncio.Task[None]] = []

    async def publish(
        self,
        items: Sequence[tuple[RecordKey, int]],
        origin_id: str,
        everything: bool = False,
    ) -> str:
        """Append one message; returns its stream id. Raises TierError."""
        message = orjson.dumps(
            {
                "origin": origin_id,
                "everything": everything,
                "items": [
                    {"namespace": ns, "key": key, "version": version}
                    for (ns, key), version in items
                ],
            }
        )
        with redis_errors("publish invalidation"):
            entry = await self._client.xadd(
                self.stream, {b"m": message}, maxlen=self.max_entries, approximate=True
            )
        return _text(entry)

    async def subscribe(
        self,
        handler: InvalidationHandler,
        *,
        ignore_origin: str | None = None,
        on_gap: GapHandler | None = None,
    ) -> None:
        """Deliver every message published from now on, in a background task.

        Returns once the starting point is fixed, so a publish that follows is
        delivered. Raises TierError if Redis cannot be reached.
        """
        with redis_errors("subscribe"):
            position = await _position(self._client, self.stream)
        listener = _Listener(self, position, handler, ignore_origin, on_gap)
        name = f"invalidations-{uuid.uuid4().hex[:8]}"
        self._listeners.append(asyncio.create_task(listener.run(), name=name))

    async def close(self) -> None:
        for task in self._listeners:
            task.cancel()
        await asyncio.gather(*self._listeners, return_exceptions=True)
        self._listeners.clear()
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()


@dataclass(slots=True)
class _Position:
    """Where a listener stands: the last entry handled, the server it read
    from, and how many entries the stream had received up to that entry."""

    last_id: str
    run_id: str
    added: int


class _Listener:
    """The loop behind subscribe(): read on, dispatch, notice gaps."""

    def __init__(
        self,
        stream: InvalidationStream,
        position: _Position,
        handler: InvalidationHandler,
        ignore_origin: str | None,
        on_gap: GapHandler | None,
    ) -> None:
        self.source = stream
        self.position = position
        self.handler = handler
        self.ignore_origin = ignore_origin
        self.on_gap = on_gap

    async def run(self) -> None:
        delay_s = 0.1
        broken = False
        while True:
            try:
                if broken:
                    await self._catch_up()
                    broken = False
                reply: Any = await self.source._client.xread(
                    {self.source.stream: self.position.last_id},
                    count=READ_COUNT,
                    block=BLOCK_MS,
                )
            except (RedisError, OSError) as exc:
                broken = True
                logger.warning(
                    "invalidations unreadable (%s), retry in %s s", exc, delay_s
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RETRY_MAX_S)
                continue
            delay_s = 0.1
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    self.position.last_id = _text(entry_id)
                    self.position.added += 1
                    await self._dispatch(fields.get(b"m", b""))

    async def _catch_up(self) -> None:
        """After an outage: report a gap if entries may have been missed."""
        now = await _position(self.source._client, self.source.stream)
        missed = await missed_entries(
            self.source._client, self.source.stream, self.position, now
        )
        if missed:
            logger.warning("invalidations may have been missed; reporting a gap")
            self.position = now
            if self.on_gap is not None:
                await self._guarded(self.on_gap())

    async def _dispatch(self, data: bytes) -> None:
        message = parse_invalidation(data)
        if message is None or message.origin_id == self.ignore_origin:
            return
        await self._guarded(self.handler(message))

    async def _guarded(self, call: Awaitable[None]) -> None:
        try:
            await call
        except Exception:
            logger.exception("invalidation handler failed")


async def missed_entries(
    client: aioredis.Redis, stream: str, before: _Position, now: _Position
) -> bool:
    """True if entries after `before` may be gone: Redis restarted (its run id
    changed), or fewer entries follow `before` than were added since it (the
    stream was trimmed or deleted past what was read)."""
    if now.run_id != before.run_id:
        return True
    added_since = now.added - before.added
    if added_since <= 0:
        return added_since < 0
    present: Any = await client.xrange(
        stream, min=f"({before.last_id}", max="+", count=added_since
    )
    return len(present) < added_since


async def _position(client: aioredis.Redis, stream: str) -> _Position:
    server = await client.info("server")
    run_id = str(server.get("run_id", ""))
    try:
        info: dict[Any, Any] = await client.xinfo_stream(stream)
    except ResponseError:  # no stream yet: nothing was ever added
        return _Position(last_id="0-0", run_id=run_id, added=0)
    last: bytes | str = info.get("last-generated-id") or "0-0"
    return _Position(_text(last), run_id, int(info.get("entries-added", 0)))


def parse_invalidation(data: bytes) -> Invalidation | None:
    """The message as an Invalidation; None (with a warning) if malformed."""
    try:
        body = orjson.loads(data)
        items = [
            ((str(item["namespace"]), str(item["key"])), int(item["version"]))
            for item in body["items"]
        ]
        everything = bool(body["everything"]) if "everything" in body else False
        return Invalidation(str(body["origin"]), items, everything)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        logger.warning("malformed invalidation message skipped: %s", exc)
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_key(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)
