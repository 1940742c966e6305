"""The time-series seam: where readings are written and read back.

Two implementations, chosen by URL in :func:`cloud_core.tsdb.open_tsdb`:
``sqlite:///path/readings.db`` (embedded) and ``influxdb://host:port/database`` (InfluxDB 1.x).
Writes are idempotent: a point is keyed by (device_id, sensor_type, location, ts), so writing the
same batch twice stores it once.

Errors::

    StoreError                 not retryable (bad input the store refused, e.g. a field type conflict)
    ├── StoreRejected          the store refused (part of) a write: retrying the same points cannot help
    └── StoreUnavailable       down, timed out, HTTP 5xx (InfluxDB 1.6 "engine: error syncing wal"): retry
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "AGGREGATES",
    "DAILY_MEASUREMENT",
    "HOURLY_MEASUREMENT",
    "MEASUREMENT",
    "RESOLUTIONS",
    "Point",
    "PointKey",
    "QueryRow",
    "Resolution",
    "StoreError",
    "StoreRejected",
    "StoreUnavailable",
    "TimeSeriesStore",
    "pick_resolution",
]

MEASUREMENT = "sensor_readings"
HOURLY_MEASUREMENT = "sensor_readings_hourly"
DAILY_MEASUREMENT = "sensor_readings_daily"

#: Aggregations every store computes per window (InfluxQL names).
AGGREGATES = ("mean", "min", "max", "sum", "count", "first", "last", "median")

Resolution = Literal["auto", "raw", "hourly", "daily"]
RESOLUTIONS: tuple[str, ...] = ("auto", "raw", "hourly", "daily")

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
#: resolution="auto" reads hourly means for ranges longer than this, daily means beyond the next.
AUTO_HOURLY_AFTER_MS = 7 * DAY_MS
AUTO_DAILY_AFTER_MS = 90 * DAY_MS


class StoreError(Exception):
    """Root of the time-series store's errors; ``status`` and ``body`` carry the server's answer
    (HTTP status and first 500 characters) when there was one."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = None, body: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class StoreUnavailable(StoreError):
    """The store did not take the write (down, timed out, HTTP 5xx). Retrying can help."""

    retryable = True


class StoreRejected(StoreError):
    """The store refused the points themselves (InfluxDB 400 "partial write", field type conflict,
    a non-finite value). Retrying the same points cannot help: dead-letter them."""

    retryable = False


@dataclass(frozen=True, slots=True)
class Point:
    device_id: str
    sensor_type: str
    location: str
    ts_ms: int
    fields: Mapping[str, float]


#: What a point is stored under: (device_id, sensor_type, location, ts_ms).
PointKey = tuple[str, str, str, int]


@dataclass(frozen=True, slots=True)
class QueryRow:
    """One row of a query: a raw point's field values, or one aggregation window's.

    ``sensor_type`` and ``location`` are set for raw rows (and rows read from a rollup without a
    window); aggregated rows are per device and window, so they are None there.
    """

    ts_ms: int
    device_id: str
    values: Mapping[str, float | None]
    sensor_type: str | None = None
    location: str | None = None


