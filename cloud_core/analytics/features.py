"""Features for the model-based detector, computed the same way in bulk (training, numpy) and one
reading at a time (scoring, O(1)): value, first difference, deviation from the trailing mean,
trailing standard deviation, and time of day (sine, cosine). Trailing windows hold the current
and the previous ``window - 1`` readings, so a feature never looks ahead."""

from __future__ import annotations

import math
from collections import deque

import numpy as np

__all__ = ["FEATURES", "FeatureState", "batch_features"]

FEATURES = ("value", "diff", "dev_mean", "roll_std", "tod_sin", "tod_cos")
DAY_MS = 86_400_000
TWO_PI = 2.0 * math.pi


def batch_features(ts_ms: np.ndarray, values: np.ndarray, window: int = 12) -> np.ndarray:
    """Feature matrix (rows x len(FEATURES)), float64, for readings in time order."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    out = np.empty((n, len(FEATURES)), dtype=np.float64)
    out[:, 0] = v
    out[0, 1] = 0.0
    np.subtract(v[1:], v[:-1], out=out[1:, 1])
    c1 = np.concatenate(([0.0], np.cumsum(v)))
    c2 = np.concatenate(([0.0], np.cumsum(v * v)))
    idx = np.arange(1, n + 1)
    lo = np.maximum(0, idx - window)
    cnt = (idx - lo).astype(np.float64)
    mean = (c1[idx] - c1[lo]) / cnt
    var = np.maximum((c2[idx] - c2[lo]) / cnt - mean * mean, 0.0)
    out[:, 2] = v - mean
    out[:, 3] = np.sqrt(var)
    phase = (np.asarray(ts_ms, dtype=np.int64) % DAY_MS).astype(np.float64) * (TWO_PI / DAY_MS)
    out[:, 4] = np.sin(phase)
    out[:, 5] = np.cos(phase)
    return out


class FeatureState:
    """Streaming twin of :func:`batch_features` for one series."""

    __slots__ = ("_buf", "_last", "_s1", "_s2", "_window")

    def __init__(self, window: int = 12) -> None:
        self._window = window
        self._buf: deque[float] = deque()
        self._s1 = 0.0
        self._s2 = 0.0
        self._last: float | None = None

    def update(self, ts_ms: int, value: float) -> tuple[float, ...]:
        buf = self._buf
        buf.append(value)
        self._s1 += value
        self._s2 += value * value
        if len(buf) > self._window:
            old = buf.popleft()
            self._s1 -= old
            self._s2 -= old * old
        n = len(buf)
        mean = self._s1 / n
        var = self._s2 / n - mean * mean
        diff = 0.0 if self._last is None else value - self._last
        self._last = value
        phase = (ts_ms % DAY_MS) * (TWO_PI / DAY_MS)
        return (
            value,
            diff,
            value - mean,
            math.sqrt(var) if var > 0 else 0.0,
            math.sin(phase),
            math.cos(phase),
        )
