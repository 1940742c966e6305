"""The time-series seam: where readings are written and read back.

Two implementations, chosen by URL in :func:`cloud_core.tsdb.open_tsdb`:
``sqlite:///path/readings.db`` (embedded) and ``influxdb://host:port/database`` (InfluxDB 1.x).
Writes are idempotent: a point is keyed by (device_id, sensor_type, location, ts), so writing the
same batch twice stores it once.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["MEASUREMENT", "Point", "QueryRow", "StoreError", "StoreUnavailable", "TimeSeriesStore"]

MEASUREMENT = "sensor_readings"


class StoreError(Exception):
    """Root of the time-series store's errors."""

    retryable = False


class StoreUnavailable(StoreError):
    """The store did not take the write (down, timed out, HTTP 5xx). Retrying can help."""

    retryable = True


@dataclass(frozen=True, slots=True)
class Point:
    device_id: str
    sensor_type: str
    location: str
    ts_ms: int
    fields: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class QueryRow:
    """One row of a query: a raw point's field values, or one aggregation window's."""

    ts_ms: int
    device_id: str
    values: Mapping[str, float | None]


class TimeSeriesStore(abc.ABC):
    @abc.abstractmethod
    def write(self, points: Sequence[Point]) -> None:
        """Durably store ``points`` (all or none). Raises StoreUnavailable when it could not."""

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
    ) -> list[QueryRow]:
        """Readings in [start_ms, end_ms), oldest first; aggregated per window when window_s is set."""

    @abc.abstractmethod
    def count(self, *, device_id: str | None = None, start_ms: int = 0, end_ms: int | None = None) -> int:
        """How many points are stored (for tests, benchmarks and the loss ledger)."""

    @abc.abstractmethod
    def init_schema(self) -> None:
        """Create the database, retention policies and downsampling (idempotent)."""

    def close(self) -> None:  # noqa: B027
        """Release connections."""
