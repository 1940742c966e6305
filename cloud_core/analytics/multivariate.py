"""Multivariate detection per device: one model over a device's fields together, so a pump whose
current rises while its flow falls is anomalous even when each value alone is normal.

Methods (``MultivariateConfig.method``), all fitted on a device's normal operation (the first
``warmup`` readings live, a file's first 400 rows in the SKAB protocol, stored history when
retrained):

- ``pca``: PCA T-squared and Q. Fields are standardised (mean, and a scale of at least
  ``rel_floor`` x |mean|), principal components keep ``explained`` of the variance; T-squared is the
  distance inside the principal subspace (too much of a normal relation), Q the squared residual
  off it (a relation broken). The shipped method (chosen on SKAB: docs/anomaly.md).
- ``mset``: MSET-style similarity estimation: each reading is estimated as a kernel-weighted
  combination of ``memory`` remembered normal states; the statistic is the residual, per field in
  units of its calibration residual.
- ``iforest``: the seed's IsolationForest on the standardised frame (a baseline).

Each statistic is averaged over the last ``smooth`` readings (causal), and divided by its
threshold, ``factor`` x the ``threshold_q`` quantile of the (smoothed) statistic on the fitting
rows: the device's score; >= 1 is anomalous. Every reading is explained by each field's share
of the score (:meth:`MultivariateModel.explain`), the value the model expected for it given the
other fields, and the range it had in normal operation.

Why the scale floor: a field that barely moves while the model learns (a fluid temperature steady
to 0.02 degrees for 400 seconds) would make every later 0.2-degree drift a 10-sigma event; with a
floor of 2% of its level such drifts count as what they are.

Models persist as ``<models_dir>/<device>:mv/v<N>.npz`` (arrays, no pickle) beside ``v<N>.json``
(metadata): :class:`MultivariateStore`.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError
from .forest import ModelStore

__all__ = [
    "METHODS",
    "DeviceScorer",
    "FieldExplanation",
    "MultivariateConfig",
    "MultivariateModel",
    "MultivariateStore",
    "Smoother",
    "device_matrix",
    "device_model_key",
    "fit_model",
    "fit_statistics",
    "with_threshold",
]

METHODS = ("pca", "mset", "iforest")
_RIDGE = 1e-3  # MSET: regularises the similarity matrix of the memory


@dataclass(frozen=True, slots=True)
class MultivariateConfig:
    """One configuration for every device (chosen by leave-one-file-out cross-validation on SKAB).

    Attributes:
        method: ``pca`` (T-squared and Q), ``mset`` or ``iforest``; see the module docstring.
        explained: PCA: keep the principal components that explain this share of the variance.
        rel_floor: a field's scale is at least this fraction of |its mean| in the fitting rows.
        threshold_q: the threshold is ``factor`` x this quantile of the statistic on the fitting rows.
        factor: see ``threshold_q``.
        smooth: each statistic is averaged over the last this many readings (1: none).
        warmup: readings a live device sends before its model is fitted (the SKAB protocol fits 400).
        memory: MSET: remembered normal states.
        bandwidth: MSET: kernel bandwidth, in standardised units per field.
        min_fields: a device needs at least this many numeric fields for a model.
    """

    method: str = "pca"
    explained: float = 0.85
    rel_floor: float = 0.02
    threshold_q: float = 0.99
    factor: float = 3.0
    smooth: int = 1
    warmup: int = 400
    memory: int = 100
    bandwidth: float = 1.0
    min_fields: int = 2

    def label(self) -> str:
        if self.method == "pca":
            extra = f"var {self.explained:g}"
        elif self.method == "mset":
            extra = f"memory {self.memory}"
        else:
            extra = f"q {self.threshold_q:g}"
        return f"{self.method} ({extra}, floor {self.rel_floor:g}, x{self.factor:g}, smooth {self.smooth})"


@dataclass(frozen=True, slots=True)
class FieldExplanation:
    """One field's part in a reading's score."""

    field: str
    value: float
    contribution: float  # share of the score, 0..1 (the fields' shares sum to 1)
    expected: float  # what the model expected given the other fields
    normal_low: float  # the field's range in normal operation (0.5% and 99.5% quantiles of the fit)
    normal_high: float


@dataclass(frozen=True, slots=True)
class ModelMeta:
    key: str
    version: int
    method: str
    fields: tuple[str, ...]
    trained_at_ms: int
    train_points: int
    train_seconds: float
    config: dict[str, Any] = field(default_factory=dict)


def _kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.exp(-np.maximum(d2, 0.0) / (2.0 * bandwidth * bandwidth * a.shape[1]))


@dataclass(slots=True)
class MultivariateModel:
    """A fitted device model. ``arrays`` holds the method's parameters (see :func:`fit_model`)."""

    meta: ModelMeta
    mean: np.ndarray
    scale: np.ndarray
    low: np.ndarray
    high: np.ndarray
    thresholds: np.ndarray
    smooth: int
    arrays: dict[str, np.ndarray]
    estimator: Any = None  # iforest only (not persisted)

    @property
    def fields(self) -> tuple[str, ...]:
        return self.meta.fields

    def _z(self, x: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(np.asarray(x, np.float64)) - self.mean) / self.scale

    def _estimate(self, z: np.ndarray) -> np.ndarray:
        """The model's estimate of each standardised field (rows of ``z``)."""
        a = self.arrays
        if self.meta.method == "pca":
            p = a["components"]
            return (z @ p) @ p.T
        if self.meta.method == "mset":
            mem = a["memory"]
            w = _kernel(z, mem, float(a["bandwidth"][0])) @ a["gram_inv"]
            s = w.sum(1, keepdims=True)
            s[np.abs(s) < 1e-12] = 1e-12
            return (w / s) @ mem
        return np.zeros_like(z)

    def statistics(self, x: np.ndarray) -> np.ndarray:
        """Raw statistics per row of ``x`` (fields in ``fields`` order): PCA (T-squared, Q),
        MSET (residual,), iforest (anomaly score,)."""
        z = self._z(x)
        a = self.arrays
        if self.meta.method == "pca":
            p, lam = a["components"], a["variances"]
            t = z @ p
            r = z - t @ p.T
            return np.column_stack(((t * t / lam).sum(1), (r * r).sum(1)))
        if self.meta.method == "mset":
            r = (z - self._estimate(z)) / a["residual_scale"]
            return (r * r).sum(1)[:, None]
        return (-self.estimator.score_samples(z))[:, None]

    def explain(self, x: np.ndarray) -> list[FieldExplanation]:
        """Each field's share of the score of reading ``x``, the value expected for it given the
        others, and its normal range; largest share first."""
        z = self._z(x)[0]
        a = self.arrays
        est = self._estimate(z[None, :])[0]
        if self.meta.method == "pca":
            p, lam = a["components"], a["variances"]
            t = p.T @ z
            t2_part = z * (p @ (t / lam))  # sums to T-squared
            r = z - p @ t
            raw = np.maximum(t2_part, 0.0) / self.thresholds[0] + r * r / self.thresholds[1]
        elif self.meta.method == "mset":
            raw = ((z - est) / a["residual_scale"]) ** 2
        else:
            raw = z * z
        total = float(raw.sum())
        share = raw / total if total > 0 else np.full(len(raw), 1.0 / len(raw))
        expected = self.mean + self.scale * est if self.meta.method != "iforest" else self.mean
        x = np.asarray(x, np.float64).ravel()
        out = [
            FieldExplanation(
                f, float(x[i]), float(share[i]), float(expected[i]), float(self.low[i]), float(self.high[i])
            )
            for i, f in enumerate(self.fields)
        ]
        return sorted(out, key=lambda e: -e.contribution)


