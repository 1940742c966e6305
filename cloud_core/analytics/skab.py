"""The SKAB benchmark's protocol for the multivariate detectors, and choosing their settings by
leave-one-file-out cross-validation.

Data (``;``-separated): ``datetime``, the sensor columns, then ``anomaly`` (and ``changepoint``) in
labelled files; a file without an ``anomaly`` column is normal operation throughout (SKAB's
``anomaly-free.csv``). The protocol: for each labelled file, fit on its first :data:`FIT_ROWS` rows,
predict every later row (the detector sees the rows in order, one at a time, as the worker would),
and score point by point over all files together: F1, false-alarm rate (false alarms over normal
rows) and missed-alarm rate (missed over abnormal rows). Files without labels are reported apart:
the false-alarm rate over long normal operation.

Choosing settings (``--cv files``): for each labelled file in turn, the candidate of the grid with
the best F1 among those with a false-alarm rate of at most :data:`FAR_BUDGET` on the other files
(or, if none has, the lowest false-alarm rate) is chosen and predicts the held-out file. The
shipped default is what the same rule chooses on all files.
"""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import DatasetError, ModelError
from .multivariate import MultivariateConfig, MultivariateModel, fit_model

__all__ = [
    "FAR_BUDGET",
    "FIT_ROWS",
    "GRID",
    "REFITTED",
    "REFIT_EVERY",
    "REFIT_HISTORY",
    "Confusion",
    "Predictions",
    "SkabCv",
    "SkabFile",
    "SkabRun",
    "choose",
    "cross_validate_skab",
    "grid_predictions",
    "load_skab",
    "predict_file",
    "predict_refitted",
    "run_skab",
]

FIT_ROWS = 400
FAR_BUDGET = 0.15
"""The false-alarm rate the choice must stay within (the issue's aim)."""


@dataclass(frozen=True, slots=True)
class SkabFile:
    """One file: its path relative to the data folder, ``datetime`` strings exactly as written,
    sensor names, readings (rows x sensors) and labels (None: normal throughout)."""

    name: str
    datetimes: tuple[str, ...]
    fields: tuple[str, ...]
    x: np.ndarray
    y: np.ndarray | None


def _natural(path: Path) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def load_skab(data_dir: Path) -> list[SkabFile]:
    """Every ``*.csv`` under ``data_dir`` (in natural order: 2.csv before 10.csv).

    Raises:
        DatasetError: no CSV there, or one that is not SKAB's format (the file and line named).
    """
    data_dir = Path(data_dir)
    paths = sorted(data_dir.rglob("*.csv"), key=_natural) if data_dir.is_dir() else []
    if not paths:
        raise DatasetError(f"no SKAB CSV files under {data_dir}", path=str(data_dir))
    out: list[SkabFile] = []
    for path in paths:
        name = path.relative_to(data_dir).as_posix()
        try:
            with path.open(newline="") as fh:
                rows = list(csv.reader(fh, delimiter=";"))
        except OSError as exc:
            raise DatasetError(f"cannot read {path}: {exc.strerror}", path=str(path)) from exc
        if not rows or not rows[0] or rows[0][0] != "datetime":
            raise DatasetError(f"{path}: expected a ';'-separated header starting with 'datetime'", path=str(path))
        header = rows[0]
        label_at = header.index("anomaly") if "anomaly" in header else None
        sensors = [i for i, h in enumerate(header) if i > 0 and h not in ("anomaly", "changepoint")]
        stamps: list[str] = []
        values: list[list[float]] = []
        labels: list[int] = []
        for lineno, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            try:
                values.append([float(row[i]) for i in sensors])
                if label_at is not None:
                    labels.append(int(float(row[label_at])))
            except (IndexError, ValueError):
                raise DatasetError(f"{path}:{lineno}: unreadable row {row!r}", path=str(path)) from None
            stamps.append(row[0])
        if len(values) <= FIT_ROWS:
            raise DatasetError(f"{path}: {len(values)} rows; the protocol fits on the first {FIT_ROWS}", path=str(path))
        y = np.asarray(labels, np.int64) if label_at is not None else None
        out.append(SkabFile(name, tuple(stamps), tuple(header[i] for i in sensors), np.asarray(values), y))
    return out


@dataclass(frozen=True, slots=True)
class Confusion:
    """Point-wise counts; the rates as the SKAB benchmark reports them."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else 0.0

    @property
    def far(self) -> float:
        """False-alarm rate: normal rows predicted abnormal, over normal rows."""
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0

    @property
    def mar(self) -> float:
        """Missed-alarm rate: abnormal rows predicted normal, over abnormal rows."""
        return self.fn / (self.fn + self.tp) if self.fn + self.tp else 0.0

    @classmethod
    def of(cls, predicted: np.ndarray, actual: np.ndarray) -> Confusion:
        p, a = predicted.astype(bool), actual.astype(bool)
        return cls(int((p & a).sum()), int((p & ~a).sum()), int((~p & a).sum()), int((~p & ~a).sum()))


def _model_key(f: SkabFile) -> str:
    return f.name.replace("/", "_")[:100] or "skab"


def _columns(f: SkabFile, fields: tuple[str, ...]) -> np.ndarray:
    """``f``'s readings of ``fields`` (a model may leave fields out: ``min_corr``)."""
    return f.x[:, [f.fields.index(name) for name in fields]]


