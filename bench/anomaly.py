"""Anomaly benchmark (issue 7 item 7): readings scored per second by one worker's scoring path on
one core (streaming detector + batched forest + episodes), and IsolationForest training time and
peak memory for one million points. Last line: one JSON object."""

from __future__ import annotations

import json
import time
import tracemalloc

import numpy as np

from cloud_core.analytics.ensemble import SeriesScorer
from cloud_core.analytics.episodes import EpisodeTracker
from cloud_core.analytics.forest import train_forest


def main() -> None:
    rng = np.random.default_rng(0)
    n_series, per_series, batch = 20, 10_000, 500
    t0 = 1_700_000_000_000
    ts = (t0 + np.arange(per_series, dtype=np.int64) * 60_000).tolist()
    history = 21 + rng.normal(0, 0.3, 5000)
    forest = train_forest("bench", np.array(ts[:5000], np.int64), history)
    scorers = [SeriesScorer(forest=forest) for _ in range(n_series)]
    trackers = [EpisodeTracker(f"s{i}") for i in range(n_series)]
    data = [(21 + rng.normal(0, 0.3, per_series)).tolist() for _ in range(n_series)]
    started = time.perf_counter()
    for off in range(0, per_series, batch):
        for sc, tr, vals in zip(scorers, trackers, data, strict=True):
            tsb, vb = ts[off : off + batch], vals[off : off + batch]
            for t, v, p in zip(tsb, vb, sc.score_batch(tsb, vb), strict=True):
                tr.update(t, v, p.anomalous, p.score, p.detector)
    elapsed = time.perf_counter() - started
    rate = n_series * per_series / elapsed
    print(f"scoring: {n_series * per_series} readings in {elapsed:.2f} s = {rate:,.0f} readings/s (one core)")

    big_ts = t0 + np.arange(1_000_000, dtype=np.int64) * 60_000
    big = 21 + rng.normal(0, 0.3, 1_000_000)
    tracemalloc.start()
    started = time.perf_counter()
    model = train_forest("bench-1m", big_ts, big)
    train_s = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_mb = peak / 1e6
    print(f"training on 1,000,000 points (fitted on {model.meta.fitted_points:,}): {train_s:.2f} s, "
          f"peak traced memory {peak_mb:.0f} MB")
    print(json.dumps({"readings_per_s": round(rate), "train_s_1m_points": round(train_s, 2),
                      "train_peak_mb": round(peak_mb, 1)}))


if __name__ == "__main__":
    main()
