"""Time-series store seam: :func:`open_tsdb` picks the implementation by URL scheme."""

from __future__ import annotations

from .base import (
    AGGREGATES,
    MEASUREMENT,
    RESOLUTIONS,
    Point,
    QueryRow,
    StoreError,
    StoreRejected,
    StoreUnavailable,
    TimeSeriesStore,
)

__all__ = [
    "AGGREGATES",
    "MEASUREMENT",
    "RESOLUTIONS",
    "Point",
    "QueryRow",
    "StoreError",
    "StoreRejected",
    "StoreUnavailable",
    "TimeSeriesStore",
    "open_tsdb",
]

ACCEPTED = "sqlite:///PATH or influxdb://[USER:PASS@]HOST:PORT/DB[?rp=NAME&retention=30d&timeout=10]"


def open_tsdb(url: str) -> TimeSeriesStore:
    """The store for ``url``: ``sqlite:///path`` (embedded) or ``influxdb://host:port/db`` (InfluxDB 1.x).

    Nothing is contacted here; the first write or query does. Raises ValueError (one line) for any
    other URL.
    """
    if url.startswith("sqlite:///"):
        from .embedded import EmbeddedStore

        return EmbeddedStore(url)
    if url.startswith("influxdb://"):
        from .influx import InfluxStore

        return InfluxStore(url)
    raise ValueError(f"unsupported time-series store URL {url!r}: use {ACCEPTED}")
