"""``GET /v1/analytics/summary``: one device's readings over the last ``hours``: how many, mean /
min / max temperature, mean humidity and a data quality score, cached in the cache with a TTL.

Invalidation is O(1): answers are cached under a per-device generation number that
:func:`invalidate_summary` bumps whenever new readings for the device arrive (the analytics
worker calls it), so a stale answer is never read again and simply expires.

Data quality score (0..1): the mean of the readings' ``quality_score`` field when devices send one
(values above 1 are read as percentages), otherwise the share of readings that carry both
temperature and humidity.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import orjson

from ..cache import Cache
from ..tsdb.base import TimeSeriesStore

__all__ = ["Summary", "compute_summary", "invalidate_summary", "summary"]

GEN_KEY = "edu:summary:gen:{device_id}"
SUMMARY_KEY = "edu:summary:{device_id}:{gen}:{hours}"


@dataclass(frozen=True, slots=True)
class Summary:
    device_id: str
    hours: float
    total_readings: int
    temperature_mean: float | None
    temperature_min: float | None
    temperature_max: float | None
    humidity_mean: float | None
    data_quality_score: float | None
    cached: bool = False


def _num(v: object) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def compute_summary(
    store: TimeSeriesStore, device_id: str, hours: float, *, now_ms: int | None = None
) -> Summary:
    """Read the readings and summarise them (no cache)."""
    end = int(time.time() * 1000) if now_ms is None else now_ms
    rows = store.query(
        device_id=device_id, fields=None, start_ms=end - int(hours * 3_600_000), end_ms=end + 1
    )
    temps = [t for r in rows if (t := _num(r.values.get("temperature"))) is not None]
    hums = [h for r in rows if (h := _num(r.values.get("humidity"))) is not None]
    quals = [q for r in rows if (q := _num(r.values.get("quality_score"))) is not None]
    if quals:
        quality: float | None = sum(q / 100.0 if q > 1.0 else q for q in quals) / len(quals)
    elif rows:
        both = sum(
            1
            for r in rows
            if _num(r.values.get("temperature")) is not None and _num(r.values.get("humidity")) is not None
        )
        quality = both / len(rows)
    else:
        quality = None
    return Summary(
        device_id,
        hours,
        len(rows),
        sum(temps) / len(temps) if temps else None,
        min(temps, default=None),
        max(temps, default=None),
        sum(hums) / len(hums) if hums else None,
        quality,
    )


def invalidate_summary(cache: Cache, device_id: str) -> None:
    """New data for ``device_id``: cached summaries of it are no longer served."""
    cache.incr(GEN_KEY.format(device_id=device_id))


def summary(
    store: TimeSeriesStore,
    cache: Cache,
    device_id: str,
    hours: float,
    *,
    ttl_s: float = 60.0,
    now_ms: int | None = None,
) -> Summary:
    """The summary, from the cache when a fresh one is there (``cached=True``), else computed and cached."""
    gen = cache.get(GEN_KEY.format(device_id=device_id)) or "0"
    key = SUMMARY_KEY.format(device_id=device_id, gen=gen, hours=hours)
    hit = cache.get(key)
    if hit is not None:
        return Summary(**{**orjson.loads(hit), "cached": True})
    result = compute_summary(store, device_id, hours, now_ms=now_ms)
    cache.set(key, orjson.dumps(asdict(result)).decode(), ttl_s=ttl_s)
    return result
