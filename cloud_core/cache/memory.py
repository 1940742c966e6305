"""In-process cache (``memory://``): the embedded mode's keys, counters, hashes and streams, with the
same semantics as the Redis implementation. Thread-safe (one lock); state lives as long as the object.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .base import Cache, CacheError, HashSet, StreamAdd, StreamEntry

__all__ = ["MemoryCache"]

_Id = tuple[int, int]


def _fmt(entry_id: _Id) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def _parse(text: str) -> _Id:
    ms, _, seq = text.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        raise CacheError(f"bad stream entry id {text!r}") from None


@dataclass
class _Group:
    last_delivered: _Id
    pending: dict[_Id, str] = field(default_factory=dict)  # id -> consumer
    delivered: dict[_Id, float] = field(default_factory=dict)  # id -> monotonic time of delivery


@dataclass
class _Stream:
    ids: list[_Id] = field(default_factory=list)
    fields: list[dict[str, str]] = field(default_factory=list)
    last_id: _Id = (0, 0)
    groups: dict[str, _Group] = field(default_factory=dict)


class MemoryCache(Cache):
    """``memory://``: everything in dictionaries under one lock."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._cond = threading.Condition()
        self._values: dict[str, str] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # token buckets: key -> (tokens, at)
        self._hashes: dict[str, dict[str, str]] = {}
        self._streams: dict[str, _Stream] = {}
        self._expires: dict[str, float] = {}  # key -> time.monotonic() deadline

    # ---- expiry (call with the lock held) ------------------------------------------------------
    def _alive(self, key: str) -> bool:
        deadline = self._expires.get(key)
        if deadline is not None and time.monotonic() >= deadline:
            self._remove(key)
            return False
        return key in self._values or key in self._hashes or key in self._streams

    def _remove(self, key: str) -> bool:
        self._expires.pop(key, None)
        found = False
        for store in (self._values, self._hashes, self._streams):
            if store.pop(key, None) is not None:
                found = True
        return found

    def _expire(self, key: str, ttl_s: float | None) -> None:
        if ttl_s is None:
            self._expires.pop(key, None)
        else:
            self._expires[key] = time.monotonic() + ttl_s

    def _wrong_type(self, key: str, want: dict[str, object]) -> None:
        for store in (self._values, self._hashes, self._streams):
            if store is not want and key in store:
                raise CacheError(f"key {key!r} holds another kind of value")

    # ---- keys ----------------------------------------------------------------------------------
    def get(self, key: str) -> str | None:
        with self._cond:
            if not self._alive(key):
                return None
            self._wrong_type(key, self._values)  # type: ignore[arg-type]
            return self._values.get(key)

    def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        with self._cond:
            self._remove(key)
            self._values[key] = value
            self._expire(key, ttl_s)

    def set_if_absent(self, key: str, value: str, ttl_s: float | None = None) -> bool:
        with self._cond:
            if self._alive(key):
                return False
            self._values[key] = value
            self._expire(key, ttl_s)
            return True

    def delete(self, *keys: str) -> int:
        with self._cond:
            return sum(1 for key in keys if self._alive(key) and self._remove(key))

    def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        with self._cond:
            if self._alive(key):
                self._wrong_type(key, self._values)  # type: ignore[arg-type]
                try:
                    value = int(self._values[key]) + amount
                except ValueError:
                    raise CacheError(f"key {key!r} does not hold an integer") from None
            else:
                value = amount
                self._expire(key, ttl_s)
            self._values[key] = str(value)
            return value

    def take_tokens(self, key: str, *, rate: float, burst: float, want: int) -> int:
        now = time.monotonic()
        with self._cond:
            tokens, at = self._buckets.get(key, (burst, now))
            tokens = min(burst, tokens + max(0.0, now - at) * rate)
            grant = max(0, min(want, int(tokens)))
            self._buckets[key] = (tokens - grant, max(now, at))
            return grant

    # ---- hashes --------------------------------------------------------------------------------
    def hset(self, key: str, mapping: Mapping[str, str], ttl_s: float | None = None) -> None:
        with self._cond:
            if self._alive(key):
                self._wrong_type(key, self._hashes)  # type: ignore[arg-type]
            self._hashes.setdefault(key, {}).update(mapping)
            if ttl_s is not None:
                self._expire(key, ttl_s)

    def hgetall(self, key: str) -> dict[str, str]:
        with self._cond:
            if not self._alive(key):
                return {}
            self._wrong_type(key, self._hashes)  # type: ignore[arg-type]
            return dict(self._hashes.get(key, {}))

    # ---- streams -------------------------------------------------------------------------------
    def _stream(self, stream: str, *, create: bool) -> _Stream | None:
        if self._alive(stream):
            self._wrong_type(stream, self._streams)  # type: ignore[arg-type]
            return self._streams[stream]
        if not create:
            return None
        s = self._streams[stream] = _Stream()
        return s

    def stream_add(self, stream: str, fields: Mapping[str, str], maxlen: int | None = None) -> str:
        with self._cond:
            s = self._stream(stream, create=True)
            assert s is not None
            now = int(time.time() * 1000)
            last_ms, last_seq = s.last_id
            new_id = (now, 0) if now > last_ms else (last_ms, last_seq + 1)
            s.ids.append(new_id)
            s.fields.append(dict(fields))
            s.last_id = new_id
            if maxlen is not None and len(s.ids) > maxlen:
                del s.ids[: len(s.ids) - maxlen]
                del s.fields[: len(s.fields) - maxlen]
            self._cond.notify_all()
            return _fmt(new_id)

    def write_many(self, ops: Sequence[HashSet | StreamAdd]) -> list[str | None]:
        with self._cond:  # re-entrant: the ops see no other thread's writes in between
            return super().write_many(ops)

    def ensure_group(self, stream: str, group: str, start: str = "0") -> None:
        with self._cond:
            s = self._stream(stream, create=True)
            assert s is not None
            if group not in s.groups:
                s.groups[group] = _Group(s.last_id if start == "$" else _parse(start))

    def _group(self, stream: str, group: str) -> tuple[_Stream, _Group]:
        s = self._stream(stream, create=False)
        if s is None or group not in s.groups:
            raise CacheError(f"no consumer group {group!r} on stream {stream!r}: call ensure_group first")
        return s, s.groups[group]

    def stream_read_group(
        self,
        stream: str,
        group: str,
        consumer: str,
        count: int = 100,
        block_ms: int | None = None,
        pending: bool = False,
    ) -> list[StreamEntry]:
        deadline = time.monotonic() + (block_ms or 0) / 1000
        with self._cond:
            while True:
                s, g = self._group(stream, group)
                if pending:
                    out: list[StreamEntry] = []
                    for entry_id in sorted(i for i, c in g.pending.items() if c == consumer)[:count]:
                        pos = bisect.bisect_left(s.ids, entry_id)
                        found = pos < len(s.ids) and s.ids[pos] == entry_id
                        out.append((_fmt(entry_id), dict(s.fields[pos]) if found else {}))
                    return out
                start = bisect.bisect_right(s.ids, g.last_delivered)
                if start < len(s.ids):
                    stop = min(len(s.ids), start + count)
                    out = []
                    for pos in range(start, stop):
                        g.pending[s.ids[pos]] = consumer
                        g.delivered[s.ids[pos]] = time.monotonic()
                        out.append((_fmt(s.ids[pos]), dict(s.fields[pos])))
                    g.last_delivered = s.ids[stop - 1]
                    return out
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)

    def stream_ack(self, stream: str, group: str, ids: Iterable[str]) -> int:
        with self._cond:
            s = self._stream(stream, create=False)
            if s is None or group not in s.groups:
                return 0
            g = s.groups[group]
            acked = 0
            for i in ids:
                entry_id = _parse(i)
                g.delivered.pop(entry_id, None)
                acked += g.pending.pop(entry_id, None) is not None
            return acked

    def stream_claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[StreamEntry]:
        with self._cond:
            s, g = self._group(stream, group)
            now = time.monotonic()
            out: list[StreamEntry] = []
            for entry_id in sorted(g.pending):
                if len(out) >= count:
                    break
                if (now - g.delivered.get(entry_id, now)) * 1000 < min_idle_ms:
                    continue
                pos = bisect.bisect_left(s.ids, entry_id)
                if pos >= len(s.ids) or s.ids[pos] != entry_id:  # trimmed away: forget it
                    del g.pending[entry_id]
                    g.delivered.pop(entry_id, None)
                    continue
                g.pending[entry_id] = consumer
                g.delivered[entry_id] = now
                out.append((_fmt(entry_id), dict(s.fields[pos])))
            return out

    def stream_len(self, stream: str) -> int:
        with self._cond:
            s = self._stream(stream, create=False)
            return 0 if s is None else len(s.ids)

    def ping(self) -> None:
        return None
