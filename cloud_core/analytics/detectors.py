"""Streaming, per-series anomaly detectors: pure state machines that see each reading once, in
order, and score it from past and current values only.

- :class:`RobustZ`: robust z-score of the value against the rolling median, scaled by the rolling
  inter-quartile range (both from a sorted window, O(log W) search plus one memmove per reading),
  gated by novelty: the value must also lie outside the long-run envelope (a high quantile of a
  longer history), so values the series has already shown are not alerted on again and again.
- :class:`Ewma`: z-score against an exponentially weighted mean and variance (O(1), no window).
- :class:`Stuck`: a run of identical values that is improbable given how often this series
  repeats itself (the repeat rate is learnt online), so quantised or idle sensors are not flagged.
- :class:`StreamingDetector`: RobustZ + Stuck, the cold-start detector the worker and the offline
  evaluation both run.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from dataclasses import dataclass

__all__ = [
    "DetectorConfig",
    "Ewma",
    "PointScore",
    "RobustZ",
    "SortedWindow",
    "StreamingDetector",
    "Stuck",
]

IQR_TO_SIGMA = 1.349  # IQR of a normal distribution in standard deviations
P80_TO_SIGMA = 2.563  # 10%-90% spread of a normal distribution in standard deviations
NOVELTY_MIN_Z = 0.5  # novelty is computed only for |z| >= this x k (the forest needs 0.9 x k)
PACE_STEPS = 6  # non-zero steps before a run that measure how fast the series was moving
PLATEAU_TOLERANCE = 0.1  # a run within this many rolling sigmas of a known plateau is that plateau
SPACINGS = 15  # recent time spacings whose median is the series' usual sampling interval


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """One configuration for every series (no per-series tuning).

    Attributes:
        window: points in the rolling median / IQR window (288 = one day at 5 minutes).
        history: points in the long-run envelope (4032 = two weeks at 5 minutes).
        k: robust z-score above which a value deviates from its recent level.
        envelope_q: quantile of the long history that bounds already-seen values (both tails).
        min_points: no score until this many values have been seen (cold start).
        stuck_min_run: shortest run of identical values that can count as stuck.
        stuck_alpha: a run is stuck when the chance of it, at the series' own repeat rate, is below this.
        plateaus: values remembered as the series' own plateaus (a full battery, saturated humidity):
            once a value has had a stuck-length run, later runs at it are normal. 0 turns this off.
        stuck_pace: a run that begins while the series moves by at most this many resolution steps
            per reading (median of the last non-zero steps, over the smallest step ever seen) is a
            slow curve levelling off (a battery at its turning point), not stuck. 0 turns this off.
        jump_k: robust z-score of the step from the previous reading above which a reading jumped
            (a one-reading spike inside the usual range); gated by novelty of the step size.
        tail_q: a second, less extreme quantile of the long history; the gap between it and the
            ``envelope_q`` quantile measures how far this series' own tail reaches.
        novelty_margin: a value is novel only when it lies beyond the envelope by this many tail
            gaps (``q(envelope_q) - q(tail_q)``). 0 (the default): tried 0.5-2, it costs NAB recall.
        scale_margin: ... and by this many rolling robust sigmas, not by any amount: a slow walk
            (pressure) or a series with frequent wide excursions (radio signal drops) sets its new
            records by small margins, a spike far beyond everything seen does not.
        jump_margin: a step's size is novel only beyond the envelope of past step sizes by this
            many tail gaps.
        jump_away: a step back towards the rolling median from a reading that was itself beyond
            ``k`` (the end of an excursion, e.g. a drift released) is a recovery, not a jump.
        gap_factor: a step across a gap in time (more than this many of the series' usual sampling
            intervals, the median of its last spacings) spans several readings' worth of change, so
            it is not judged as a one-reading jump (nor learnt as a step). 0 turns this off; needs
            timestamps.
        jump_trend: a step that differs from the previous step by less than this fraction of
            itself continues a movement already under way (a battery charging ever faster), so it
            is not a jump. 0 turns this off.
        record_window: the record gate (:mod:`.rarity`): an alert needs a level deviation |z| of at
            least ``record_factor`` x the largest |z| of the series' previous ``record_window``
            readings. 0 turns the gate off. Chosen by cross-validation across NAB's categories.
        record_factor: see ``record_window``.
    """

    window: int = 288
    history: int = 4032
    k: float = 4.0
    envelope_q: float = 0.999
    min_points: int = 30
    stuck_min_run: int = 5
    stuck_alpha: float = 1e-5
    plateaus: int = 64
    stuck_pace: float = 2.0
    jump_k: float = 8.0
    tail_q: float = 0.99
    novelty_margin: float = 0.0
    jump_margin: float = 1.0
    jump_away: bool = True
    scale_margin: float = 1.0
    gap_factor: float = 2.0
    jump_trend: float = 0.5
    record_window: int = 8064
    record_factor: float = 0.8


@dataclass(frozen=True, slots=True)
class PointScore:
    """How one reading scored. ``score`` is in units of the threshold: >= 1 is anomalous. ``z`` is
    the level's robust z-score, ``step_z`` the step's (from the previous reading; 0 without one)."""

    score: float
    z: float
    novel: bool
    stuck_run: int
    anomalous: bool
    detector: str  # "robust_z", "jump", "stuck", "forest" or "" when not anomalous
    step_z: float = 0.0
    sigma: float = 0.0  # the rolling robust scale the z-score used (the normal range is median +- k sigma)
    margin: float = 0.0  # how far the value lay beyond the long-run envelope, in sigmas (0: not computed)


NORMAL = PointScore(0.0, 0.0, False, 0, False, "")


class SortedWindow:
    """The last ``size`` values, kept both in arrival order and sorted (for O(1) quantiles)."""

    __slots__ = ("_fifo", "_size", "sorted")

    def __init__(self, size: int) -> None:
        self._size = size
        self._fifo: deque[float] = deque()
        self.sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._fifo)

    def push(self, value: float) -> None:
        self._fifo.append(value)
        insort(self.sorted, value)
        if len(self._fifo) > self._size:
            old = self._fifo.popleft()
            del self.sorted[bisect_left(self.sorted, old)]

    def quantile(self, q: float) -> float:
        """Nearest-rank quantile (the window must not be empty)."""
        s = self.sorted
        return s[min(len(s) - 1, int(q * len(s)))]

    def robust_scale(self) -> float:
        """Standard deviation estimated from the IQR, falling back to wider spreads when it is 0."""
        s = self.sorted
        n = len(s)
        scale = (s[(3 * n) // 4] - s[n // 4]) / IQR_TO_SIGMA
        if scale <= 0.0:
            scale = (s[(9 * n) // 10] - s[n // 10]) / P80_TO_SIGMA
        if scale <= 0.0:
            scale = (s[-1] - s[0]) / 6.0
        return scale


def envelope(s: list[float], q: float, tail_q: float, margin: float = 0.0) -> tuple[float, float]:
    """(lower, upper) bounds of already-seen values in the sorted history ``s``: the ``1 - q`` and
    ``q`` quantiles, each widened by ``margin`` tail gaps (the distance from the ``tail_q`` quantile
    to the ``q`` quantile on that side)."""
    n = len(s)
    i = min(n - 1, int(q * n))
    j = min(n - 1, int(tail_q * n))
    lo, hi = s[n - 1 - i], s[i]
    return lo - margin * (s[n - 1 - j] - lo), hi + margin * (hi - s[j])


class RobustZ:
    """Rolling-median / IQR z-score gated by the long-run envelope. See the module docstring."""

    __slots__ = ("_cfg", "_hist", "_win", "margin", "scale")

    def __init__(self, cfg: DetectorConfig) -> None:
        self._cfg = cfg
        self._win = SortedWindow(cfg.window)
        self._hist = SortedWindow(cfg.history)
        self.scale = 0.0  # the rolling robust scale used for the last score
        self.margin = 0.0  # how far the last value lay beyond the long-run envelope, in rolling sigmas

    def update(self, value: float) -> tuple[float, bool]:
        """Score ``value`` against what came before it, then remember it. Returns (z, novel); the
        envelope margin is left in ``margin`` (computed for candidates only, else 0)."""
        z, novel = 0.0, False
        self.margin = 0.0
        win = self._win
        if len(self._hist) >= self._cfg.min_points:
            s = win.sorted
            median = s[len(s) // 2]
            scale = win.robust_scale()
            floor = 1e-9 * (1.0 + abs(median))
            scale = scale if scale > floor else floor
            self.scale = scale
            z = (value - median) / scale
            if abs(z) >= NOVELTY_MIN_Z * self._cfg.k:  # novelty matters only for candidates
                cfg = self._cfg
                lower, upper = envelope(self._hist.sorted, cfg.envelope_q, cfg.tail_q, cfg.novelty_margin)
                sm = cfg.scale_margin * scale
                novel = value > upper + sm or value < lower - sm
                self.margin = max(value - upper, lower - value) / scale
        win.push(value)
        self._hist.push(value)
        return z, novel


class Ewma:
    """z-score against an exponentially weighted mean and variance (``alpha`` per reading)."""

    __slots__ = ("_alpha", "_mean", "_n", "_var")

    def __init__(self, alpha: float = 0.01) -> None:
        self._alpha = alpha
        self._mean = 0.0
        self._var = 0.0
        self._n = 0

    def update(self, value: float) -> float:
        z = 0.0
        if self._n == 0:
            self._mean = value
        else:
            sd = math.sqrt(self._var)
            z = (value - self._mean) / sd if sd > 0 else 0.0
            d = value - self._mean
            self._mean += self._alpha * d
            self._var = (1 - self._alpha) * (self._var + self._alpha * d * d)
        self._n += 1
        return z


class Stuck:
    """Improbably long runs of identical values, judged by the series' own repeat rate.

    Two kinds of run are natural, not stuck: a run at a physical bound of the field (a full battery,
    saturated humidity: ``bounds``), and a run in a series that was moving by about its own
    resolution per reading when the run began (a slow, quantised curve at its turning point).
    """

    __slots__ = (
        "_alpha", "_bounds", "_in_stuck", "_last", "_max_plateaus", "_min_run", "_n", "_pace",
        "_plateaus", "_quantum", "_repeats", "_run", "_run_pace", "_steps",
    )  # fmt: skip

    def __init__(self, cfg: DetectorConfig, bounds: tuple[float, float] | None = None) -> None:
        self._max_plateaus = cfg.plateaus
        self._plateaus: dict[float, None] = {}  # insertion-ordered: the oldest is forgotten first
        self._in_stuck = False
        self._min_run = cfg.stuck_min_run
        self._alpha = cfg.stuck_alpha
        self._bounds = bounds
        self._pace = cfg.stuck_pace
        self._last: float | None = None
        self._run = 0
        self._repeats = 0
        self._n = 0
        self._quantum = math.inf  # the smallest non-zero step seen: the series' resolution
        self._steps: deque[float] = deque(maxlen=PACE_STEPS)  # the last non-zero steps
        self._run_pace = math.inf  # median of those steps when the current run began

    def update(self, value: float, tolerance: float = 0.0) -> tuple[int, bool]:
        """Returns (current run length, stuck). The repeat rate learns only from non-stuck runs; a run
        within ``tolerance`` of a remembered plateau is not stuck."""
        if value == self._last:
            self._run += 1
        else:
            if self._in_stuck and self._last is not None and self._max_plateaus:
                # The run that just ended was stuck: from now on that value is a known plateau.
                self._plateaus[self._last] = None
                if len(self._plateaus) > self._max_plateaus:
                    del self._plateaus[next(iter(self._plateaus))]
            if self._last is not None:
                step = abs(value - self._last)
                if step < self._quantum:
                    self._quantum = step
                self._steps.append(step)
                self._run_pace = sorted(self._steps)[len(self._steps) // 2]
            self._in_stuck = False
            self._run = 1
            self._last = value
        # Laplace-smoothed chance that a reading repeats the previous one, before this reading.
        p = (self._repeats + 1) / (self._n + 2)
        stuck = self._run >= self._min_run and (self._run - 1) * math.log(p) < math.log(self._alpha)
        if stuck and self._natural(value, tolerance):
            return self._run, False
        if stuck:
            self._in_stuck = True
            return self._run, True
        self._n += 1
        if self._run > 1:
            self._repeats += 1
        return self._run, False

    def _natural(self, value: float, tolerance: float) -> bool:
        """A run the series makes by itself: a known plateau, a physical bound, or resolution pace."""
        if self._bounds is not None and (value <= self._bounds[0] or value >= self._bounds[1]):
            return True
        if self._pace > 0 and self._run_pace <= self._pace * self._quantum * (1.0 + 1e-6):
            return True
        return any(abs(value - v) <= tolerance for v in self._plateaus)


class Jump:
    """A step from the previous reading far outside this series' usual steps: robust z of the first
    difference against the rolling window of differences, gated by novelty of the step's size (it
    must exceed the long-run envelope of absolute steps). Finds a one-reading spike that stays
    inside the range the series has shown (a value normal at noon, appearing at midnight)."""

    __slots__ = ("_cfg", "_hist", "_last", "_last_d", "_win")

    def __init__(self, cfg: DetectorConfig) -> None:
        self._cfg = cfg
        self._win = SortedWindow(cfg.window)
        self._hist = SortedWindow(cfg.history)
        self._last: float | None = None
        self._last_d: float | None = None

    def update(self, value: float, gap: bool = False) -> tuple[float, float]:
        """Returns (the step's z-score, the same when the step is a jump else 0). After a ``gap`` in
        time the step is neither judged nor learnt."""
        last, self._last = self._last, value
        if last is None or gap:
            self._last_d = None
            return 0.0, 0.0
        d = value - last
        last_d, self._last_d = self._last_d, d
        raw = z = 0.0
        if len(self._hist) >= self._cfg.min_points:
            s = self._win.sorted
            median = s[len(s) // 2]
            scale = self._win.robust_scale()
            floor = 1e-9 * (1.0 + abs(median))
            raw = z = (d - median) / (scale if scale > floor else floor)
            if abs(z) >= self._cfg.jump_k:
                cfg = self._cfg
                seen = abs(d) <= envelope(self._hist.sorted, cfg.envelope_q, cfg.tail_q, cfg.jump_margin)[1]
                trend = cfg.jump_trend > 0 and last_d is not None and abs(d - last_d) < cfg.jump_trend * abs(d)
                if seen or trend:
                    z = 0.0
            else:
                z = 0.0
        self._win.push(d)
        self._hist.push(abs(d))
        return raw, z


class StreamingDetector:
    """The cold-start detector for one series: :class:`RobustZ` (level) and :class:`Stuck` (runs)."""

    __slots__ = ("_cfg", "_jump", "_last_ts", "_prev_z", "_robust", "_spacings", "_stuck", "count")

    def __init__(self, cfg: DetectorConfig | None = None, bounds: tuple[float, float] | None = None) -> None:
        """``bounds``: the field's physical range (``iot_protocol.FIELD_RANGES``), if known."""
        self._cfg = cfg or DetectorConfig()
        self._robust = RobustZ(self._cfg)
        self._stuck = Stuck(self._cfg, bounds)
        self._jump = Jump(self._cfg) if self._cfg.jump_k > 0 else None
        self._prev_z = 0.0
        self._last_ts: int | None = None
        self._spacings: deque[int] = deque(maxlen=SPACINGS)
        self.count = 0

    def _gap(self, ts_ms: int | None) -> bool:
        """Whether ``ts_ms`` comes after a gap (see ``DetectorConfig.gap_factor``)."""
        if ts_ms is None or self._cfg.gap_factor <= 0:
            return False
        last, self._last_ts = self._last_ts, ts_ms
        if last is None:
            return False
        sp = self._spacings
        usual = sorted(sp)[len(sp) // 2] if len(sp) >= 3 else None
        dt = ts_ms - last
        sp.append(dt)
        return usual is not None and dt > self._cfg.gap_factor * usual

    def update(self, value: float, ts_ms: int | None = None) -> PointScore:
        """Score one reading (only past and current values are used); ``ts_ms``, when given,
        lets steps across gaps in time be told from one-reading jumps."""
        self.count += 1
        if not math.isfinite(value):
            return NORMAL
        gap = self._gap(ts_ms)
        z, novel = self._robust.update(value)
        run, stuck = self._stuck.update(value, PLATEAU_TOLERANCE * self._robust.scale)
        sz, jz = self._jump.update(value, gap) if self._jump is not None else (0.0, 0.0)
        score = abs(z) / self._cfg.k
        level = score >= 1.0 and novel
        rz = self._robust
        if stuck:
            return PointScore(max(score, 1.0), z, novel, run, True, "stuck", sz, rz.scale, rz.margin)
        if level:
            return PointScore(score, z, novel, run, True, "robust_z", sz, rz.scale, rz.margin)
        prev_z, self._prev_z = self._prev_z, z
        recovery = self._cfg.jump_away and abs(prev_z) >= self._cfg.k and abs(z) < abs(prev_z)
        if abs(jz) >= self._cfg.jump_k and not recovery:
            return PointScore(abs(jz) / self._cfg.jump_k, z, novel, run, True, "jump", sz, rz.scale, rz.margin)
        return PointScore(score if novel else min(score, 0.999), z, novel, run, False, "", sz, rz.scale, rz.margin)
