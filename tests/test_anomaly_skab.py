"""The multivariate detectors on SKAB, pinned to the figures docs/anomaly.md reports: the benchmark's
protocol with the shipped model, the leave-one-file-out cross-validation that chose it, and the
`--predictions-out` / `--alerts-out` files, rescored from scratch, giving the same numbers."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cloud_core.analytics.multivariate import MultivariateConfig
from cloud_core.analytics.skab import (
    FIT_ROWS,
    GRID,
    Confusion,
    SkabCv,
    SkabFile,
    cross_validate_skab,
    grid_predictions,
    load_skab,
    run_skab,
)
from iotctl.main import app

REPO = Path(__file__).resolve().parents[1]
SKAB = REPO.parent / "shared/datasets/skab/data"


@pytest.fixture(scope="module")
def files() -> list[SkabFile]:
    if not (SKAB / "other/1.csv").is_file():
        pytest.fail(f"SKAB data missing: expected {SKAB} (../shared/datasets/skab beside the repo)")
    return load_skab(SKAB)


def _fingerprint(files: list[SkabFile]) -> str:
    """What the grid's predictions depend on: the analytics code, numpy and sklearn, and the data."""
    import sklearn

    import cloud_core.analytics as pkg

    h = hashlib.sha256(f"{np.__version__} {sklearn.__version__}".encode())
    for path in sorted(Path(pkg.__file__).parent.glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    for f in files:
        h.update(f.name.encode() + f.x.tobytes() + (f.y.tobytes() if f.y is not None else b"-"))
    return h.hexdigest()[:24]


@pytest.fixture(scope="module")
def cv(files: list[SkabFile], request: pytest.FixtureRequest) -> SkabCv:
    """The cross-validation over the 88 candidates (about 11 s of CPU): the candidates'
    predictions are kept in pytest's cache under a fingerprint of the code and data (any change to
    either recomputes them)."""
    key = f"edu/skab-cv/{_fingerprint(files)}"
    cached = request.config.cache.get(key, None)
    if cached is not None:
        sizes = {f.name: len(f.x) - FIT_ROWS for f in files}
        preds = {
            c: {n: np.unpackbits(np.frombuffer(bytes.fromhex(h), np.uint8))[: sizes[n]].astype(np.int64)
                for n, h in cached[c.label()].items()}
            for c in GRID
        }  # fmt: skip
    else:
        preds = grid_predictions(files)
        request.config.cache.set(
            key, {c.label(): {n: np.packbits(p.astype(np.uint8)).tobytes().hex() for n, p in d.items()}
                  for c, d in preds.items()},
        )  # fmt: skip
    return cross_validate_skab(files, precomputed=preds)


def _counts(c: Confusion) -> tuple[int, int, int, int]:
    return (c.tp, c.fp, c.fn, c.tn)


def test_leave_one_file_out_chooses_the_shipped_pca(cv: SkabCv) -> None:
    assert _counts(cv.by_method["pca"]) == (3552, 570, 1393, 3814)
    assert _counts(cv.by_method["mset"]) == (3526, 646, 1419, 3738)
    assert _counts(cv.by_method["iforest"]) == (1330, 308, 3615, 4076)
    t = cv.total  # out of sample: each file predicted with settings chosen on the other 13
    assert _counts(t) == (3552, 570, 1393, 3814)
    assert (round(t.f1, 3), round(100 * t.far, 1), round(100 * t.mar, 1)) == (0.784, 13.0, 28.2)
    assert cv.final == MultivariateConfig()  # the shipped default is what the procedure chooses


def test_protocol_with_the_shipped_model_and_the_files_an_outsider_rescores(
    files: list[SkabFile], tmp_path: Path
) -> None:
    run = run_skab(files, MultivariateConfig())
    assert _counts(run.total) == (3551, 477, 1394, 3907)
    assert (round(run.total.f1, 3), round(100 * run.total.far, 1), round(100 * run.total.mar, 1)) == (0.791, 10.9, 28.2)
    assert (round(100 * run.normal_only.far, 1), round(100 * run.normal_refitted.far, 1)) == (92.4, 7.1)

    preds, alerts = tmp_path / "predictions.csv", tmp_path / "alerts.csv"
    r = CliRunner().invoke(app, ["anomalies", "evaluate", "--format", "skab", "--data", str(SKAB),
                                 "--predictions-out", str(preds), "--alerts-out", str(alerts)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["total"]["f1"] == round(run.total.f1, 4)

    # Rescore from the files alone: join the predictions to the data by (file, datetime).
    with preds.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(rows[0]) == {"file", "datetime", "predicted"}
    got = {(r["file"], r["datetime"]): int(r["predicted"]) for r in rows}
    tp = fp = fn = tn = 0
    normal = {"": [0, 0], " (refitted)": [0, 0]}  # suffix -> [false alarms, readings]
    for path in sorted(SKAB.rglob("*.csv")):
        name = path.relative_to(SKAB).as_posix()
        with path.open(newline="") as fh:
            data = list(csv.DictReader(fh, delimiter=";"))
        for i, row in enumerate(data):
            if i < FIT_ROWS:
                assert (name, row["datetime"]) not in got  # the fitting rows are not predicted
                continue
            if "anomaly" not in row:
                for suffix, acc in normal.items():
                    acc[0] += got[(name + suffix, row["datetime"])]
                    acc[1] += 1
                continue
            p, a = got[(name, row["datetime"])], int(float(row["anomaly"]))
            tp, fp, fn, tn = tp + (p and a), fp + (p and not a), fn + (a and not p), tn + (not p and not a)
    assert (tp, fp, fn, tn) == _counts(run.total)
    assert [acc[0] for acc in normal.values()] == [run.normal_only.fp, run.normal_refitted.fp]
    assert len(got) == sum(acc[1] for acc in normal.values()) + tp + fp + fn + tn

    # Alerts are the runs of consecutive predicted readings; together they cover every predicted one.
    with alerts.open(newline="") as fh:
        runs = list(csv.DictReader(fh))
    assert sum(int(a["readings"]) for a in runs) == sum(got.values())
    first = runs[0]
    assert got[(first["file"], first["start"])] == 1 and got[(first["file"], first["end"])] == 1


def test_bad_skab_input_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "x.csv").write_text("time,value\n1,2\n")
    cmd = [sys.executable, "-m", "iotctl", "anomalies", "evaluate", "--format", "skab", "--data", str(bad)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: {bad / 'x.csv'}: expected a ';'-separated header starting with 'datetime'"
