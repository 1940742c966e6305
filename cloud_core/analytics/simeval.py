"""Scoring a firmware_sim scenario against its ground truth with the same detector and metric as
the NAB evaluation (:mod:`.evaluate`), per device (all its numeric fields together).

Accepted formats (CSV with a header, or JSON Lines; times are ms since the epoch or ISO 8601):
- readings: ``device`` (or ``device_id``), ``ts`` (or ``timestamp``), then one column per numeric
  field; in JSONL, the fields may also sit in a ``values`` object.
- labels: ``device`` (or ``device_id``), ``start``, ``end`` (inclusive), ``kind`` (spike, drift,
  stuck, dropout, ...).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iot_protocol import FIELD_RANGES

from .errors import DatasetError
from .evaluate import FileScore, LabelledSeries, Totals, parse_ts_ms, run_detector, score_alerts, totals

__all__ = ["SimEvaluation", "SimLabel", "evaluate_sim", "load_sim_data", "load_sim_labels"]


@dataclass(frozen=True, slots=True)
class SimLabel:
    device: str
    start_ms: int
    end_ms: int
    kind: str


def _ts(v: Any) -> int:
    if isinstance(v, int | float):
        return int(v)
    s = str(v).strip()
    return int(float(s)) if s.replace(".", "", 1).isdigit() else parse_ts_ms(s.replace("Z", "+00:00"))


def _records(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}", path=str(path)) from exc
    if path.suffix in (".jsonl", ".ndjson") or text.lstrip().startswith("{"):
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: not JSON Lines: {exc}", path=str(path)) from exc
    return list(csv.DictReader(text.splitlines()))


def load_sim_labels(path: Path) -> list[SimLabel]:
    out = []
    for i, r in enumerate(_records(Path(path)), start=1):
        try:
            out.append(
                SimLabel(
                    str(r.get("device") or r["device_id"]),
                    _ts(r["start"]),
                    _ts(r["end"]),
                    str(r.get("kind", "anomaly")),
                )
            )
        except (KeyError, ValueError, DatasetError):
            raise DatasetError(f"{path} record {i}: needs device, start, end, kind", path=str(path)) from None
    return out


def load_sim_data(path: Path) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """device -> field -> (ts_ms, values), in time order."""
    acc: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for i, r in enumerate(_records(Path(path)), start=1):
        try:
            device = str(r.get("device") or r["device_id"])
            ts = _ts(r.get("ts", r.get("timestamp")))
        except (KeyError, ValueError, TypeError, DatasetError):
            raise DatasetError(f"{path} record {i}: needs device and ts", path=str(path)) from None
        fields = r.get("values") if isinstance(r.get("values"), dict) else r
        for k, v in fields.items():
            if k in ("device", "device_id", "ts", "timestamp", "sensor_type", "location", "values"):
                continue
            try:
                acc[device][k].append((ts, float(v)))
            except (TypeError, ValueError):
                continue
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for device, fields_ in acc.items():
        out[device] = {}
        for k, pts in fields_.items():
            pts.sort()
            out[device][k] = (
                np.array([p[0] for p in pts], np.int64),
                np.array([p[1] for p in pts], np.float64),
            )
    return out


@dataclass(frozen=True, slots=True)
class SimEvaluation:
    totals: Totals
    by_kind: dict[str, tuple[int, int]]  # kind -> (scored windows, detected)
    alerts: tuple[tuple[str, str], ...]  # (device, ts ms as text)


def evaluate_sim(
    data: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    labels: list[SimLabel],
    detector: str = "ensemble",
) -> SimEvaluation:
    scores: list[FileScore] = []
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    alerts: list[tuple[str, str]] = []
    for device in sorted(data):
        mine = [lab for lab in labels if lab.device == device]
        windows = tuple((lab.start_ms, lab.end_ms) for lab in mine)
        alert_ms: set[int] = set()
        learning_end: int | None = None
        for field, (ts, vals) in sorted(data[device].items()):
            s = LabelledSeries(f"{device}/{field}", tuple(str(t) for t in ts.tolist()), ts, vals, windows)
            le = s.learning_end_ms
            learning_end = (
                le if learning_end is None or (le is not None and le > learning_end) else learning_end
            )
            alert_ms.update(int(ts[i]) for i in run_detector(s, detector, bounds=FIELD_RANGES.get(field)))
        score = score_alerts(device, alert_ms, windows, learning_end)
        scores.append(score)
        cut = learning_end if learning_end is not None else -1
        live = [a for a in alert_ms if a > cut]
        for lab in mine:
            if lab.end_ms <= cut:
                continue
            by_kind[lab.kind][0] += 1
            by_kind[lab.kind][1] += any(lab.start_ms <= a <= lab.end_ms for a in live)
        alerts.extend((device, str(a)) for a in sorted(alert_ms))
    return SimEvaluation(totals(scores), {k: (v[0], v[1]) for k, v in by_kind.items()}, tuple(alerts))
