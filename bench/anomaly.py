"""Anomaly benchmark: what the analytics worker's scoring costs, in CPU time (``time.process_time``:
the machine this runs on is shared, so wall-clock rates would measure the neighbours too).

1. Per-field path (issue 7 item 7; target >= 40,000 readings per CPU-second): one worker's
   per-series scoring (streaming detector + record gate + batched forest + episodes), 20 series of
   10,000 readings in stream-read batches of 500.
2. Multivariate path, per reading: a device model (PCA T-squared+Q, the shipped configuration) over
   5 fields, 200 devices, in batches of 12 readings per device (what one bridge flush carries).
3. Multivariate path, per device: fitting a model on the warm-up (400 readings x 5 fields) and on a
   week of 5-minute history (2,016 readings), and the memory a fitted device holds in the worker.
4. The whole worker (``AnalyticsWorker.handle``: parsing, both paths, episodes) on the same
   stream entries, with and without device models: what the multivariate path adds per reading.
5. IsolationForest training on one million points (bounded subsample) and its peak memory.

Last line: one JSON object.
"""

from __future__ import annotations

import json
import tempfile
import time
import tracemalloc

import numpy as np
import orjson

from cloud_core.analytics.ensemble import SeriesScorer
from cloud_core.analytics.episodes import EpisodeTracker
from cloud_core.analytics.forest import train_forest
from cloud_core.analytics.multivariate import DeviceScorer, MultivariateConfig, fit_model

T0 = 1_700_000_000_000
FIELDS = ("battery_level", "humidity", "pressure", "signal_strength", "temperature")


def _device_data(rng: np.random.Generator, n: int) -> np.ndarray:
    """Normal operation of a 5-field device (no anomaly: the steady-state cost, no episode open)."""
    t = np.arange(n) / 288.0  # days at 5-minute readings
    temp = 15 + 5 * np.sin(2 * np.pi * t) + rng.normal(0, 0.2, n)
    hum = 90 - 2.5 * temp + rng.normal(0, 1.0, n)
    press = 1013 + 2 * np.sin(2 * np.pi * t) + rng.normal(0, 0.1, n)
    batt = 95 + 0.5 * np.sin(2 * np.pi * t) + rng.normal(0, 0.05, n)  # solar top-up by day
    sig = -70 + rng.normal(0, 2.0, n)
    return np.column_stack((batt, hum, press, sig, temp))


def per_field() -> float:
    rng = np.random.default_rng(0)
    n_series, per_series, batch = 20, 10_000, 500
    ts = (T0 + np.arange(per_series, dtype=np.int64) * 60_000).tolist()
    forest = train_forest("bench", np.array(ts[:5000], np.int64), 21 + rng.normal(0, 0.3, 5000))
    scorers = [SeriesScorer(forest=forest) for _ in range(n_series)]
    trackers = [EpisodeTracker(f"s{i}") for i in range(n_series)]
    data = [(21 + rng.normal(0, 0.3, per_series)).tolist() for _ in range(n_series)]
    cpu = time.process_time()
    for off in range(0, per_series, batch):
        for sc, tr, vals in zip(scorers, trackers, data, strict=True):
            tsb, vb = ts[off : off + batch], vals[off : off + batch]
            for t, v, p in zip(tsb, vb, sc.score_batch(tsb, vb), strict=True):
                tr.update(t, v, p.anomalous, p.score, p.detector)
    return n_series * per_series / (time.process_time() - cpu)


def multivariate() -> dict[str, float]:
    rng = np.random.default_rng(1)
    cfg = MultivariateConfig()
    n_dev, per_dev, batch = 200, 2_000, 12
    data = [_device_data(rng, 400 + per_dev) for _ in range(n_dev)]
    cpu = time.process_time()
    models = [fit_model(f"d{i}:mv", FIELDS, d[:400], cfg) for i, d in enumerate(data)]
    fit_ms = (time.process_time() - cpu) / n_dev * 1000
    week = _device_data(rng, 2016)
    cpu = time.process_time()
    for _ in range(20):
        fit_model("week:mv", FIELDS, week, cfg)
    fit_week_ms = (time.process_time() - cpu) / 20 * 1000
    scorers = [DeviceScorer(m) for m in models]
    trackers = [EpisodeTracker(f"d{i}/*") for i in range(n_dev)]
    ts = (T0 + np.arange(per_dev, dtype=np.int64) * 300_000).tolist()
    cpu = time.process_time()
    for off in range(0, per_dev, batch):
        for sc, tr, d in zip(scorers, trackers, data, strict=True):
            x = d[400 + off : 400 + off + batch]
            for t, s in zip(ts[off : off + batch], sc.score(x), strict=True):
                tr.update(t, s, s >= 1.0, s, "pca")
    score_us = (time.process_time() - cpu) / (n_dev * per_dev) * 1e6
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [
        (DeviceScorer(fit_model(f"m{i}:mv", FIELDS, d[:400], cfg)), EpisodeTracker(f"m{i}/*"))
        for i, d in enumerate(data)
    ]
    per_device_kb = (tracemalloc.get_traced_memory()[0] - before) / len(kept) / 1000
    tracemalloc.stop()
    return {
        "mv_score_us_per_reading": round(score_us, 1),
        "mv_fit_ms_warmup": round(fit_ms, 2),
        "mv_fit_ms_week": round(fit_week_ms, 2),
        "mv_kb_per_device": round(per_device_kb, 1),
        "mv_warmup_kb_per_device": round(cfg.warmup * len(FIELDS) * 8 / 1000, 1),
    }