def predict_file(f: SkabFile, cfg: MultivariateConfig) -> np.ndarray:
    """0/1 per row after the first :data:`FIT_ROWS`: the model fitted on those rows, then every row
    scored in order with :class:`.multivariate.DeviceScorer` (as the worker scores a device)."""
    from .multivariate import DeviceScorer

    try:
        model = fit_model(_model_key(f), f.fields, f.x[:FIT_ROWS], cfg)
    except ModelError as exc:
        raise DatasetError(f"{f.name}: {exc}") from None
    scorer = DeviceScorer(model)
    scores = scorer.score(_columns(f, model.fields))  # the fitting rows too: the smoothing carries over, as live
    return (np.asarray(scores[FIT_ROWS:]) >= 1.0).astype(np.int64)


def _grid() -> tuple[MultivariateConfig, ...]:
    out: list[MultivariateConfig] = []
    base = MultivariateConfig()
    floors, factors = (0.0, 0.01, 0.02, 0.05), (1.0, 2.0, 3.0, 5.0)
    for explained, floor, factor, smooth in itertools.product((0.85, 0.95), floors, factors, (1, 10)):
        out.append(replace(base, method="pca", explained=explained, rel_floor=floor, factor=factor, smooth=smooth))
    for floor, factor, smooth in itertools.product((0.0, 0.02), (1.0, 2.0, 3.0, 5.0), (1, 10)):
        out.append(replace(base, method="mset", rel_floor=floor, factor=factor, smooth=smooth))
    for floor, q, smooth in itertools.product((0.0, 0.02), (0.99, 1.0), (1, 10)):
        out.append(replace(base, method="iforest", rel_floor=floor, threshold_q=q, factor=1.0, smooth=smooth))
    return tuple(out)


GRID: tuple[MultivariateConfig, ...] = _grid()
"""Candidates: PCA T-squared+Q (components for 85% or 95% of the variance), MSET and the
IsolationForest baseline, each with scale floors 0-5% of the level, thresholds 1-5 x the 99%
quantile of the fitting rows' statistic, and no smoothing or a 10-reading mean."""


def choose(candidates: Sequence[MultivariateConfig], counts: dict[MultivariateConfig, Confusion]) -> MultivariateConfig:
    """The best F1 within the false-alarm budget, else the lowest false-alarm rate; ties to the first."""
    within = [c for c in candidates if counts[c].far <= FAR_BUDGET]
    if within:
        return max(within, key=lambda c: (counts[c].f1, -candidates.index(c)))
    return min(candidates, key=lambda c: (counts[c].far, candidates.index(c)))


REFIT_EVERY, REFIT_HISTORY = 1000, 2000
"""Normal operation with refitting, as the worker retrains on a schedule: the first model on the
first :data:`FIT_ROWS` rows, then a new one every ``REFIT_EVERY`` rows on the last ``REFIT_HISTORY``."""


def predict_refitted(f: SkabFile, cfg: MultivariateConfig) -> np.ndarray:
    """0/1 per row after the first :data:`FIT_ROWS`, refitting as :data:`REFIT_EVERY` says."""
    from .multivariate import DeviceScorer

    out: list[int] = []
    starts = [FIT_ROWS, *range(REFIT_EVERY, len(f.x), REFIT_EVERY)]
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(f.x)
        lo = max(0, start - REFIT_HISTORY)
        model = fit_model("refit", f.fields, f.x[lo:start], cfg)
        scores = DeviceScorer(model).score(_columns(f, model.fields)[lo:end])[start - lo :]
        out.extend(1 if s >= 1.0 else 0 for s in scores)
    return np.asarray(out, np.int64)


@dataclass(frozen=True, slots=True)
class SkabRun:
    """One configuration over the labelled files, and over the unlabelled ones (normal operation:
    fitted once on the first rows, and refitted on a schedule)."""

    config: MultivariateConfig
    per_file: dict[str, Confusion]
    total: Confusion
    normal_only: Confusion  # files without labels, fitted once: only false alarms can happen
    normal_refitted: Confusion  # the same files, refitted (:func:`predict_refitted`)
    predictions: tuple[tuple[str, str, int], ...]  # (file, datetime, predicted) after the fitting rows;
    # files without labels appear twice: fitted once, then as "<file> (refitted)"


REFITTED = " (refitted)"
"""Suffix of a file name in the predictions for the refitted run of a file without labels."""


