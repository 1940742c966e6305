"""Streaming detectors see only the past; synthetic spikes and stuck values are found; episodes."""

from __future__ import annotations

import numpy as np

from cloud_core.analytics.detectors import DetectorConfig, StreamingDetector
from cloud_core.analytics.ensemble import SeriesScorer
from cloud_core.analytics.episodes import EpisodeTracker
from cloud_core.analytics.evaluate import LabelledSeries, run_detector, score_alerts
from cloud_core.analytics.features import FeatureState, batch_features
from cloud_core.analytics.forest import ModelStore, train_forest

STEP = 60_000


def _series(n: int = 3000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = np.arange(n, dtype=np.int64) * STEP + 1_700_000_000_000
    day = np.sin(2 * np.pi * (ts % 86_400_000) / 86_400_000)
    values = np.round(21.0 + 2.0 * day + rng.normal(0, 0.3, n), 2)
    return ts, values


def test_scores_do_not_depend_on_future_values() -> None:
    ts, values = _series(1500)
    a = StreamingDetector()
    first = [a.update(v) for v in values.tolist()]
    perturbed = values.copy()
    perturbed[1000:] = perturbed[1000:] * 5 + 100
    b = SeriesScorer()
    second = b.score_batch(ts.tolist(), perturbed.tolist())
    assert [p.score for p in first[:1000]] == [p.score for p in second[:1000]]
    assert [p.anomalous for p in first[:1000]] == [p.anomalous for p in second[:1000]]


def test_streaming_features_equal_batch_features() -> None:
    ts, values = _series(100)
    state = FeatureState(12)
    stream = np.array([state.update(t, v) for t, v in zip(ts.tolist(), values.tolist(), strict=True)])
    np.testing.assert_allclose(stream, batch_features(ts, values, 12), atol=1e-6)


def _synthetic() -> tuple[LabelledSeries, list[tuple[int, int, str]]]:
    """25,000 readings with 6 each of spikes (6-10 units on noise of 0.3), stuck runs, drifts and
    dropouts, 1000 readings apart."""
    rng = np.random.default_rng(7)
    ts, values = _series(25000, seed=7)
    values = values.astype(float)
    windows: list[tuple[int, int, str]] = []
    keep = np.ones(len(values), bool)
    pos = 900
    kinds = ["spike", "stuck", "drift", "dropout"] * 6
    for kind in kinds:
        if kind == "spike":
            values[pos] += rng.choice([-1, 1]) * rng.uniform(6, 10)
            windows.append((int(ts[pos]), int(ts[pos + 5]), kind))
        elif kind == "stuck":
            values[pos : pos + 30] = values[pos]
            windows.append((int(ts[pos]), int(ts[pos + 30]), kind))
        elif kind == "drift":
            values[pos : pos + 60] += np.linspace(0, 3, 60)
            windows.append((int(ts[pos]), int(ts[pos + 60]), kind))
        else:
            keep[pos : pos + 30] = False
            windows.append((int(ts[pos]), int(ts[pos + 31]), kind))
        pos += 1000
    ts, values = ts[keep], values[keep]
    s = LabelledSeries(
        "synthetic", tuple(map(str, ts.tolist())), ts, values, tuple((a, b) for a, b, _ in windows)
    )
    return s, windows


def _hits(s: LabelledSeries, windows: list[tuple[int, int, str]], config: DetectorConfig) -> tuple[dict[str, int], int]:
    alerts = [int(s.ts_ms[i]) for i in run_detector(s, config=config)]
    score = score_alerts("synthetic", alerts, s.windows, s.learning_end_ms)
    hits = {
        k: sum(any(a <= t <= b for t in alerts) for a, b, kk in windows if kk == k)
        for k in ("spike", "stuck", "drift", "dropout")
    }
    return hits, score.false_positives


def test_synthetic_spikes_drifts_stuck_and_dropouts() -> None:
    """Injected faults, scored with the shipped configuration; then without the record gate, which
    lets through the one spike smaller than 0.8 x an earlier one and two drifts (docs/anomaly.md)."""
    s, windows = _synthetic()
    assert _hits(s, windows, DetectorConfig()) == ({"spike": 5, "stuck": 6, "drift": 0, "dropout": 0}, 0)
    ungated = DetectorConfig(record_window=0)
    assert _hits(s, windows, ungated) == ({"spike": 6, "stuck": 6, "drift": 2, "dropout": 0}, 0)


def test_stuck_run_needs_to_be_improbable_for_the_series() -> None:
    d = StreamingDetector(DetectorConfig())
    # a quantised series that repeats half the time is not "stuck" after 5 repeats
    vals = [20.0, 20.0, 20.5, 20.5] * 200 + [20.0] * 5
    assert not any(p.detector == "stuck" for p in (d.update(v) for v in vals))
    d2 = StreamingDetector(DetectorConfig())
    rng = np.random.default_rng(3)
    out = [d2.update(v) for v in (20 + rng.normal(0, 0.2, 300)).tolist() + [20.0] * 10]
    assert [p.detector for p in out[-10:]].count("stuck") >= 5


def test_episode_groups_anomalies_and_closes_after_cooldown() -> None:
    tr = EpisodeTracker("d/t", cooldown_ms=10 * STEP)
    events = []
    flags = [False, True, True, False, True] + [False] * 12 + [True]
    for i, f in enumerate(flags):
        events.append(tr.update(i * STEP, float(i), f, 2.0 + i if f else 0.0, "robust_z" if f else ""))
    opened = [o for o, _ in events if o is not None]
    closed = [c for _, c in events if c is not None]
    assert len(opened) == 2
    assert len(closed) == 1
    ep = closed[0]
    assert (ep.start_ms, ep.end_ms, ep.count, ep.values) == (STEP, 4 * STEP, 3, [1.0, 2.0, 4.0])
    assert ep.peak_score == 6.0 and ep.peak_ms == 4 * STEP and ep.detector == "robust_z"
    assert tr.flush() is opened[1]


def test_forest_is_versioned_on_disk(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ts, values = _series(2000)
    store = ModelStore(tmp_path)
    m1 = train_forest("dev1.temperature", ts, values, version=store.next_version("dev1.temperature"))
    store.save(m1)
    m2 = train_forest("dev1.temperature", ts, values, version=store.next_version("dev1.temperature"))
    store.save(m2)
    assert store.versions("dev1.temperature") == [1, 2]
    loaded = store.load("dev1.temperature")
    assert loaded.meta.version == 2 and loaded.meta.train_points == 2000
    feats = batch_features(ts[:5], values[:5])
    np.testing.assert_allclose(loaded.score(feats), m2.score(feats))


def test_record_gate_lets_through_records_only_within_its_window() -> None:
    """A spike smaller than 0.8 x an earlier one is not alerted while the earlier one is within the
    gate's window; one as large is; once the window has passed, the smaller one is alerted again."""
    from dataclasses import replace

    cfg = replace(DetectorConfig(), record_window=2000, record_factor=0.8)
    rng = np.random.default_rng(11)
    ts = np.arange(6000, dtype=np.int64) * STEP + 1_700_000_000_000
    values = 21.0 + rng.normal(0, 0.3, 6000)  # no daily cycle: a spike's z is its size over 0.3
    values[1000] += 10.0  # the record
    values[1500] += 6.0  # 0.6 x the record, within the window: not alerted
    values[2000] += 10.0  # as large: alerted
    values[4500] += 6.0  # the records are more than a window ago: alerted
    s = LabelledSeries("gate", tuple(map(str, ts.tolist())), ts, values, ())
    alerted = set(run_detector(s, config=cfg))
    assert {1000, 2000, 4500} <= alerted and 1500 not in alerted
    assert 1500 in set(run_detector(s, config=replace(cfg, record_window=0)))
