"""Ground truth: every injected fault and attack as a label, written as CSV and JSON Lines.

CSV (for pandas and the anomaly evaluation), header exactly ``device_id,start,end,kind,field``;
times are ISO 8601 UTC with milliseconds (``2026-01-05T08:00:00.000Z``); ``field`` is empty when
the event is not about one sensor field. The JSONL twin carries the same rows plus ``category``
(sensor | device | network | attack), ``start_ms``/``end_ms``, ``params`` and, for attacks, the
``expected`` bridge outcome (a dead-letter reason, or ``duplicate``).

A sensor fault that changes values (``spike``, ``drift``, ``stuck``, ``noise_burst``, ``decouple``:
:data:`EFFECT_END_KINDS`) is labelled up to and including the first reading after it ends: its
effect on the data includes the step back to the true value at that reading (a stuck value or a
drift released), so the label's ``end`` is the fault's end plus one sampling interval of the device
(when the writer knows it: :meth:`LabelWriter.sampling_interval`; the offline generator registers
every device). ``start`` and every other kind are the event's own window.
"""

from __future__ import annotations

import csv
import dataclasses
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "CSV_HEADER",
    "EFFECT_END_KINDS",
    "Label",
    "LabelWriter",
    "effect_end_ms",
    "format_ts",
    "parse_ts",
    "read_labels",
]

CSV_HEADER = ("device_id", "start", "end", "kind", "field")

EFFECT_END_KINDS = frozenset({"spike", "drift", "stuck", "noise_burst", "decouple"})
"""Sensor faults whose end shows in the data: the next reading steps back to the true value."""


def effect_end_ms(kind: str, end_ms: int, sampling_interval_ms: int | None) -> int:
    """Where the label of a fault of ``kind`` that stops at ``end_ms`` ends: one sampling interval
    later for :data:`EFFECT_END_KINDS` (the first unaffected reading, where the step back shows,
    is at most that far after the end), else ``end_ms``."""
    if kind in EFFECT_END_KINDS and sampling_interval_ms:
        return end_ms + sampling_interval_ms
    return end_ms


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

    def __init__(self, csv_path: Path | None, sampling_intervals: Mapping[str, int] | None = None) -> None:
        """``sampling_intervals``: device id -> sampling interval (ms), for the labels' effect end."""
        self._lock = threading.Lock()
        self.labels: list[Label] = []
        self._intervals: dict[str, int] = dict(sampling_intervals or {})
        self.csv_path = csv_path
        self.jsonl_path = csv_path.with_suffix(".jsonl") if csv_path is not None else None
        if csv_path is not None:
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            with csv_path.open("w", newline="") as f:
                csv.writer(f).writerow(CSV_HEADER)
            assert self.jsonl_path is not None
            self.jsonl_path.write_bytes(b"")

    def sampling_interval(self, device_id: str, interval_ms: int) -> None:
        """Tell the writer how often ``device_id`` samples (labels added later end at the fault's
        effect end, see the module docstring)."""
        with self._lock:
            self._intervals[device_id] = interval_ms

    def add(self, label: Label) -> None:
        with self._lock:
            if label.category == "sensor":
                end = effect_end_ms(label.kind, label.end_ms, self._intervals.get(label.device_id))
                if end != label.end_ms:
                    label = dataclasses.replace(label, end_ms=end)
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