def run_skab(files: Sequence[SkabFile], cfg: MultivariateConfig) -> SkabRun:
    """The protocol with one configuration."""
    per: dict[str, Confusion] = {}
    normal = refitted = Confusion()
    preds: list[tuple[str, str, int]] = []
    for f in files:
        p = predict_file(f, cfg)
        preds.extend(zip(itertools.repeat(f.name), f.datetimes[FIT_ROWS:], p.tolist(), strict=False))
        if f.y is None:
            normal = normal + Confusion.of(p, np.zeros_like(p))
            r = predict_refitted(f, cfg)
            refitted = refitted + Confusion.of(r, np.zeros_like(r))
            preds.extend(zip(itertools.repeat(f.name + REFITTED), f.datetimes[FIT_ROWS:], r.tolist(), strict=False))
        else:
            per[f.name] = Confusion.of(p, f.y[FIT_ROWS:])
    total = sum(per.values(), Confusion())
    return SkabRun(cfg, per, total, normal, refitted, tuple(preds))


@dataclass(frozen=True, slots=True)
class SkabCv:
    """Leave-one-file-out: per method (the choice within its own candidates) and over all methods."""

    by_method: dict[str, Confusion]  # held-out totals when only that method's candidates compete
    chosen: dict[str, dict[str, str]]  # method (or "all") -> held-out file -> chosen candidate's label
    total: Confusion  # held-out totals over all candidates: the out-of-sample figure
    predictions: tuple[tuple[str, str, int], ...]  # the held-out predictions over all candidates
    final: MultivariateConfig  # chosen on all labelled files: the shipped default
    final_run: SkabRun  # the shipped default on the data (in sample)


Predictions = dict[MultivariateConfig, dict[str, np.ndarray]]
"""Each candidate's predictions (after the fitting rows) for each labelled file."""


def grid_predictions(files: Sequence[SkabFile], grid: Sequence[MultivariateConfig] = GRID) -> Predictions:
    """What each candidate predicts on each labelled file (most of the cross-validation's cost):
    :func:`predict_file`'s result, with each fitted model and its statistics computed once for the
    candidates that differ only in their threshold and smoothing."""
    from .multivariate import DeviceScorer, fit_statistics, with_threshold

    out: Predictions = {c: {} for c in grid}
    for f in files:
        if f.y is None:
            continue
        fitted: dict[tuple[object, ...], tuple[MultivariateModel, np.ndarray, np.ndarray]] = {}
        for c in grid:
            base = (c.method, c.rel_floor, c.explained, c.memory, c.bandwidth)
            if base not in fitted:
                try:
                    model, calib = fit_statistics(_model_key(f), f.fields, f.x[:FIT_ROWS], c)
                except ModelError as exc:
                    raise DatasetError(f"{f.name}: {exc}") from None
                fitted[base] = (model, calib, model.statistics(_columns(f, model.fields)))
            model, calib, stats = fitted[base]
            scores = DeviceScorer(with_threshold(model, calib, c)).score_statistics(stats)
            out[c][f.name] = (np.asarray(scores[FIT_ROWS:]) >= 1.0).astype(np.int64)
    return out


def cross_validate_skab(
    files: Sequence[SkabFile], grid: Sequence[MultivariateConfig] = GRID, *, precomputed: Predictions | None = None
) -> SkabCv:
    """Leave-one-file-out cross-validation of ``grid`` (see the module docstring). ``precomputed``:
    :func:`grid_predictions` of the same files and grid."""
    grid = tuple(grid)
    labelled = [f for f in files if f.y is not None]
    if len(labelled) < 2:
        raise DatasetError("cross-validation needs at least two labelled SKAB files")
    preds = precomputed if precomputed is not None else grid_predictions(files, grid)
    conf = {
        c: {f.name: Confusion.of(preds[c][f.name], f.y[FIT_ROWS:]) for f in labelled if f.y is not None} for c in grid
    }

    def held_out(cands: tuple[MultivariateConfig, ...]) -> tuple[Confusion, dict[str, str], list[tuple[str, str, int]]]:
        total, picks = Confusion(), {}
        rows: list[tuple[str, str, int]] = []
        for f in labelled:
            train = {c: sum((v for k, v in conf[c].items() if k != f.name), Confusion()) for c in cands}
            c = choose(cands, train)
            total = total + conf[c][f.name]
            picks[f.name] = c.label()
            rows.extend(zip(itertools.repeat(f.name), f.datetimes[FIT_ROWS:], preds[c][f.name].tolist(), strict=False))
        return total, picks, rows

    by_method: dict[str, Confusion] = {}
    chosen: dict[str, dict[str, str]] = {}
    for method in dict.fromkeys(c.method for c in grid):
        by_method[method], chosen[method], _ = held_out(tuple(c for c in grid if c.method == method))
    total, chosen["all"], rows = held_out(grid)
    final = choose(grid, {c: sum(conf[c].values(), Confusion()) for c in grid})
    return SkabCv(by_method, chosen, total, tuple(rows), final, run_skab(files, final))
