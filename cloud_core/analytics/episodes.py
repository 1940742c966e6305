"""Alerts are episodes, not points: consecutive anomalous readings of one series, closed once no
anomalous reading has come for ``cooldown_ms`` (by the readings' own timestamps). One alert per
episode: it opens at the first anomalous reading and closes with its end, peak score, detector
and values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Episode", "EpisodeTracker"]

MAX_VALUES = 50  # values kept per episode (the first ones; the count says how many there were)


@dataclass(slots=True)
class Episode:
    """One anomalous episode of one series (mutable while open)."""

    series: str
    start_ms: int
    end_ms: int
    peak_score: float
    peak_ms: int
    detector: str
    values: list[float] = field(default_factory=list)
    count: int = 0
    closed: bool = False
    detail: Any = None  # what explains the peak reading, kept by whoever tracks the episode

    def add(self, ts_ms: int, value: float, score: float, detector: str) -> None:
        self.end_ms = max(self.end_ms, ts_ms)
        self.count += 1
        if len(self.values) < MAX_VALUES:
            self.values.append(value)
        if score > self.peak_score:
            self.peak_score, self.peak_ms, self.detector = score, ts_ms, detector


class EpisodeTracker:
    """Groups one series' anomalous readings into episodes.

    ``update`` returns ``(opened, closed)``: the episode that this reading opened (if any) and the
    one it closed (an earlier episode whose cool-down has passed), each at most once.
    """

    __slots__ = ("_cooldown", "_open", "_series")

    def __init__(self, series: str, cooldown_ms: int = 3_600_000) -> None:
        self._series = series
        self._cooldown = cooldown_ms
        self._open: Episode | None = None

    @property
    def open_episode(self) -> Episode | None:
        return self._open

    def update(
        self, ts_ms: int, value: float, anomalous: bool, score: float, detector: str
    ) -> tuple[Episode | None, Episode | None]:
        closed: Episode | None = None
        ep = self._open
        if ep is not None and ts_ms - ep.end_ms > self._cooldown:
            ep.closed = True
            closed, self._open, ep = ep, None, None
        if not anomalous:
            return None, closed
        if ep is not None:
            ep.add(ts_ms, value, score, detector)
            return None, closed
        ep = Episode(self._series, ts_ms, ts_ms, score, ts_ms, detector, [value], 1)
        self._open = ep
        return ep, closed

    def flush(self) -> Episode | None:
        """Close and return the open episode (at shutdown or end of data)."""
        ep, self._open = self._open, None
        if ep is not None:
            ep.closed = True
        return ep
