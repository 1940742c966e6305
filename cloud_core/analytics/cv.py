"""Choosing the detector's settings by cross-validation across NAB's categories.

The procedure (``iotctl anomalies evaluate --cv categories``, docs/anomaly.md):

1. Every candidate of :data:`GRID` (base detector x record gate) is run over every file. The base
   detectors are scored once per file (:func:`.evaluate.score_points`, as the worker scores a live
   series, gate off); each candidate's record gate (:class:`.rarity.RecordGate`) and the episodes are
   then applied to those scores, exactly as :class:`.ensemble.SeriesScorer` applies them live.
2. For each category in turn, the candidate with the best event-F1 over the *other* categories
   (counts summed over their files) is chosen and scored on the held-out category.
3. The cross-validated corpus figure sums the held-out counts of the seven folds: every file is
   scored with settings chosen without its category.
4. The shipped default is the candidate the same rule chooses on all categories together.

Ties go to the candidate listed first in :data:`GRID` (the simpler one: no gate, shorter windows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from .detectors import DetectorConfig, PointScore
from .episodes import EpisodeTracker
from .evaluate import (
    FileScore,
    LabelledSeries,
    Totals,
    run_detector,
    score_alerts,
    score_points,
    totals,
)
from .rarity import gate_for, gate_points

__all__ = [
    "BASELINES",
    "GRID",
    "PREVIOUS",
    "Candidate",
    "CvResult",
    "Fold",
    "GridScores",
    "category_of",
    "cross_validate",
    "grid_scores",
]

BASELINES = ("zscore288", "iforest_learning")
"""Untuned baselines reported beside the cross-validated detector (:data:`.evaluate.DETECTORS`)."""

PREVIOUS = "ensemble, no gate"
"""Also reported beside it: the default before this procedure (the ensemble without the record gate)."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One setting of the grid: the base detector and its record gate (window 0: no gate)."""

    detector: str
    record_window: int = 0
    record_factor: float = 1.0

    @property
    def label(self) -> str:
        if self.record_window <= 0:
            return f"{self.detector}, no gate"
        return f"{self.detector}, gate {self.record_window} x{self.record_factor:g}"

    def config(self, base: DetectorConfig | None = None) -> DetectorConfig:
        """The detector configuration of this candidate."""
        return replace(base or DetectorConfig(), record_window=self.record_window, record_factor=self.record_factor)


def _grid() -> tuple[Candidate, ...]:
    out: list[Candidate] = []
    for detector in ("streaming", "ensemble"):
        out.append(Candidate(detector))
        for window in (2016, 4032, 8064, 16128):  # one, two, four, eight weeks of 5-minute readings
            for factor in (1.0, 0.8, 0.6):
                out.append(Candidate(detector, window, factor))
    return tuple(out)


GRID: tuple[Candidate, ...] = _grid()
"""The candidates, simplest first: each base detector without and with the record gate over one,
two or four weeks of 5-minute readings, needing a full record (x1.0) or 80% / 60% of one."""


def category_of(key: str) -> str:
    """A NAB labels key's category: its first path component (``realTweets/...``)."""
    return key.split("/", 1)[0]


def _alerts(
    series: LabelledSeries, points: Sequence[PointScore], cfg: DetectorConfig, cooldown_ms: int
) -> list[int]:
    gate = gate_for(cfg)
    tracker = EpisodeTracker(series.key, cooldown_ms)
    ts = series.ts_ms.tolist()
    starts: list[int] = []
    for i, p in enumerate(gate_points(gate, points)):
        if p.anomalous:  # readings that are not anomalous never open an episode
            opened, _ = tracker.update(ts[i], 0.0, True, p.score, p.detector)
            if opened is not None:
                starts.append(i)
    return starts


GridScores = tuple[dict[Candidate, list[FileScore]], dict[Candidate, list[list[int]]]]
"""Each candidate's score on each file (in dataset order), and its alerts there (row indices)."""


