"""T2: a Redis cache shared by every replica, and its invalidation channel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from memory_tiers.base import Record, RecordKey, Tier, TierError, TierStats
from memory_tiers.codec import VectorDtype, decode_or_miss, encode_record

logger = logging.getLogger(__name__)

INVALIDATION_CHANNEL = "tiermem:invalidate"
KEY_PREFIX = b"tm"
_MGET_CHUNK = 1000
_RESUBSCRIBE_MAX_S = 5.0

# Sets KEYS[1] to ARGV[1] unless the stored record has a higher version, so a
# slow writer or a late promotion cannot overwrite a newer record. Versions
# are compared byte by byte (big-endian, sign bit flipped on the first byte):
# Lua's numbers are doubles and would round versions above 2**53.
# ARGV[2] is the TTL in milliseconds, 0 for none.
_SET_IF_NEWER = """
local current = redis.call('GETRANGE', KEYS[1], 0, 8)
local new = ARGV[1]
if #current == 9 and #new >= 9 and current:byte(1) == new:byte(1) then
  for i = 2, 9 do
    local old_b, new_b = current:byte(i), new:byte(i)
    if i == 2 then
      old_b = (old_b + 128) % 256
      new_b = (new_b + 128) % 256
    end
    if new_b < old_b then return 0 end
    if new_b > old_b then break end
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], new, 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], new)
end
return 1
"""


@dataclass(slots=True, frozen=True)
class Invalidation:
    """One message on the invalidation channel: refs written by `origin_id`."""

    origin_id: str
    items: list[tuple[RecordKey, int]]


InvalidationHandler = Callable[[Invalidation], Awaitable[None]]


def redis_key(ref: RecordKey) -> bytes:
    """The Redis key of a ref: tm:<namespace byte length>:<namespace>:<key>.

    The length prefix keeps ("a:b", "c") and ("a", "b:c") apart without
    escaping, and leaves a namespace scannable as tm:<len>:<namespace>:*.
    """
    namespace = ref[0].encode()
    length = str(len(namespace)).encode()
    return b":".join((KEY_PREFIX, length, namespace, ref[1].encode()))


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{user}:***@{host}{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def _errors(operation: str) -> Iterator[None]:
    """Re-raise what redis-py (or the socket under it) raises as TierError."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise TierError("redis", f"{operation}: {exc}") from exc