def pick_resolution(
    resolution: str, *, start_ms: int, end_ms: int, window_s: int | None, agg: str
) -> Literal["raw", "hourly", "daily"]:
    """The table a query reads. ``auto`` reads the hourly (daily) means for ranges over 7 (90) days,
    but only where that gives the same answer shape: no window, or a mean over a window that is a
    whole number of the rollup's buckets. Raises ValueError for an unknown resolution."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unknown resolution {resolution!r}: use one of {', '.join(RESOLUTIONS)}")
    if resolution != "auto":
        return resolution  # type: ignore[return-value]
    span = end_ms - start_ms
    if window_s is not None and agg != "mean":
        return "raw"
    window_ms = None if window_s is None else window_s * 1000
    if span > AUTO_DAILY_AFTER_MS and (window_ms is None or window_ms % DAY_MS == 0):
        return "daily"
    if span > AUTO_HOURLY_AFTER_MS and (window_ms is None or window_ms % HOUR_MS == 0):
        return "hourly"
    return "raw"


class TimeSeriesStore(abc.ABC):
    """Both implementations are safe to use from several threads (the bridge writes from one while
    the API reads from another)."""

    url: str
    #: True when the store has a wire format (InfluxDB's line protocol): a writer may then encode
    #: points as they arrive (:meth:`encode_points`, small batches, another thread) and later write
    #: the concatenated bodies at once (:meth:`write_encoded`) instead of calling :meth:`write`.
    encodes_points: bool = False

    @abc.abstractmethod
    def write(self, points: Sequence[Point]) -> None:
        """Durably store ``points`` (all or none). Raises StoreUnavailable when it could not, and
        StoreRejected when the points themselves were refused."""

    def encode_points(self, points: Sequence[Point]) -> bytes:
        """``points`` in the store's wire format; bodies concatenate. Raises StoreRejected for a
        point the store cannot hold. Only where :attr:`encodes_points`."""
        raise NotImplementedError(f"{type(self).__name__} takes points only")

    def write_encoded(self, body: bytes) -> None:
        """:meth:`write` for a body made by :meth:`encode_points` (or several, concatenated)."""
        raise NotImplementedError(f"{type(self).__name__} takes points only")

    @abc.abstractmethod
    def query(
        self,
        *,
        device_id: str | None,
        fields: Sequence[str] | None,
        start_ms: int,
        end_ms: int,
        window_s: int | None = None,
        agg: str = "mean",
        limit: int | None = None,
        resolution: str = "raw",
    ) -> list[QueryRow]:
        """Readings in [start_ms, end_ms), oldest first; aggregated per window when window_s is set.

        Args:
            device_id: one device, or None for all devices.
            fields: field names to return, or None for all.
            window_s: aggregate per device over windows of this many seconds (aligned to the epoch:
                bucket = ts - ts % window), one of :data:`AGGREGATES` given by ``agg``.
            limit: at most this many rows.
            resolution: ``raw`` readings, ``hourly``/``daily`` means (the downsampled rollups), or
                ``auto`` (see :func:`pick_resolution`).

        Raises:
            ValueError: unknown agg or resolution, non-positive window, start after end.
            StoreUnavailable: the store could not be reached.
        """

    @abc.abstractmethod
    def latest_ts(self, device_ids: Sequence[str]) -> dict[str, int]:
        """The newest stored timestamp (ms) of each of ``device_ids`` that has a point (any series).
        Raises StoreUnavailable."""

    @abc.abstractmethod
    def stored_fields(self, keys: Sequence[PointKey]) -> dict[PointKey, dict[str, float]]:
        """The fields stored under each of ``keys`` that has a point. The bridge asks before writing
        a reading that could land on a stored key, so a different reading is never silently
        overwritten (docs/bridge.md, duplicate timestamps). Raises StoreUnavailable."""

    @abc.abstractmethod
    def count(self, *, device_id: str | None = None, start_ms: int = 0, end_ms: int | None = None) -> int:
        """How many points are stored (for tests, benchmarks and the loss ledger)."""

    @abc.abstractmethod
    def init_schema(self) -> None:
        """Create the database, retention policies and downsampling (idempotent)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Return if the store answers; raise StoreUnavailable if not (for /ready)."""

    def close(self) -> None:  # noqa: B027
        """Release connections."""

    def __enter__(self) -> TimeSeriesStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_query_args(*, start_ms: int, end_ms: int, window_s: int | None, agg: str) -> None:
    """Shared argument checks for :meth:`TimeSeriesStore.query`."""
    if agg not in AGGREGATES:
        raise ValueError(f"unknown aggregation {agg!r}: use one of {', '.join(AGGREGATES)}")
    if window_s is not None and window_s <= 0:
        raise ValueError(f"window must be positive, got {window_s}s")
    if start_ms > end_ms:
        raise ValueError("start is after end")