def grid_scores(
    dataset: Sequence[LabelledSeries],
    grid: Sequence[Candidate] = GRID,
    *,
    base: DetectorConfig | None = None,
    cooldown_ms: int = 3_600_000,
) -> GridScores:
    """Each candidate's score on each file (in ``dataset`` order) and its alerts (row indices)."""
    ungated = replace(base or DetectorConfig(), record_window=0)
    scores: dict[Candidate, list[FileScore]] = {c: [] for c in grid}
    alerts: dict[Candidate, list[list[int]]] = {c: [] for c in grid}
    for series in dataset:
        passes = {d: score_points(series, d, config=ungated) for d in sorted({c.detector for c in grid})}
        for cand in grid:
            idx = _alerts(series, passes[cand.detector], cand.config(base), cooldown_ms)
            alerts[cand].append(idx)
            scores[cand].append(
                score_alerts(series.key, (int(series.ts_ms[i]) for i in idx), series.windows, series.learning_end_ms)
            )
    return scores, alerts


def _best(grid: Sequence[Candidate], scores: dict[Candidate, list[FileScore]], keep: Sequence[bool]) -> Candidate:
    best, best_f1 = grid[0], -1.0
    for cand in grid:
        f1 = totals([s for s, k in zip(scores[cand], keep, strict=True) if k]).f1
        if f1 > best_f1 + 1e-12:
            best, best_f1 = cand, f1
    return best


@dataclass(frozen=True, slots=True)
class Fold:
    """One held-out category: the candidate chosen on the others, its score there (in-sample) and
    on the held-out category (out of sample), and the baselines on the held-out category."""

    category: str
    chosen: Candidate
    train: Totals
    held_out: Totals
    baselines: dict[str, Totals]


@dataclass(frozen=True, slots=True)
class CvResult:
    """The cross-validation: folds, the held-out total, the shipped choice and what it scores."""

    folds: tuple[Fold, ...]
    total: Totals  # held-out counts of every fold summed: the out-of-sample corpus figure
    baselines: dict[str, Totals]  # each baseline over the whole corpus
    final: Candidate  # chosen on all categories: the shipped default
    final_totals: Totals  # the shipped default on the whole corpus (in sample)
    alerts: tuple[tuple[str, str, str], ...]  # held-out alerts: (labels key, timestamp, candidate label)


def cross_validate(
    dataset: Sequence[LabelledSeries],
    grid: Sequence[Candidate] = GRID,
    *,
    base: DetectorConfig | None = None,
    baselines: Sequence[str] = BASELINES,
    precomputed: GridScores | None = None,
) -> CvResult:
    """Leave-one-category-out cross-validation of ``grid`` on ``dataset`` (see the module docstring).
    ``precomputed``: :func:`grid_scores` of the same dataset and grid (it is most of the cost)."""
    grid = tuple(grid)
    scores, alerts = precomputed if precomputed is not None else grid_scores(dataset, grid, base=base)
    cats = [category_of(s.key) for s in dataset]
    base_scores: dict[str, list[FileScore]] = {}
    for name in baselines:
        base_scores[name] = [
            score_alerts(s.key, (int(s.ts_ms[i]) for i in run_detector(s, name)), s.windows, s.learning_end_ms)
            for s in dataset
        ]
    previous = Candidate("ensemble")  # the default before this procedure existed
    if previous in scores:
        base_scores[PREVIOUS] = scores[previous]
    folds: list[Fold] = []
    held: list[FileScore] = []
    held_alerts: list[tuple[str, str, str]] = []
    for cat in sorted(set(cats)):
        train = [c != cat for c in cats]
        chosen = _best(grid, scores, train)
        mine = [i for i, c in enumerate(cats) if c == cat]
        out = [scores[chosen][i] for i in mine]
        held.extend(out)
        for i in mine:
            held_alerts.extend((dataset[i].key, dataset[i].timestamps[j], chosen.label) for j in alerts[chosen][i])
        folds.append(
            Fold(
                cat,
                chosen,
                totals([s for s, k in zip(scores[chosen], train, strict=True) if k]),
                totals(out),
                {name: totals([b[i] for i in mine]) for name, b in base_scores.items()},
            )
        )
    final = _best(grid, scores, [True] * len(dataset))
    return CvResult(
        tuple(folds),
        totals(held),
        {name: totals(b) for name, b in base_scores.items()},
        final,
        totals(scores[final]),
        tuple(held_alerts),
    )