class RedisTier(Tier):
    """Records as codec bytes under version-guarded keys with per-namespace TTLs.

    `ttl_s` applies to every namespace not named in `namespace_ttl_s`; a key of
    that mapping ending in "*" matches a namespace prefix (the longest wins).
    A TTL of None keeps the key until Redis evicts it.
    """

    # TODO: MGET and the per-key pipelines assume one Redis primary; Redis
    # Cluster would need the cluster client and per-slot batches.

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float | None = 3600.0,
        namespace_ttl_s: Mapping[str, float | None] | None = None,
        dtype: VectorDtype = "float32",
        socket_timeout_s: float = 1.0,
        connect_timeout_s: float = 0.5,
        retries: int = 1,
        channel: str = INVALIDATION_CHANNEL,
    ) -> None:
        overrides = dict(namespace_ttl_s or {})
        for field_name, value in [("ttl_s", ttl_s), *overrides.items()]:
            if value is not None and value <= 0:
                raise ValueError(f"{field_name}={value}: a TTL must be > 0 or None")
        self.url = url
        self.ttl_s = ttl_s
        self.namespace_ttl_s = overrides
        self.dtype: VectorDtype = dtype
        self.channel = channel
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), retries),
        )
        self._script_sha: str | None = None
        self._subscriptions: list[tuple[PubSub, asyncio.Task[None]]] = []

    def __repr__(self) -> str:
        return f"RedisTier(url={redact_url(self.url)!r}, ttl_s={self.ttl_s})"

    def ttl_for(self, namespace: str) -> float | None:
        """Seconds a record of `namespace` lives in Redis; None: no expiry."""
        if namespace in self.namespace_ttl_s:
            return self.namespace_ttl_s[namespace]
        prefixes = [
            pattern
            for pattern in self.namespace_ttl_s
            if pattern.endswith("*") and namespace.startswith(pattern[:-1])
        ]
        if prefixes:
            return self.namespace_ttl_s[max(prefixes, key=len)]
        return self.ttl_s

    async def get_many(self, refs: Sequence[RecordKey]) -> dict[RecordKey, Record]:
        unique = list(dict.fromkeys(refs))
        if not unique:
            return {}

        with _errors("get_many"):
            async with self._client.pipeline(transaction=False) as pipe:
                for start in range(0, len(unique), _MGET_CHUNK):
                    chunk = unique[start : start + _MGET_CHUNK]
                    pipe.mget([redis_key(ref) for ref in chunk])
                chunks = await pipe.execute()

        values = [value for chunk in chunks for value in chunk]
        found: dict[RecordKey, Record] = {}
        for ref, value in zip(unique, values, strict=True):
            record = decode_or_miss(ref, value, "redis")
            if record is not None:
                found[ref] = record
        logger.debug("redis get_many: %s refs, %s hits", len(unique), len(found))
        return found

    async def put_many(self, records: Sequence[Record]) -> None:
        if not records:
            return
        calls = [(redis_key(r.ref), encode_record(r, self.dtype), r) for r in records]

        with _errors("put_many"):
            sha = await self._script()
            results = await self._run_script(sha, calls)
            if any(isinstance(result, NoScriptError) for result in results):
                # The server lost its script cache (restart, SCRIPT FLUSH); the
                # script is idempotent, so running the whole batch again is safe.
                self._script_sha = None
                results = await self._run_script(await self._script(), calls)
        _raise_first_error(results)
        logger.debug("redis put_many: %s records", len(records))

    async def delete_many(self, refs: Sequence[RecordKey]) -> None:
        if not refs:
            return
        with _errors("delete_many"):
            async with self._client.pipeline(transaction=False) as pipe:
                for ref in refs:
                    pipe.delete(redis_key(ref))
                await pipe.execute()

    async def stats(self) -> TierStats:
        """Memory use from INFO memory; healthy=False (not a raise) when down."""
        try:
            memory = await self._client.info("memory")
            items = await self._client.dbsize()
        except (RedisError, OSError) as exc:
            logger.warning("redis stats failed: %s", exc)
            detail = {"url": redact_url(self.url), "error": type(exc).__name__}
            return TierStats(name=self.name, healthy=False, detail=detail)

        maxmemory = int(memory.get("maxmemory", 0))
        return TierStats(
            name=self.name,
            capacity_bytes=maxmemory or None,
            used_bytes=int(memory.get("used_memory", 0)),
            # TODO: DBSIZE counts every key of the database, not only tiermem's;
            # a shared database over-reports items.
            items=int(items),
            detail={
                "url": redact_url(self.url),
                "maxmemory_policy": memory.get("maxmemory_policy"),
            },
        )

    async def close(self) -> None:
        for pubsub, task in self._subscriptions:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
        self._subscriptions.clear()
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()

    async def publish_invalidation(
        self, refs_with_versions: Sequence[tuple[RecordKey, int]], origin_id: str
    ) -> int:
        """Tell every replica these refs changed; returns how many listened."""
        if not refs_with_versions:
            return 0
        message = orjson.dumps(
            {
                "origin": origin_id,
                "items": [
                    {"namespace": ns, "key": key, "version": version}
                    for (ns, key), version in refs_with_versions
                ],
            }
        )
        with _errors("publish_invalidation"):
            receivers: int = await self._client.publish(self.channel, message)
        return receivers

    async def subscribe(
        self, handler: InvalidationHandler, *, ignore_origin: str | None = None
    ) -> None:
        """Call `handler` for every invalidation, in a background task.

        Returns once Redis has confirmed the subscription, so a publish that
        follows is seen. Messages from `ignore_origin` (this replica's own id)
        are skipped. The task lives until close().
        """
        pubsub = self._client.pubsub()
        try:
            with _errors("subscribe"):
                await pubsub.subscribe(self.channel)
                await _await_confirmation(pubsub)
        except TierError:
            await pubsub.aclose()
            raise

        listener = _Listener(pubsub, handler, ignore_origin)
        task = asyncio.create_task(listener.run(), name=f"redis-sub-{uuid.uuid4()}")
        self._subscriptions.append((pubsub, task))

    async def _script(self) -> str:
        if self._script_sha is None:
            self._script_sha = str(await self._client.script_load(_SET_IF_NEWER))
        return self._script_sha

    async def _run_script(
        self, sha: str, calls: list[tuple[bytes, bytes, Record]]
    ) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for key, value, record in calls:
                pipe.evalsha(sha, 1, key, value, self._ttl_ms(record.namespace))
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    def _ttl_ms(self, namespace: str) -> int:
        ttl_s = self.ttl_for(namespace)
        return 0 if ttl_s is None else max(1, int(ttl_s * 1000))


class _Listener:
    """The loop behind subscribe(): read, decode, filter, dispatch."""

    def __init__(
        self, pubsub: PubSub, handler: InvalidationHandler, ignore_origin: str | None
    ) -> None:
        self.pubsub = pubsub
        self.handler = handler
        self.ignore_origin = ignore_origin

    async def run(self) -> None:
        delay_s = 0.1
        while True:
            try:
                message = await self.pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=None
                )
                delay_s = 0.1
            except (RedisError, OSError) as exc:
                # TODO: invalidations published while the channel is down are
                # lost; replicas should re-check resident versions on reconnect.
                logger.warning(
                    "invalidation channel lost (%s); retry in %s s", exc, delay_s
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, _RESUBSCRIBE_MAX_S)
                continue
            if message is not None and message.get("type") == "message":
                await self._dispatch(message["data"])

    async def _dispatch(self, data: bytes) -> None:
        invalidation = parse_invalidation(data)
        if invalidation is None or invalidation.origin_id == self.ignore_origin:
            return
        try:
            await self.handler(invalidation)
        except Exception:
            logger.exception("invalidation handler failed")


def parse_invalidation(data: bytes) -> Invalidation | None:
    """The message as an Invalidation; None (with a warning) if malformed."""
    try:
        body = orjson.loads(data)
        items = [
            ((str(item["namespace"]), str(item["key"])), int(item["version"]))
            for item in body["items"]
        ]
        return Invalidation(origin_id=str(body["origin"]), items=items)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        logger.warning("malformed invalidation message skipped: %s", exc)
        return None


async def _await_confirmation(pubsub: PubSub, timeout_s: float = 5.0) -> None:
    message = await pubsub.get_message(timeout=timeout_s)
    if message is None or message.get("type") != "subscribe":
        raise TierError("redis", f"no subscribe confirmation: {message!r}")


def _raise_first_error(results: list[Any]) -> None:
    for result in results:
        if isinstance(result, Exception):
            raise TierError("redis", f"put_many: {result}") from result
