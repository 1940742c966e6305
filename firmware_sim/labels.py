"""Ground truth: every injected fault and attack as a label, written as CSV and JSON Lines.

CSV (for pandas and the anomaly evaluation), header exactly ``device_id,start,end,kind,field``;
times are ISO 8601 UTC with milliseconds (``2026-01-05T08:00:00.000Z``); ``field`` is empty when
the event is not about one sensor field. The JSONL twin carries the same rows plus ``category``
(sensor | device | network | attack), ``start_ms``/``end_ms``, ``params`` and, for attacks, the
``expected`` bridge outcome (a dead-letter reason, or ``duplicate``).
"""

from __future__ import annotations

import csv
import dataclasses
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

__all__ = ["CSV_HEADER", "Label", "LabelWriter", "format_ts", "parse_ts", "read_labels"]

CSV_HEADER = ("device_id", "start", "end", "kind", "field")


def format_ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_ts(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Label:
    """One injected event on one device, over [start_ms, end_ms] simulated time."""

    device_id: str
    start_ms: int
    end_ms: int
    kind: str
    category: str
    field: str = ""
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    expected: str | None = None

    def csv_row(self) -> list[str]:
        return [self.device_id, format_ts(self.start_ms), format_ts(self.end_ms), self.kind, self.field]

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "start": format_ts(self.start_ms),
            "end": format_ts(self.end_ms),
            "kind": self.kind,
            "field": self.field,
            "category": self.category,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "params": self.params,
            "expected": self.expected,
        }

    def covers(self, ts_ms: int) -> bool:
        return self.start_ms <= ts_ms <= self.end_ms


class LabelWriter:
    """Collects labels from the fleet (thread-safe) and writes ``X.csv`` plus ``X.jsonl``.

    Labels are flushed as they arrive, so a run stopped early still leaves its ground truth.
    """

    def __init__(self, csv_path: Path | None) -> None:
        self._lock = threading.Lock()
        self.labels: list[Label] = []
        self.csv_path = csv_path
        self.jsonl_path = csv_path.with_suffix(".jsonl") if csv_path is not None else None
        if csv_path is not None:
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            with csv_path.open("w", newline="") as f:
                csv.writer(f).writerow(CSV_HEADER)
            assert self.jsonl_path is not None
            self.jsonl_path.write_bytes(b"")

    def add(self, label: Label) -> None:
        with self._lock:
            self.labels.append(label)
            if self.csv_path is not None and self.jsonl_path is not None:
                with self.csv_path.open("a", newline="") as f:
                    csv.writer(f).writerow(label.csv_row())
                with self.jsonl_path.open("ab") as f:
                    f.write(orjson.dumps(label.to_json()) + b"\n")

    def extend(self, labels: Iterable[Label]) -> None:
        for label in labels:
            self.add(label)

    def __iter__(self) -> Iterator[Label]:
        with self._lock:
            return iter(list(self.labels))


def read_labels(path: Path) -> list[Label]:
    """Read labels back from ``.csv`` (the five columns) or ``.jsonl`` (everything)."""
    out: list[Label] = []
    if path.suffix == ".jsonl":
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            obj = orjson.loads(line)
            out.append(
                Label(
                    device_id=obj["device_id"],
                    start_ms=int(obj.get("start_ms", parse_ts(obj["start"]))),
                    end_ms=int(obj.get("end_ms", parse_ts(obj["end"]))),
                    kind=obj["kind"],
                    category=obj.get("category", ""),
                    field=obj.get("field", ""),
                    params=obj.get("params", {}),
                    expected=obj.get("expected"),
                )
            )
        return out
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != CSV_HEADER:
            raise ValueError(f"{path}: header must be {','.join(CSV_HEADER)}")
        for row in reader:
            out.append(
                Label(
                    device_id=row["device_id"],
                    start_ms=parse_ts(row["start"]),
                    end_ms=parse_ts(row["end"]),
                    kind=row["kind"],
                    category="",
                    field=row["field"],
                )
            )
    return out
