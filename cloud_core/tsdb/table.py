"""Query rows as a table, the one shape ``iotctl query`` and the readings API both print: a header
(``time``, the tags, the fields) and one row per reading or window, times in ISO 8601 UTC."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from .base import QueryRow
from .timespec import iso_ms

__all__ = ["as_csv", "as_objects", "tabulate"]


def tabulate(rows: Sequence[QueryRow], fields: Sequence[str] | None) -> tuple[list[str], list[list[Any]], int]:
    """(header, rows, how many trailing columns are field values)."""
    names = list(fields) if fields else sorted({k for r in rows for k in r.values})
    raw = any(r.sensor_type is not None for r in rows)
    tags = ["device_id", "sensor_type", "location"] if raw else ["device_id"]
    header = ["time", *tags, *names]
    table = [
        [
            iso_ms(r.ts_ms),
            r.device_id,
            *((r.sensor_type or "", r.location or "") if raw else ()),
            *(r.values.get(n) for n in names),
        ]
        for r in rows
    ]
    return header, table, len(names)


def as_objects(header: Sequence[str], table: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(header, row, strict=True)) for row in table]


def as_csv(header: Sequence[str], table: Sequence[Sequence[Any]], n_values: int) -> str:
    """CSV text; values at full precision, a missing value empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    split = len(header) - n_values
    for row in table:
        writer.writerow([*row[:split], *("" if v is None else repr(v) for v in row[split:])])
    return out.getvalue()
