"""T2: a Redis cache shared by every replica (invalidations: invalidations.py)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from memory_tiers.base import Record, RecordKey, Tier, TierError, TierStats
from memory_tiers.codec import VectorDtype, decode_or_miss, encode_record

logger = logging.getLogger(__name__)

KEY_PREFIX = b"tm"
_MGET_CHUNK = 1000

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
def redis_errors(operation: str) -> Iterator[None]:
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
    ) -> None:
        overrides = dict(namespace_ttl_s or {})
        for field_name, value in [("ttl_s", ttl_s), *overrides.items()]:
            if value is not None and value <= 0:
                raise ValueError(f"{field_name}={value}: a TTL must be > 0 or None")
        self.url = url
        self.ttl_s = ttl_s
        self.namespace_ttl_s = overrides
        self.dtype: VectorDtype = dtype
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), retries),
        )
        self._script_sha: str | None = None

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

        with redis_errors("get_many"):
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

        with redis_errors("put_many"):
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
        with redis_errors("delete_many"):
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
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()

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


def _raise_first_error(results: list[Any]) -> None:
    for result in results:
        if isinstance(result, Exception):
            raise TierError("redis", f"put_many: {result}") from result
