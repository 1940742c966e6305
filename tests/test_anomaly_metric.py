"""The event-level metric of issue 7 on hand-built cases."""

from __future__ import annotations

from cloud_core.analytics.evaluate import learning_rows, score_alerts, totals

MIN = 60_000


def test_learning_rows_is_15_percent_capped_at_750() -> None:
    assert learning_rows(100) == 15
    assert learning_rows(4032) == 604
    assert learning_rows(10_000) == 750


def test_window_detected_by_one_alert_inside_inclusive_ends() -> None:
    s = score_alerts("f", [100 * MIN], [(100 * MIN, 110 * MIN), (200 * MIN, 210 * MIN)], None)
    assert (s.windows, s.detected, s.false_positives) == (2, 1, 0)
    assert s.precision == 1.0 and s.recall == 0.5


def test_outside_alerts_count_at_most_once_per_hour() -> None:
    # 0, 30, 60 min: one FP (60 is not MORE than 60 after 0); 61 counts; 100 is within an hour of 61.
    alerts = [0, 30 * MIN, 60 * MIN, 61 * MIN, 100 * MIN, 122 * MIN]
    s = score_alerts("f", alerts, [(500 * MIN, 510 * MIN)], None)
    assert s.false_positives == 3  # 0, 61, 122
    assert s.detected == 0


def test_learning_period_ignores_alerts_and_windows_ending_inside() -> None:
    learning_end = 50 * MIN
    windows = [(10 * MIN, 40 * MIN), (45 * MIN, 80 * MIN), (200 * MIN, 210 * MIN)]
    alerts = [20 * MIN, 30 * MIN, 49 * MIN, 50 * MIN, 70 * MIN, 300 * MIN]
    s = score_alerts("f", alerts, windows, learning_end)
    # first window ends in the learning period: not scored; alerts <= 50 min ignored
    assert s.windows == 2
    assert s.detected == 1  # second window by the 70-min alert
    assert s.false_positives == 1  # 300 min
    assert s.alerts == 2


def test_totals_sum_counts_before_dividing() -> None:
    a = score_alerts("a", [5 * MIN], [(0, 10 * MIN)], None)
    b = score_alerts("b", [500 * MIN], [(0, 10 * MIN), (20 * MIN, 30 * MIN)], None)
    t = totals([a, b])
    assert (t.windows, t.detected, t.false_positives) == (3, 1, 1)
    assert t.precision == 0.5
    assert abs(t.recall - 1 / 3) < 1e-12
    assert abs(t.f1 - 0.4) < 1e-12
