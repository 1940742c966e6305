"""Offline, NAB-format evaluation: load ``timestamp,value`` CSVs and ``{file: [[start, end], ...]}``
windows, run a detector over each file exactly as the worker would (one reading at a time), and
score the alerts with the event-level metric of issue 7.

The metric, per file:
- the first ``min(floor(0.15 * rows), 750)`` rows are a learning period: alerts timestamped inside
  it are ignored, and windows that end inside it are not scored;
- a scored window is detected if at least one alert falls inside it (both ends inclusive);
- an alert outside every window is a false positive, counted at most once per hour: an outside
  alert counts only if it comes more than 60 minutes after the last counted one;
- precision = detected / (detected + false positives), recall = detected / scored windows.
Totals sum detected, false positives and windows over the files before dividing.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .detectors import DetectorConfig, PointScore
from .errors import DatasetError

__all__ = [
    "DETECTORS",
    "FP_SPACING_MS",
    "Evaluation",
    "FileScore",
    "LabelledSeries",
    "Totals",
    "episode_starts",
    "evaluate",
    "learning_rows",
    "load_nab",
    "parse_ts_ms",
    "read_series_csv",
    "run_detector",
    "score_alerts",
    "score_points",
    "totals",
]

FP_SPACING_MS = 60 * 60 * 1000
"""An outside alert counts as a false positive only if it comes more than this after the last counted one."""


def parse_ts_ms(text: str) -> int:
    """Milliseconds for a NAB timestamp (local time without zone, read as UTC: only differences matter)."""
    text = text.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise DatasetError(f"unreadable timestamp {text!r}: expected YYYY-MM-DD HH:MM:SS[.ffffff]") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def learning_rows(rows: int) -> int:
    """Rows in the learning period: ``min(floor(0.15 * rows), 750)``."""
    return min(int(0.15 * rows), 750)


@dataclass(frozen=True, slots=True)
class LabelledSeries:
    """One file: its labels key, raw timestamp strings, times (ms), values and windows (ms, inclusive)."""

    key: str
    timestamps: tuple[str, ...]
    ts_ms: np.ndarray
    values: np.ndarray
    windows: tuple[tuple[int, int], ...]

    @property
    def learning_end_ms(self) -> int | None:
        """Timestamp of the last learning-period row, or None when the period is empty."""
        n = learning_rows(len(self.ts_ms))
        return int(self.ts_ms[n - 1]) if n > 0 else None


def read_series_csv(path: Path) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Read a ``timestamp,value`` CSV. Raises DatasetError naming the file and row on bad input."""
    stamps: list[str] = []
    values: list[float] = []
    try:
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header[:2]] != ["timestamp", "value"]:
                raise DatasetError(f"{path}: expected header 'timestamp,value'", path=str(path))
            for lineno, row in enumerate(reader, start=2):
                if not row:
                    continue
                try:
                    values.append(float(row[1]))
                except (IndexError, ValueError):
                    raise DatasetError(f"{path}:{lineno}: unreadable value {row!r}", path=str(path)) from None
                stamps.append(row[0].strip())
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}", path=str(path)) from exc
    ts = np.fromiter((parse_ts_ms(s) for s in stamps), dtype=np.int64, count=len(stamps))
    return tuple(stamps), ts, np.asarray(values, dtype=np.float64)


