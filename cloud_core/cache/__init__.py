"""Cache seam: :func:`open_cache` picks the implementation by URL scheme."""

from __future__ import annotations

from .base import Cache, CacheError, CacheUnavailable, StreamEntry

__all__ = ["Cache", "CacheError", "CacheUnavailable", "StreamEntry", "open_cache"]


def open_cache(url: str) -> Cache:
    """``memory://`` (in-process) or ``redis://[:password@]host:port/db``. Nothing is contacted here.

    Raises ValueError (one line) for any other URL.
    """
    if url == "memory://" or url.startswith("memory://"):
        from .memory import MemoryCache

        return MemoryCache(url)
    if url.startswith("redis://") or url.startswith("rediss://"):
        from .redis import RedisCache

        return RedisCache(url)
    raise ValueError(f"unsupported cache URL {url!r}: use memory:// or redis://HOST:PORT/DB")
