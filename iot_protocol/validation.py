"""Rules a verified reading must satisfy to be stored: finite values within each field's
physical range, and a timestamp not too far in the future. Pure functions, no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .messages import Reading

__all__ = ["FIELD_RANGES", "ReadingProblem", "check_reading"]

# Physically plausible ranges per field (inclusive). A field not listed must only be finite.
FIELD_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (-60.0, 100.0),  # degC; BME280 spans -40..85, outdoor extremes beyond
    "humidity": (0.0, 100.0),  # % relative humidity
    "pressure": (300.0, 1100.0),  # hPa
    "battery_level": (0.0, 100.0),  # %
    "signal_strength": (-130.0, 0.0),  # dBm
    "quality_score": (0.0, 1.0),
    "cpu_temperature": (-40.0, 130.0),  # degC, SoC sensor
}

# Timestamps before this (2020-01-01) come from a device whose clock was never set.
MIN_TS_MS = 1_577_836_800_000


@dataclass(frozen=True, slots=True)
class ReadingProblem:
    index: int
    reason: str  # stable code: non_finite | out_of_range | future_timestamp | stale_timestamp | bad_quality
    detail: str


def check_reading(reading: Reading, index: int, *, now_ms: int, max_skew_ms: int) -> ReadingProblem | None:
    """Return the first rule ``reading`` breaks, or None when it may be stored."""
    if reading.ts > now_ms + max_skew_ms:
        return ReadingProblem(index, "future_timestamp", f"ts {reading.ts} is {reading.ts - now_ms} ms ahead")
    if reading.ts < MIN_TS_MS:
        return ReadingProblem(index, "stale_timestamp", f"ts {reading.ts} is before 2020: clock not set")
    if not 0.0 <= reading.quality <= 1.0:
        return ReadingProblem(index, "bad_quality", f"quality {reading.quality} is outside 0..1")
    for name, value in reading.values.items():
        if not math.isfinite(value):
            return ReadingProblem(index, "non_finite", f"{name} is {value}")
        bounds = FIELD_RANGES.get(name)
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            return ReadingProblem(index, "out_of_range", f"{name}={value} outside {bounds[0]}..{bounds[1]}")
    return None
