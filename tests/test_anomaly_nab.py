"""The evaluation on the real NAB development data reaches issue 7's targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_core.analytics.evaluate import evaluate, load_nab

REPO = Path(__file__).resolve().parents[1]
NAB = REPO.parent / "shared/datasets/nab"


@pytest.fixture(scope="module")
def dataset():  # type: ignore[no-untyped-def]
    if not (NAB / "labels/combined_windows_dev.json").is_file():
        pytest.fail(
            f"NAB development data missing: expected it at {NAB} (../shared/datasets/nab beside the checkout)"
        )
    return load_nab(NAB / "data", NAB / "labels/combined_windows_dev.json")


def test_nab_dev_f1_at_least_080_and_beats_both_baselines(dataset) -> None:  # type: ignore[no-untyped-def]
    ours = evaluate(dataset, "ensemble").totals
    z = evaluate(dataset, "zscore288").totals
    forest = evaluate(dataset, "iforest_learning").totals
    assert ours.windows == 11
    assert ours.f1 >= 0.80, ours
    assert ours.f1 > z.f1 and ours.f1 > forest.f1
    assert round(z.f1, 2) == 0.56  # the figure for this baseline