class Smoother:
    """Causal mean of each statistic over the last ``window`` readings, divided by its threshold:
    the score (the largest ratio)."""

    __slots__ = ("_buf", "_sum", "_thresholds", "_window")

    def __init__(self, thresholds: np.ndarray, window: int) -> None:
        self._thresholds = [max(float(t), 1e-12) for t in thresholds]
        self._window = max(1, window)
        self._buf: deque[tuple[float, ...]] = deque()
        self._sum = [0.0] * len(self._thresholds)

    def update(self, stats: tuple[float, ...]) -> float:
        buf, acc = self._buf, self._sum
        buf.append(stats)
        for i, v in enumerate(stats):
            acc[i] += v
        if len(buf) > self._window:
            old = buf.popleft()
            for i, v in enumerate(old):
                acc[i] -= v
        n = len(buf)
        return max(acc[i] / n / t for i, t in enumerate(self._thresholds))


def _smoothed(stats: np.ndarray, window: int) -> np.ndarray:
    """The causal mean of each column over ``window`` rows (for thresholds on the fitting rows)."""
    c = np.vstack((np.zeros((1, stats.shape[1])), np.cumsum(stats, 0)))
    i = np.arange(1, len(stats) + 1)
    lo = np.maximum(0, i - window)
    return (c[i] - c[lo]) / (i - lo)[:, None]