def load_nab(data_dir: Path, labels_file: Path) -> list[LabelledSeries]:
    """Every file named in the labels (sorted by key), with its windows.

    Raises:
        DatasetError: the labels file or a data file is missing or malformed.
    """
    data_dir, labels_file = Path(data_dir), Path(labels_file)
    try:
        labels = json.loads(labels_file.read_text())
    except OSError as exc:
        raise DatasetError(
            f"cannot read labels {labels_file}: {exc.strerror}", path=str(labels_file)
        ) from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(f"labels {labels_file} is not JSON: {exc}", path=str(labels_file)) from exc
    if not isinstance(labels, dict):
        raise DatasetError(f"labels {labels_file}: expected an object {{file: [[start, end], ...]}}")
    out: list[LabelledSeries] = []
    for key in sorted(labels):
        path = data_dir / key
        if not path.is_file():
            raise DatasetError(f"labels name {key!r} but {path} does not exist", path=str(path))
        stamps, ts, values = read_series_csv(path)
        try:
            windows = tuple((parse_ts_ms(a), parse_ts_ms(b)) for a, b in labels[key])
        except (TypeError, ValueError):
            raise DatasetError(
                f"labels {labels_file}: windows of {key!r} must be [[start, end], ...]"
            ) from None
        out.append(LabelledSeries(key, stamps, ts, values, windows))
    return out


@dataclass(frozen=True, slots=True)
class FileScore:
    """Event-level outcome for one file."""

    key: str
    windows: int
    detected: int
    false_positives: int
    alerts: int

    @property
    def precision(self) -> float:
        hits = self.detected + self.false_positives
        return self.detected / hits if hits else (1.0 if self.windows == 0 else 0.0)

    @property
    def recall(self) -> float:
        return self.detected / self.windows if self.windows else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


@dataclass(frozen=True, slots=True)
class Totals(FileScore):
    files: tuple[FileScore, ...] = field(default=())


def score_alerts(
    key: str,
    alerts_ms: Iterable[int],
    windows: Sequence[tuple[int, int]],
    learning_end_ms: int | None,
) -> FileScore:
    """Score one file's alerts against its windows with the issue 7 metric.

    Args:
        key: the file's labels key.
        alerts_ms: alert times (ms), any order.
        windows: ``(start, end)`` in ms, both ends inclusive.
        learning_end_ms: time of the last learning-period row (alerts at or before it are ignored,
            windows ending at or before it are not scored); None for no learning period.
    """
    cut = learning_end_ms if learning_end_ms is not None else None
    live = sorted(a for a in alerts_ms if cut is None or a > cut)
    scored = [(s, e) for s, e in windows if cut is None or e > cut]
    detected = sum(1 for s, e in scored if any(s <= a <= e for a in live))
    fps = 0
    last: int | None = None
    for a in live:
        if any(s <= a <= e for s, e in windows):
            continue
        if last is None or a - last > FP_SPACING_MS:
            fps += 1
            last = a
    return FileScore(key, len(scored), detected, fps, len(live))


def totals(scores: Sequence[FileScore]) -> Totals:
    """Sum detected, false positives and windows over files."""
    return Totals(
        "TOTAL",
        sum(s.windows for s in scores),
        sum(s.detected for s in scores),
        sum(s.false_positives for s in scores),
        sum(s.alerts for s in scores),
        files=tuple(scores),
    )


AlertFn = Callable[[LabelledSeries], list[int]]
"""A detector run over one file, returning the row indices it alerted on."""


# ---- detectors run offline, one reading at a time ---------------------------------------------

DETECTORS = ("ensemble", "streaming", "zscore288", "iforest_learning")
"""``ensemble``: what the worker runs (streaming detector from the first reading; a forest trained
on the learning period joins after it). ``streaming``: the streaming detector alone. The two
baselines of issue 7: ``zscore288`` (mean/std of the previous 288 values, |z| > 4) and
``iforest_learning`` (IsolationForest on the raw value, contamination 0.001, fitted on the
learning period)."""


def _episode_starts(
    series: LabelledSeries, flags: Sequence[tuple[bool, float, str]], cooldown_ms: int
) -> list[int]:
    from .episodes import EpisodeTracker

    tracker = EpisodeTracker(series.key, cooldown_ms)
    starts: list[int] = []
    ts = series.ts_ms.tolist()
    vals = series.values.tolist()
    for i, (anomalous, score, detector) in enumerate(flags):
        opened, _ = tracker.update(ts[i], vals[i], anomalous, score, detector)
        if opened is not None:
            starts.append(i)
    return starts


