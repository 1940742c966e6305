"""Rules a verified reading must satisfy to be stored: names of the contract's character set, finite
values within each field's physical range, and a timestamp neither too far in the future nor from a
clock that was never set. Pure functions, no I/O."""

from __future__ import annotations

import math
import re

from .messages import Reading, ReadingProblem

__all__ = [
    "FIELD_RANGES",
    "MIN_TS_MS",
    "NAME_RE",
    "RESERVED_FIELD_NAMES",
    "ReadingProblem",
    "check_reading",
    "name_problem",
]

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

# Sensor types and field names: one character set, which every store holds the same way (InfluxDB's
# line protocol cannot carry a newline, and escapes ',', '=' and ' '; the embedded store took them, so
# the outcome depended on the store). A letter first, then letters, digits, '_', '.', '-'; 1-64.
NAME_RE = re.compile(r"\A[A-Za-z][A-Za-z0-9_.\-]{0,63}\Z")
# Field names that would collide with the point's time or its tags in InfluxDB.
RESERVED_FIELD_NAMES = frozenset({"time", "device_id", "sensor_type", "location"})


def name_problem(reading: Reading) -> str | None:
    """What is wrong with the sensor type or a field name of ``reading``, or None."""
    if not NAME_RE.match(reading.sensor_type):
        return f"sensor_type {reading.sensor_type[:64]!r} is not a name (a letter, then letters, digits, _ . -)"
    for name in reading.values:
        if not NAME_RE.match(name):
            return f"field name {name[:64]!r} is not a name (a letter, then letters, digits, _ . -)"
        if name in RESERVED_FIELD_NAMES:
            return f"field name {name!r} is reserved"
    return None


def check_reading(reading: Reading, index: int, *, now_ms: int, max_skew_ms: int) -> ReadingProblem | None:
    """Return the first rule ``reading`` breaks, or None when it may be stored."""
    bad_name = name_problem(reading)
    if bad_name is not None:
        return ReadingProblem(index, "bad_name", bad_name)
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