def fit_model(
    key: str, fields: tuple[str, ...], x: np.ndarray, cfg: MultivariateConfig | None = None, *, version: int = 1
) -> MultivariateModel:
    """Fit a device model on normal operation ``x`` (rows x fields).

    Raises:
        ModelError: an unknown method, fewer than ``min_fields`` fields, or too few rows.
    """
    cfg = cfg or MultivariateConfig()
    model, calib = fit_statistics(key, fields, x, cfg, version=version)
    return with_threshold(model, calib, cfg)


def with_threshold(model: MultivariateModel, calib: np.ndarray, cfg: MultivariateConfig) -> MultivariateModel:
    """``model`` with the threshold and smoothing of ``cfg`` (``threshold_q``, ``factor``, ``smooth``),
    from ``calib``, the raw statistics of its calibration rows (:func:`fit_statistics`)."""
    quantile = np.quantile(_smoothed(calib, cfg.smooth), cfg.threshold_q, axis=0)
    meta = replace(model.meta, config=asdict(cfg))
    return replace(model, meta=meta, thresholds=np.maximum(quantile * cfg.factor, 1e-12), smooth=cfg.smooth)


def fit_statistics(
    key: str, fields: tuple[str, ...], x: np.ndarray, cfg: MultivariateConfig, *, version: int = 1
) -> tuple[MultivariateModel, np.ndarray]:
    """The fitted model before its threshold, and the raw statistics of its calibration rows (the
    fitting rows; MSET's odd rows). What is fitted depends on ``method``, ``rel_floor``,
    ``explained``, ``memory`` and ``bandwidth`` only.

    Raises:
        ModelError: as :func:`fit_model`.
    """
    x = np.asarray(x, np.float64)
    if cfg.method not in METHODS:
        raise ModelError(f"unknown multivariate method {cfg.method!r}: use one of {', '.join(METHODS)}", key=key)
    if x.ndim != 2 or x.shape[1] != len(fields) or len(fields) < cfg.min_fields:
        raise ModelError(f"{key}: a device model needs at least {cfg.min_fields} fields", key=key)
    n, p = x.shape
    if n < max(20, 4 * p) or not np.isfinite(x).all():
        raise ModelError(f"{key}: {n} rows of {p} fields are too few (or not finite) to fit", key=key)
    started = time.perf_counter()
    mean = x.mean(0)
    floor = np.maximum(cfg.rel_floor * np.abs(mean), 1e-6 * (1.0 + np.abs(mean)))
    scale = np.maximum(x.std(0), floor)
    z = (x - mean) / scale
    low, high = np.quantile(x, 0.005, axis=0), np.quantile(x, 0.995, axis=0)
    arrays: dict[str, np.ndarray] = {}
    estimator = None
    calib = z
    if cfg.method == "pca":
        lam, vec = np.linalg.eigh(np.cov(z, rowvar=False))
        order = np.argsort(lam)[::-1]
        lam, vec = np.maximum(lam[order], 1e-12), vec[:, order]
        k = int(np.searchsorted(np.cumsum(lam) / lam.sum(), cfg.explained) + 1)
        k = max(1, min(k, p - 1))
        arrays = {"components": vec[:, :k], "variances": lam[:k]}
    elif cfg.method == "mset":
        even, calib = z[0::2], z[1::2]
        idx = set(np.linspace(0, len(even) - 1, min(cfg.memory, len(even))).astype(int).tolist())
        idx |= set(np.argmin(even, 0).tolist()) | set(np.argmax(even, 0).tolist())  # the extremes of each field
        mem = even[sorted(idx)]
        gram = _kernel(mem, mem, cfg.bandwidth)
        arrays = {
            "memory": mem,
            "gram_inv": np.linalg.inv(gram + _RIDGE * np.eye(len(mem))),
            "bandwidth": np.array([cfg.bandwidth]),
            "residual_scale": np.ones(p),
        }
    else:
        from sklearn.ensemble import IsolationForest

        estimator = IsolationForest(n_estimators=100, random_state=0).fit(z)
    meta = ModelMeta(key, version, cfg.method, tuple(fields), int(time.time() * 1000), n, 0.0, asdict(cfg))
    model = MultivariateModel(meta, mean, scale, low, high, np.ones(1), cfg.smooth, arrays, estimator)
    if cfg.method == "mset":
        resid = calib - model._estimate(calib)
        arrays["residual_scale"] = np.maximum(resid.std(0), 1e-3)
    stats = model.statistics(mean + scale * calib)
    model.meta = ModelMeta(
        key, version, cfg.method, tuple(fields), meta.trained_at_ms, n, time.perf_counter() - started, asdict(cfg)
    )
    return model, stats


