"""The cache seam: small shared state for the bridge and analytics (latest readings, dedup keys,
counters, rate limits) and the event stream the anomaly workers consume.

Two implementations, chosen by URL in :func:`cloud_core.cache.open_cache`: ``memory://``
(in-process, thread-safe) and ``redis://host:port/db``. Keys and values are ``str``.

Streams follow Redis Streams with consumer groups: :meth:`Cache.stream_add` appends,
:meth:`Cache.ensure_group` creates a group, :meth:`Cache.stream_read_group` delivers new entries
to one consumer of the group (or, with ``pending=True``, re-delivers the entries it read but did not
ack, e.g. after a crash) and :meth:`Cache.stream_ack` acknowledges them.

:meth:`Cache.write_many` applies many hash and stream writes at once: one round trip for Redis (a
pipeline, not a transaction), for callers that flush buffered writes (the bridge's side effects).

Errors::

    CacheError              not retryable (wrong use: e.g. reading a group that does not exist)
    └── CacheUnavailable    the server did not answer (down, timed out): retrying can help
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Cache", "CacheError", "CacheUnavailable", "HashSet", "StreamAdd", "StreamEntry"]

#: (entry id, fields); ids are Redis stream ids "<ms>-<seq>", increasing.
StreamEntry = tuple[str, dict[str, str]]


class CacheError(Exception):
    """Root of the cache's errors."""

    retryable = False


class CacheUnavailable(CacheError):
    """The cache server did not answer. Retrying can help."""

    retryable = True


@dataclass(frozen=True, slots=True)
class HashSet:
    """A :meth:`Cache.hset` for :meth:`Cache.write_many`."""

    key: str
    mapping: Mapping[str, str]
    ttl_s: float | None = None


@dataclass(frozen=True, slots=True)
class StreamAdd:
    """A :meth:`Cache.stream_add` for :meth:`Cache.write_many`."""

    stream: str
    fields: Mapping[str, str]
    maxlen: int | None = None


class Cache(abc.ABC):
    """Small key-value, hash and stream operations. Thread-safe."""

    url: str

    # ---- keys ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def get(self, key: str) -> str | None:
        """The value, or None if absent or expired."""

    @abc.abstractmethod
    def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        """Store ``value``, expiring after ``ttl_s`` seconds (never when None)."""

    @abc.abstractmethod
    def set_if_absent(self, key: str, value: str, ttl_s: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent; True if stored (dedup: first writer wins)."""

    @abc.abstractmethod
    def delete(self, *keys: str) -> int:
        """Delete keys (of any kind, streams too); returns how many existed."""

    @abc.abstractmethod
    def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        """Add ``amount`` to an integer counter (absent = 0) and return the new value. ``ttl_s`` is
        set when this call creates the key (a fixed-window rate limit), never extended."""

    @abc.abstractmethod
    def take_tokens(self, key: str, *, rate: float, burst: float, want: int) -> int:
        """Token bucket shared by every client of the cache: refill ``key``'s bucket at ``rate`` tokens
        per second up to ``burst`` (a new bucket starts full), then take up to ``want`` whole tokens.
        Returns how many were taken (0..want). Atomic; time is the cache server's clock."""

    # ---- hashes --------------------------------------------------------------------------------
    @abc.abstractmethod
    def hset(self, key: str, mapping: Mapping[str, str], ttl_s: float | None = None) -> None:
        """Set fields of a hash (e.g. latest reading per device); ``ttl_s`` (re)sets its expiry."""

    @abc.abstractmethod
    def hgetall(self, key: str) -> dict[str, str]:
        """All fields of a hash ({} if absent)."""

    # ---- streams -------------------------------------------------------------------------------
    @abc.abstractmethod
    def stream_add(self, stream: str, fields: Mapping[str, str], maxlen: int | None = None) -> str:
        """Append an entry; keep about the last ``maxlen`` entries (approximate trim, like Redis
        ``MAXLEN ~``). Returns the new entry's id."""

    @abc.abstractmethod
    def ensure_group(self, stream: str, group: str, start: str = "0") -> None:
        """Create consumer group ``group`` (and the stream) if it does not exist. ``start="0"``
        delivers entries already in the stream, ``"$"`` only new ones. Idempotent."""

    @abc.abstractmethod
    def stream_read_group(
        self,
        stream: str,
        group: str,
        consumer: str,
        count: int = 100,
        block_ms: int | None = None,
        pending: bool = False,
    ) -> list[StreamEntry]:
        """Up to ``count`` entries for ``consumer``: new ones (waiting up to ``block_ms`` for the
        first if there are none; None or 0 = do not wait) or, with ``pending=True``, those already
        delivered to this consumer and not acked. Raises CacheError if the group does not exist."""

    @abc.abstractmethod
    def stream_ack(self, stream: str, group: str, ids: Iterable[str]) -> int:
        """Acknowledge entries; returns how many were pending."""

    @abc.abstractmethod
    def stream_claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[StreamEntry]:
        """Take over up to ``count`` entries of ``group`` that were delivered to any consumer and not
        acked for at least ``min_idle_ms`` (a consumer that died), oldest first, like Redis
        ``XAUTOCLAIM``: they become ``consumer``'s pending entries (idle time restarts). Entries
        trimmed from the stream meanwhile are dropped from the pending list. Raises CacheError if
        the group does not exist."""

    @abc.abstractmethod
    def stream_len(self, stream: str) -> int:
        """Entries in the stream."""

    # ---- many writes at once -----------------------------------------------------------------------
    def write_many(self, ops: Sequence[HashSet | StreamAdd]) -> list[str | None]:
        """Apply ``ops`` in order, with the same effect as calling :meth:`hset`/:meth:`stream_add`
        for each, in one round trip where the server allows it. Returns, per op, the new stream
        entry id (None for a :class:`HashSet`).

        Not atomic: when it raises (CacheUnavailable, or CacheError for a wrong-type key), some of
        the writes may have been applied, so a caller that retries must tolerate repeated ones."""
        out: list[str | None] = []
        for op in ops:
            if type(op) is HashSet:
                self.hset(op.key, op.mapping, ttl_s=op.ttl_s)
                out.append(None)
            else:
                assert type(op) is StreamAdd
                out.append(self.stream_add(op.stream, op.fields, maxlen=op.maxlen))
        return out

    # ---- lifecycle -----------------------------------------------------------------------------
    @abc.abstractmethod
    def ping(self) -> None:
        """Return if the cache answers; raise CacheUnavailable if not."""

    def close(self) -> None:  # noqa: B027
        """Release connections."""

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
