"""The model-based detector: an IsolationForest per device (or device type) and field, trained
on stored history with :mod:`.features`, with bounded time and memory (a uniform subsample of at
most ``max_train_points`` rows is fitted), and persisted with a version and metadata.

Layout of a model store: ``<dir>/<key>/v<version>.joblib`` (the fitted estimator) beside
``<dir>/<key>/v<version>.json`` (metadata); the highest version is the current one.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.ensemble import IsolationForest

from .errors import ModelError
from .features import FEATURES, batch_features

__all__ = ["ForestConfig", "ForestModel", "ModelStore", "train_forest"]

_KEY = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")


@dataclass(frozen=True, slots=True)
class ForestConfig:
    """Attributes:
    n_estimators: trees in the forest.
    max_samples: rows each tree sees (IsolationForest's own subsample).
    max_train_points: at most this many rows are used to fit (uniform subsample): bounds time and memory.
    feature_window: trailing window of the rolling features.
    threshold_q: the alert threshold is this quantile of the training rows' anomaly scores.
    seed: random seed (training is reproducible).
    """

    n_estimators: int = 100
    max_samples: int = 256
    max_train_points: int = 100_000
    feature_window: int = 12
    threshold_q: float = 0.999
    seed: int = 0


@dataclass(frozen=True, slots=True)
class ForestMeta:
    key: str
    version: int
    trained_at_ms: int
    train_points: int
    fitted_points: int
    threshold: float
    features: tuple[str, ...]
    feature_window: int
    train_seconds: float


@dataclass(slots=True)
class ForestModel:
    """A fitted forest and its metadata. ``score`` is the anomaly score over the threshold (>= 1 alerts)."""

    meta: ForestMeta
    estimator: IsolationForest

    def score(self, features: np.ndarray) -> np.ndarray:
        raw = -self.estimator.score_samples(np.atleast_2d(features))
        return raw / self.meta.threshold


def train_forest(
    key: str, ts_ms: np.ndarray, values: np.ndarray, cfg: ForestConfig | None = None, *, version: int = 1
) -> ForestModel:
    """Fit a forest on one series' history.

    Raises:
        ModelError: fewer than 2 * feature_window readings.
    """
    cfg = cfg or ForestConfig()
    n = len(values)
    if n < 2 * cfg.feature_window:
        raise ModelError(f"{key}: {n} readings are too few to train on", key=key)
    started = time.perf_counter()
    feats = batch_features(ts_ms, values, cfg.feature_window)
    rng = np.random.default_rng(cfg.seed)
    if n > cfg.max_train_points:
        feats = feats[np.sort(rng.choice(n, cfg.max_train_points, replace=False))]
    est = IsolationForest(
        n_estimators=cfg.n_estimators, max_samples=min(cfg.max_samples, len(feats)), random_state=cfg.seed
    )
    est.fit(feats)
    raw = -est.score_samples(feats)
    threshold = float(np.quantile(raw, cfg.threshold_q))
    meta = ForestMeta(
        key,
        version,
        int(time.time() * 1000),
        n,
        len(feats),
        threshold,
        FEATURES,
        cfg.feature_window,
        time.perf_counter() - started,
    )
    return ForestModel(meta, est)


class ModelStore:
    """Versioned models on disk, one folder per key."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _dir(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ModelError(f"model key {key!r} must be 1-128 of A-Z a-z 0-9 _ . : -", key=key)
        return self.root / key

    def versions(self, key: str) -> list[int]:
        d = self._dir(key)
        if not d.is_dir():
            return []
        return sorted(int(p.stem[1:]) for p in d.glob("v*.json") if p.stem[1:].isdigit())

    def next_version(self, key: str) -> int:
        v = self.versions(key)
        return (v[-1] + 1) if v else 1

    def save(self, model: ForestModel) -> Path:
        d = self._dir(model.meta.key)
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"v{model.meta.version}.joblib"
        joblib.dump(model.estimator, path)
        meta: dict[str, Any] = asdict(model.meta)
        tmp = d / f".v{model.meta.version}.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(d / f"v{model.meta.version}.json")  # metadata last: a version exists once complete
        return path

    def load(self, key: str, version: int | None = None) -> ForestModel:
        """The given version, or the newest. Raises ModelError when there is none or it is unreadable."""
        d = self._dir(key)
        versions = self.versions(key)
        if not versions:
            raise ModelError(f"no model stored for {key!r} under {self.root}", key=key)
        version = versions[-1] if version is None else version
        try:
            meta = json.loads((d / f"v{version}.json").read_text())
            est = joblib.load(d / f"v{version}.joblib")
        except (OSError, ValueError) as exc:
            raise ModelError(f"model {key!r} v{version} is unreadable: {exc}", key=key) from exc
        meta["features"] = tuple(meta["features"])
        return ForestModel(ForestMeta(**meta), est)
