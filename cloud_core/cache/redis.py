"""Redis cache (``redis://[:password@]host:port/db``): keys with TTL, counters, hashes and Streams
with consumer groups, through redis-py's thread-safe connection pool. Connection failures and
timeouts raise CacheUnavailable; other server errors raise CacheError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import redis
import redis.exceptions

from .base import Cache, CacheError, CacheUnavailable, HashSet, StreamAdd, StreamEntry

__all__ = ["RedisCache"]

T = TypeVar("T")

#: Blocking stream reads wait at most this long, so the socket timeout below can bound them.
MAX_BLOCK_MS = 60_000


# A token bucket in a hash {t: tokens, at: ms}: refill by the server's clock, take up to ARGV[3] whole
# tokens, expire the key once it would be full again anyway.
_TAKE_TOKENS = """
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens, at = tonumber(s[1]), tonumber(s[2])
if tokens == nil then tokens = burst; at = now end
if now > at then tokens = math.min(burst, tokens + (now - at) * rate / 1000); at = now end
local grant = math.max(0, math.min(want, math.floor(tokens)))
redis.call('HSET', KEYS[1], 't', tostring(tokens - grant), 'at', tostring(at))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return grant
"""


class RedisCache(Cache):
    """``redis://``. ``?socket_timeout=S`` (default 5 s) bounds every non-blocking command."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            # Any: redis-py's annotations cover bytes and RESP3 replies that decode_responses rules out.
            self._r: Any = redis.Redis.from_url(
                url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5
            )
            # Blocking reads need a socket timeout longer than the block itself.
            self._rb: Any = redis.Redis.from_url(
                url, decode_responses=True, socket_timeout=MAX_BLOCK_MS / 1000 + 5, socket_connect_timeout=5
            )
        except ValueError as exc:
            raise ValueError(f"bad Redis URL {url!r}: {exc}") from None
        self._bucket = self._r.register_script(_TAKE_TOKENS)

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise CacheUnavailable(f"Redis at {self._where()} unavailable: {exc}") from exc
        except redis.exceptions.RedisError as exc:
            raise CacheError(f"Redis: {exc}") from exc

    def _group_call(self, stream: str, group: str, fn: Callable[[], T]) -> T:
        """:meth:`_call` for a consumer-group command: a missing group is named as such."""
        try:
            return self._call(fn)
        except CacheError as exc:
            if "NOGROUP" in str(exc):
                raise CacheError(f"no consumer group {group!r} on stream {stream!r}: call ensure_group first") from exc
            raise

    def _where(self) -> str:
        kw = self._r.connection_pool.connection_kwargs
        return f"{kw.get('host', '?')}:{kw.get('port', '?')}"

    @staticmethod
    def _px(ttl_s: float | None) -> int | None:
        return None if ttl_s is None else max(1, int(ttl_s * 1000))

    # ---- keys ----------------------------------------------------------------------------------
    def get(self, key: str) -> str | None:
        value: str | None = self._call(lambda: self._r.get(key))
        return value

    def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        self._call(lambda: self._r.set(key, value, px=self._px(ttl_s)))

    def set_if_absent(self, key: str, value: str, ttl_s: float | None = None) -> bool:
        return bool(self._call(lambda: self._r.set(key, value, px=self._px(ttl_s), nx=True)))

    def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(self._call(lambda: self._r.delete(*keys)))

    def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        if ttl_s is None:
            return int(self._call(lambda: self._r.incrby(key, amount)))

        def run() -> Any:
            pipe = self._r.pipeline(transaction=True)
            pipe.incrby(key, amount)
            pipe.pexpire(key, self._px(ttl_s), nx=True)
            return pipe.execute()

        return int(self._call(run)[0])

    def take_tokens(self, key: str, *, rate: float, burst: float, want: int) -> int:
        return int(self._call(lambda: self._bucket(keys=[key], args=[repr(rate), repr(burst), int(want)])))

    # ---- hashes --------------------------------------------------------------------------------
    def hset(self, key: str, mapping: Mapping[str, str], ttl_s: float | None = None) -> None:
        if not mapping:
            return

        def run() -> Any:
            pipe = self._r.pipeline(transaction=True)
            pipe.hset(key, mapping=dict(mapping))
            if ttl_s is not None:
                pipe.pexpire(key, self._px(ttl_s))
            return pipe.execute()

        self._call(run)

    def hgetall(self, key: str) -> dict[str, str]:
        return dict(self._call(lambda: self._r.hgetall(key)))

    # ---- streams -------------------------------------------------------------------------------
    def stream_add(self, stream: str, fields: Mapping[str, str], maxlen: int | None = None) -> str:
        return str(self._call(lambda: self._r.xadd(stream, dict(fields), maxlen=maxlen, approximate=True)))

    def write_many(self, ops: Sequence[HashSet | StreamAdd]) -> list[str | None]:
        """One pipeline (no MULTI/EXEC): one round trip for all of ``ops``."""
        if not ops:
            return []

        def run() -> Any:
            pipe = self._r.pipeline(transaction=False)
            kinds: list[bool] = []  # per command: True = an XADD whose reply is returned
            for op in ops:
                if type(op) is HashSet:
                    if not op.mapping:
                        continue
                    pipe.hset(op.key, mapping=dict(op.mapping))
                    kinds.append(False)
                    if op.ttl_s is not None:
                        pipe.pexpire(op.key, self._px(op.ttl_s))
                        kinds.append(False)
                else:
                    assert type(op) is StreamAdd
                    pipe.xadd(op.stream, dict(op.fields), maxlen=op.maxlen, approximate=True)
                    kinds.append(True)
            return kinds, pipe.execute()

        kinds, replies = self._call(run)
        ids = iter(str(r) for r, is_xadd in zip(replies, kinds, strict=True) if is_xadd)
        return [None if type(op) is HashSet else next(ids) for op in ops]

    def ensure_group(self, stream: str, group: str, start: str = "0") -> None:
        try:
            self._call(lambda: self._r.xgroup_create(stream, group, id=start, mkstream=True))
        except CacheError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def stream_read_group(
        self,
        stream: str,
        group: str,
        consumer: str,
        count: int = 100,
        block_ms: int | None = None,
        pending: bool = False,
    ) -> list[StreamEntry]:
        block = min(block_ms, MAX_BLOCK_MS) if block_ms and not pending else None
        client = self._rb if block else self._r
        reply = self._group_call(
            stream,
            group,
            lambda: client.xreadgroup(group, consumer, {stream: "0" if pending else ">"}, count=count, block=block),
        )
        if not reply:
            return []
        entries = reply[0][1]  # RESP2: [[stream, [(id, fields), ...]]]
        return [(str(i), dict(f or {})) for i, f in entries]

    def stream_ack(self, stream: str, group: str, ids: Iterable[str]) -> int:
        ids = list(ids)
        if not ids:
            return 0
        return int(self._call(lambda: self._r.xack(stream, group, *ids)))

    def stream_claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[StreamEntry]:
        out: list[StreamEntry] = []
        start = "0-0"
        while len(out) < count:
            reply = self._group_call(
                stream,
                group,
                lambda s=start, n=count - len(out): self._r.xautoclaim(  # type: ignore[misc]
                    stream, group, consumer, min_idle_ms, start_id=s, count=n
                ),
            )
            start, entries = str(reply[0]), reply[1]
            # Redis 6.2 lists trimmed entries as (id, None); 7 leaves them out (reply[2]).
            out.extend((str(i), dict(f)) for i, f in entries if f is not None)
            if start in ("0-0", "0"):
                break
        return out

    def stream_len(self, stream: str) -> int:
        return int(self._call(lambda: self._r.xlen(stream)))

    def ping(self) -> None:
        self._call(self._r.ping)

    def close(self) -> None:
        self._r.close()
        self._rb.close()