def score_points(
    series: LabelledSeries,
    detector: str = "ensemble",
    *,
    config: DetectorConfig | None = None,
    bounds: tuple[float, float] | None = None,
) -> list[PointScore]:
    """Every reading's score from ``detector`` (``streaming`` or ``ensemble``), exactly as the worker
    scores a live series: the streaming detector from the first reading, and for ``ensemble`` a
    forest trained on the learning period joining after it."""
    from .ensemble import SeriesScorer

    cfg = config or DetectorConfig()
    scorer = SeriesScorer(cfg, bounds=bounds)
    ts, vals = series.ts_ms.tolist(), series.values.tolist()
    if detector == "streaming":
        return scorer.score_batch(ts, vals)
    if detector != "ensemble":
        raise ValueError(f"score_points runs 'streaming' or 'ensemble', not {detector!r}")
    from .forest import ForestConfig, train_forest

    n_learn = learning_rows(len(vals))
    points = scorer.score_batch(ts[:n_learn], vals[:n_learn])
    if n_learn >= 50:
        scorer.attach(train_forest(series.key, series.ts_ms[:n_learn], series.values[:n_learn], ForestConfig()))
    return points + scorer.score_batch(ts[n_learn:], vals[n_learn:])


def episode_starts(series: LabelledSeries, points: Sequence[PointScore], cooldown_ms: int = 3_600_000) -> list[int]:
    """Row indices where an episode opens (what the worker alerts on)."""
    return _episode_starts(series, [(p.anomalous, p.score, p.detector) for p in points], cooldown_ms)


def run_detector(
    series: LabelledSeries,
    detector: str = "ensemble",
    *,
    config: DetectorConfig | None = None,
    cooldown_ms: int = 3_600_000,
    bounds: tuple[float, float] | None = None,
) -> list[int]:
    """Row indices of the alerts ``detector`` raises on ``series`` (episode starts for ours).
    ``bounds``: the field's physical range, when the series is a known field (firmware_sim)."""
    n = len(series.values)
    n_learn = learning_rows(n)
    if detector in ("streaming", "ensemble"):
        return episode_starts(series, score_points(series, detector, config=config, bounds=bounds), cooldown_ms)
    if detector == "zscore288":
        v = series.values
        out: list[int] = []
        for i in range(1, n):
            past = v[max(0, i - 288) : i]
            sd = float(past.std())
            if len(past) >= 2 and sd > 0 and abs(v[i] - past.mean()) / sd > 4.0:
                out.append(i)
        return out
    if detector == "iforest_learning":
        from sklearn.ensemble import IsolationForest

        if n_learn < 2:
            return []
        # contamination 0.001: the strongest of sklearn's 'auto', 0.01, 0.005 and 0.001 on the dev data.
        est = IsolationForest(random_state=0, contamination=0.001).fit(series.values[:n_learn].reshape(-1, 1))
        pred = est.predict(series.values.reshape(-1, 1))
        return [int(i) for i in np.flatnonzero(pred == -1)]
    raise ValueError(f"unknown detector {detector!r}: choose one of {', '.join(DETECTORS)}")


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Scores for one detector over a dataset, and the alerts it raised (labels key, timestamp string)."""

    detector: str
    totals: Totals
    alerts: tuple[tuple[str, str], ...]


def evaluate(dataset: Sequence[LabelledSeries], detector: str = "ensemble") -> Evaluation:
    """Run ``detector`` over every file and score it."""
    scores: list[FileScore] = []
    alerts: list[tuple[str, str]] = []
    for series in dataset:
        idx = run_detector(series, detector)
        scores.append(
            score_alerts(
                series.key, (int(series.ts_ms[i]) for i in idx), series.windows, series.learning_end_ms
            )
        )
        alerts.extend((series.key, series.timestamps[i]) for i in idx)
    return Evaluation(detector, totals(scores), tuple(alerts))
