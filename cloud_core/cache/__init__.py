"""Cache seam: :func:`open_cache` picks the implementation by URL scheme."""

from __future__ import annotations

import threading

from .base import Cache, CacheError, CacheUnavailable, HashSet, StreamAdd, StreamEntry

_SHARED: dict[str, Cache] = {}
_SHARED_LOCK = threading.Lock()

__all__ = ["Cache", "CacheError", "CacheUnavailable", "HashSet", "StreamAdd", "StreamEntry", "open_cache"]


def open_cache(url: str) -> Cache:
    """``memory://`` (in-process) or ``redis://[:password@]host:port/db``. Nothing is contacted here.

    Raises ValueError (one line) for any other URL.
    """
    if url == "memory://" or url.startswith("memory://"):
        from .memory import MemoryCache

        # One instance per URL per process, as every client of one Redis sees the same data:
        # the bridge, the analytics worker and the API in `iotctl up` share the event stream.
        with _SHARED_LOCK:
            cache = _SHARED.get(url)
            if cache is None:
                cache = _SHARED[url] = MemoryCache(url)
        return cache
    if url.startswith("redis://") or url.startswith("rediss://"):
        from .redis import RedisCache

        return RedisCache(url)
    raise ValueError(f"unsupported cache URL {url!r}: use memory:// or redis://HOST:PORT/DB")
