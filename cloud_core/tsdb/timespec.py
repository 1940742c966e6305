"""How people write times and spans for queries, shared by ``iotctl query`` and the readings API:
durations (``90s``, ``5m``, ``1h``, ``7d``, ``2w``, ``250ms``), instants (ISO 8601, or epoch ms), and
ISO 8601 output with milliseconds. Errors are ValueError with a one-line message."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = ["iso_ms", "parse_duration_ms", "parse_time_ms"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"^\s*(\d{1,12})\s*(ms|s|m|h|d|w)\s*$")


def parse_duration_ms(text: str, what: str) -> int:
    """``90s``, ``5m``, ``1h``, ``7d``, ``2w``, ``250ms`` -> milliseconds."""
    m = _DURATION.match(text)
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"bad {what} {text!r}: use a positive number and a unit, e.g. 90s, 5m, 1h, 7d, 2w")
    return int(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_time_ms(text: str, what: str) -> int:
    """ISO 8601 (``2024-05-01T12:00:00Z``; no zone means UTC) or integer epoch ms."""
    if text.strip().isdigit() and len(text.strip()) <= 15:
        return int(text)
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"bad {what} time {text!r}: use ISO 8601, e.g. 2024-05-01T12:00:00Z") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def iso_ms(ts_ms: int) -> str:
    """ISO 8601 UTC with milliseconds: ``2024-05-01T12:00:00.123Z``."""
    dt = _EPOCH + timedelta(milliseconds=ts_ms)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"
