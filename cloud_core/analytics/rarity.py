"""The record gate: a reading of a series may raise an alert only when its deviation is a record
for that series, at least ``factor`` x the largest deviation of its previous ``window`` readings.

Why: the streaming detector judges each value against a rolling window and a long-run envelope,
which works on a calm series and alarms again and again on a bursty one (tweet volumes, network
traffic: a new two-week extreme every few days). Whether a deviation is rare *for this series* is
what its own recent deviations tell: for a series whose |z| is stationary, a reading beats all of
the previous ``window`` with probability 1/window, so the gate bounds the false-alarm rate per
series at about one per ``window`` readings, whatever the series' shape. A deviation close to an
earlier one (``factor`` < 1) still passes, so a second fault of the same size is not hidden.

Stuck runs are not gated (their |z| says nothing about them). The gate remembers block maxima,
not every reading: ``RECORD_BLOCKS`` blocks of ``window // RECORD_BLOCKS`` readings plus the block
being filled, so "the previous ``window`` readings" means between ``window`` and ``window`` plus
one block, and the memory is constant per series.

The settings (``window``, ``factor``) were chosen by cross-validation across NAB's categories
(:mod:`.cv`, docs/anomaly.md).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import replace

from .detectors import DetectorConfig, PointScore

__all__ = ["RECORD_BLOCKS", "RecordGate", "gate_for", "gate_points"]

RECORD_BLOCKS = 32
"""Blocks the gate's window is cut into (its memory per series)."""

UNGATED = frozenset({"stuck"})
"""Detectors whose alerts the gate lets through (a stuck run has no meaningful |z|)."""


class _BlockMax:
    """The largest value of the last ``window`` values (give or take a block), in constant memory."""

    __slots__ = ("_blocks", "_cur", "_n", "_size")

    def __init__(self, window: int) -> None:
        self._size = max(1, window // RECORD_BLOCKS)
        self._blocks: deque[float] = deque(maxlen=max(1, math.ceil(window / self._size)))
        self._cur = 0.0  # max of the block being filled
        self._n = 0

    def max(self) -> float:
        return max(self._cur, max(self._blocks, default=0.0))

    def push(self, value: float) -> None:
        if value > self._cur:
            self._cur = value
        self._n += 1
        if self._n == self._size:
            self._blocks.append(self._cur)
            self._cur, self._n = 0.0, 0


class RecordGate:
    """Streaming record gate for one series; see the module docstring.

    Level alerts (``robust_z``, ``forest``) are compared with the series' past level deviations
    |z|, ``jump`` alerts with its past step deviations |step_z|. The first ``warmup`` readings are
    neither gated nor remembered: a detector whose rolling window is still filling gives
    unsteady z-scores, and one of them must not silence the series for ``window`` readings.
    """

    __slots__ = ("_factor", "_level", "_seen", "_step", "_warmup")

    def __init__(self, window: int, factor: float, warmup: int = 0) -> None:
        if window <= 0:
            raise ValueError("the record gate's window must be positive")
        self._level = _BlockMax(window)
        self._step = _BlockMax(window)
        self._factor = factor
        self._warmup = warmup
        self._seen = 0

    def admit(self, point: PointScore) -> bool:
        """Whether ``point`` may alert (``False`` only for an anomalous point that is not a record);
        then remembers its deviations. Call it for every reading of the series, in order."""
        self._seen += 1
        if self._seen <= self._warmup:
            return True
        az, asz = abs(point.z), abs(point.step_z)
        ok = True
        if point.anomalous and point.detector not in UNGATED:
            if point.detector == "jump":
                ok = asz >= self._factor * self._step.max()
            else:
                ok = az >= self._factor * self._level.max()
        self._level.push(az)
        self._step.push(asz)
        return ok


def gate_for(cfg: DetectorConfig) -> RecordGate | None:
    """The record gate ``cfg`` asks for (None: off); it warms up over the detector's rolling window."""
    if cfg.record_window <= 0:
        return None
    return RecordGate(cfg.record_window, cfg.record_factor, cfg.window)


def gate_points(gate: RecordGate | None, points: Iterable[PointScore]) -> Iterator[PointScore]:
    """``points`` with the anomalous ones that ``gate`` refuses turned normal (score kept below 1)."""
    for p in points:
        if gate is None or gate.admit(p) or not p.anomalous:
            yield p
        else:
            yield replace(p, score=min(p.score, 0.999), anomalous=False, detector="")