def worker(multivariate_on: bool) -> float:
    """CPU microseconds per reading through AnalyticsWorker.handle (stream entries as the bridge writes them)."""
    from sqlmodel import Session, select

    from cloud_core.analytics.models import Anomaly
    from cloud_core.analytics.settings import AnalyticsSettings
    from cloud_core.analytics.worker import AnalyticsWorker
    from cloud_core.cache import open_cache
    from cloud_core.core.db import make_engine

    rng = np.random.default_rng(2)
    n_dev, per_dev, batch = 50, 1_400, 12
    tmp = tempfile.mkdtemp()
    engine = make_engine(f"sqlite:///{tmp}/meta.db")
    w = AnalyticsWorker(AnalyticsSettings(multivariate=multivariate_on), open_cache("memory://"), engine)
    w.ensure_group()
    data = [_device_data(rng, per_dev) for _ in range(n_dev)]
    entries = []
    for off in range(0, per_dev, batch):
        for i, d in enumerate(data):
            readings = [{"ts": T0 + (off + j) * 300_000, "sensor_type": "env",
                         "values": {**dict(zip(FIELDS, d[off + j].tolist(), strict=True)), "quality_score": 1.0}}
                        for j in range(min(batch, per_dev - off))]  # fmt: skip
            entries.append((str(len(entries)), {"device_id": f"dev{i}", "readings": orjson.dumps(readings).decode()}))
    cpu = time.process_time()
    for k in range(0, len(entries), 40):
        w.handle(entries[k : k + 40])
    us = (time.process_time() - cpu) / (n_dev * per_dev) * 1e6
    with Session(engine) as session:  # the steady state: nothing, or next to nothing, alerted
        assert len(list(session.exec(select(Anomaly)))) < n_dev // 5
    return us


def forest_training() -> dict[str, float]:
    rng = np.random.default_rng(3)
    big_ts = T0 + np.arange(1_000_000, dtype=np.int64) * 60_000
    big = 21 + rng.normal(0, 0.3, 1_000_000)
    tracemalloc.start()
    cpu = time.process_time()
    model = train_forest("bench-1m", big_ts, big)
    train_s = time.process_time() - cpu
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert model.meta.fitted_points == 100_000
    return {"train_cpu_s_1m_points": round(train_s, 2), "train_peak_mb": round(peak / 1e6, 1)}


def main() -> None:
    rate = per_field()
    print(f"per-field scoring: {rate:,.0f} readings per CPU-second (target >= 40,000)")
    mv = multivariate()
    print(f"device model (PCA, 5 fields): {mv['mv_score_us_per_reading']} us CPU per reading scored; fit "
          f"{mv['mv_fit_ms_warmup']} ms on the warm-up, {mv['mv_fit_ms_week']} ms on a week of 5-minute history; "
          f"{mv['mv_kb_per_device']} kB per fitted device "
          f"(+ {mv['mv_warmup_kb_per_device']} kB while warming up)")  # fmt: skip
    off, on = worker(False), worker(True)
    print(f"whole worker: {off:.1f} us CPU per reading (5 fields) per-field only, {on:.1f} us with device "
          f"models: the multivariate path adds {on - off:.1f} us per reading")  # fmt: skip
    tr = forest_training()
    print(f"forest training on 1,000,000 points (fitted on 100,000): {tr['train_cpu_s_1m_points']} s CPU, "
          f"peak traced memory {tr['train_peak_mb']:.0f} MB")  # fmt: skip
    print(json.dumps({"per_field_readings_per_cpu_s": round(rate), **mv, "worker_us_per_reading": round(off, 1),
                      "worker_us_per_reading_with_device_models": round(on, 1), **tr}))  # fmt: skip


if __name__ == "__main__":
    main()
