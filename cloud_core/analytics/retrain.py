"""Scheduled retraining: read each device's recent history from the time-series store, fit a forest
per (device, field) with the bounded trainer (:func:`.forest.train_forest`: at most
``max_train_points`` rows fitted), and save it as the next model version in the :class:`.forest.ModelStore`;
with ``device_models``, also fit the device's multivariate model on the same readings
(:func:`.multivariate.fit_model`, the device's fields together) as its next version.

Bounded in memory (one device's history at a time, at most ``max_points`` readings per query) and in
time (no new series is started once ``time_budget_s`` has passed; the rest waits for the next run).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..tsdb.base import TimeSeriesStore
from .errors import ModelError
from .forest import ForestConfig, ForestMeta, ModelStore, train_forest
from .multivariate import ModelMeta, MultivariateConfig, MultivariateStore, device_matrix, device_model_key, fit_model

__all__ = ["RetrainReport", "model_key", "retrain"]

log = logging.getLogger(__name__)

SKIP_FIELDS = frozenset({"quality_score"})
"""Fields that describe the reading, not the world: no model for them."""


def model_key(device_id: str, field: str) -> str:
    """The model store key of one series (the worker loads models by this key)."""
    return f"{device_id}.{field}"


@dataclass(frozen=True, slots=True)
class RetrainReport:
    """What one run did: models saved, series skipped (too little history) and left for the next run."""

    trained: tuple[ForestMeta, ...]
    skipped: tuple[str, ...]
    deferred: tuple[str, ...]
    seconds: float
    device_models: tuple[ModelMeta, ...] = ()


def _devices(store: TimeSeriesStore, devices: Sequence[str] | None, start_ms: int, end_ms: int) -> list[str]:
    if devices is not None:
        return sorted(devices)
    # No device list (no metadata DB): one hourly-rollup query finds who sent anything.
    rows = store.query(device_id=None, fields=None, start_ms=start_ms, end_ms=end_ms, window_s=3600)
    return sorted({r.device_id for r in rows})


def retrain(
    store: TimeSeriesStore,
    models: ModelStore,
    *,
    hours: float = 168.0,
    now_ms: int | None = None,
    devices: Iterable[str] | None = None,
    cfg: ForestConfig | None = None,
    max_points: int = 200_000,
    time_budget_s: float = 600.0,
    device_models: MultivariateConfig | None = None,
) -> RetrainReport:
    """Train one new model version per (device, field) with enough history in the last ``hours``.

    Raises:
        StoreError: the time-series store could not be read.
    """
    cfg = cfg or ForestConfig()
    started = time.monotonic()
    end_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    start_ms = end_ms - int(hours * 3_600_000)
    trained: list[ForestMeta] = []
    dev_trained: list[ModelMeta] = []
    skipped: list[str] = []
    deferred: list[str] = []
    mv_store = MultivariateStore(models.root)
    for device in _devices(store, list(devices) if devices is not None else None, start_ms, end_ms):
        if time.monotonic() - started > time_budget_s:
            deferred.append(device)
            continue
        rows = store.query(device_id=device, fields=None, start_ms=start_ms, end_ms=end_ms, limit=max_points)
        series: dict[str, tuple[list[int], list[float]]] = {}
        vectors: list[dict[str, float]] = []
        for r in rows:
            vec: dict[str, float] = {}
            for field, v in r.values.items():
                if v is None or field in SKIP_FIELDS or not math.isfinite(v):
                    continue
                ts, vs = series.setdefault(field, ([], []))
                ts.append(r.ts_ms)
                vs.append(float(v))
                vec[field] = float(v)
            if vec:
                vectors.append(vec)
        if device_models is not None and vectors:
            key = device_model_key(device)
            fields, x = device_matrix(vectors)
            try:
                dev_model = fit_model(key, fields, x, device_models, version=mv_store.next_version(key))
            except ModelError:
                skipped.append(key)
            else:
                mv_store.save_model(dev_model)
                dev_trained.append(dev_model.meta)
        for field, (ts, vs) in sorted(series.items()):
            key = model_key(device, field)
            try:
                model = train_forest(
                    key, np.asarray(ts, np.int64), np.asarray(vs, np.float64), cfg, version=models.next_version(key)
                )
            except ModelError:
                skipped.append(key)
                continue
            models.save(model)
            trained.append(model.meta)
            log.info(
                "trained anomaly model",
                extra={"key": key, "version": model.meta.version, "points": model.meta.train_points},
            )
    return RetrainReport(
        tuple(trained), tuple(skipped), tuple(deferred), time.monotonic() - started, tuple(dev_trained)
    )