class DeviceScorer:
    """Scores one device's readings with a fitted model, in order: the smoothed statistic over its
    threshold (>= 1 is anomalous)."""

    __slots__ = ("_smoother", "model")

    def __init__(self, model: MultivariateModel) -> None:
        self.model = model
        self._smoother = Smoother(model.thresholds, model.smooth)

    def score(self, x: np.ndarray) -> list[float]:
        """Scores of the rows of ``x`` (fields in the model's order), each from that row and earlier ones."""
        return self.score_statistics(self.model.statistics(x))

    def score_statistics(self, stats: np.ndarray) -> list[float]:
        """Scores from the model's raw statistics of readings (:meth:`MultivariateModel.statistics`)."""
        update = self._smoother.update
        return [update(tuple(row)) for row in stats.tolist()]


def device_matrix(
    rows: Sequence[Mapping[str, float]], *, min_share: float = 0.95
) -> tuple[tuple[str, ...], np.ndarray]:
    """A device's readings as a matrix: the fields present in at least ``min_share`` of ``rows``
    (sorted by name), and the rows that carry all of them."""
    counts = Counter(k for r in rows for k in r)
    fields = tuple(sorted(f for f, c in counts.items() if c >= min_share * len(rows)))
    x = np.array([[r[f] for f in fields] for r in rows if all(f in r for f in fields)], np.float64)
    return fields, x.reshape(-1, len(fields))


def device_model_key(device_id: str) -> str:
    """The model store key of a device's multivariate model."""
    return f"{device_id}:mv"


class MultivariateStore(ModelStore):
    """Versioned device models on disk: ``<dir>/<device>:mv/v<N>.npz`` (arrays) and ``v<N>.json``."""

    def save_model(self, model: MultivariateModel) -> Path:
        if model.meta.method == "iforest":
            raise ModelError("the iforest baseline is not persisted", key=model.meta.key)
        d = self._dir(model.meta.key)
        d.mkdir(parents=True, exist_ok=True)
        v = model.meta.version
        path = d / f"v{v}.npz"
        parts = {"mean": model.mean, "scale": model.scale, "low": model.low, "high": model.high,
                 "thresholds": model.thresholds, **{f"a_{k}": a for k, a in model.arrays.items()}}  # fmt: skip
        with path.open("wb") as fh:
            np.savez(fh, **parts)  # type: ignore[arg-type]  # numpy's stub types the keyword arrays as allow_pickle
        meta = {**asdict(model.meta), "smooth": model.smooth}
        tmp = d / f".v{v}.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(d / f"v{v}.json")  # metadata last: a version exists once complete
        return path

    def load_model(self, key: str, version: int | None = None) -> MultivariateModel:
        """The given version, or the newest. Raises ModelError when there is none or it is unreadable."""
        versions = self.versions(key)
        if not versions:
            raise ModelError(f"no device model stored for {key!r} under {self.root}", key=key)
        version = versions[-1] if version is None else version
        d = self._dir(key)
        try:
            meta = json.loads((d / f"v{version}.json").read_text())
            with np.load(d / f"v{version}.npz", allow_pickle=False) as data:
                arrays = {k[2:]: data[k] for k in data.files if k.startswith("a_")}
                parts = {k: data[k] for k in ("mean", "scale", "low", "high", "thresholds")}
            smooth = int(meta.pop("smooth"))
            meta["fields"] = tuple(meta["fields"])
            return MultivariateModel(ModelMeta(**meta), smooth=smooth, arrays=arrays, **parts)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"device model {key!r} v{version} is unreadable: {exc}", key=key) from exc
