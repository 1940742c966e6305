"""The anomaly evaluation on a real firmware_sim scenario: readings and labels generated offline by
the simulator's own sensors and faults (`iotctl sim generate`), scored by `iotctl anomalies evaluate`
with the same detector configuration as NAB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from firmware_sim.offline import generate
from firmware_sim.scenario import load_scenario, parse_scenario
from iotctl.main import app

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "firmware_sim/scenarios/anomaly_eval.toml"


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    d = tmp_path_factory.mktemp("sim")
    runner = CliRunner()
    gen = runner.invoke(app, ["sim", "generate", "--scenario", str(SCENARIO), "--out", str(d / "readings.csv"),
                              "--labels-out", str(d / "labels.csv")])  # fmt: skip
    assert gen.exit_code == 0, gen.output
    assert json.loads(gen.output.strip().splitlines()[-1]) == {
        "devices": 6, "readings": 17280, "labels": 26,
        "out": str(d / "readings.csv"), "labels_csv": str(d / "labels.csv"),
    }  # fmt: skip
    ev = runner.invoke(app, ["anomalies", "evaluate", "--sim-data", str(d / "readings.csv"),
                             "--sim-labels", str(d / "labels.csv")])  # fmt: skip
    assert ev.exit_code == 0, ev.output
    return json.loads(ev.output.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_the_figures_docs_anomaly_md_reports(scored: dict) -> None:  # type: ignore[type-arg]
    """Exactly (the simulation and the detectors are deterministic): 23 of 26 windows, 3 false positives."""
    assert scored["recall_by_kind"] == {"drift": 0.25, "dropout": 1.0, "spike": 1.0, "stuck": 1.0}
    assert (scored["precision"], scored["recall"], scored["f1"]) == (0.8846, 0.8846, 0.8846)


def test_offline_rows_are_what_a_live_device_stores() -> None:
    """Same grid, sensors and faults as the fleet: a spike moves exactly one stored value, a dropout
    leaves quality-0 points without values, a reboot leaves a gap."""
    base = {
        "simulation": {"seed": 3, "start": "2026-01-05T00:00:00Z", "duration": "2h"},
        "devices": [{"count": 1, "id_prefix": "d", "sampling_interval": "1m"}],
    }
    clean, _ = generate(parse_scenario(base))
    faulty = dict(base, events=[
        {"kind": "spike", "device": "d-000", "at": "30m", "field": "temperature", "magnitude": 10.0},
        {"kind": "dropout", "device": "d-000", "at": "60m", "duration": "5m"},
        {"kind": "reboot", "device": "d-000", "at": "90m", "duration": "10m"},
    ])  # fmt: skip
    rows, labels = generate(parse_scenario(faulty))
    assert len(clean) == 120
    assert [(lab.kind, lab.category) for lab in labels] == [("spike", "sensor"), ("dropout", "sensor"),
                                                           ("reboot", "device")]  # fmt: skip
    by_ts = {r.ts_ms: r for r in rows}
    changed = [r.ts_ms for r in clean if r.ts_ms in by_ts and by_ts[r.ts_ms].values != r.values]
    spike, dropout, reboot = labels
    # a value-changing fault's label ends at the first unaffected reading (the step back); others do not
    assert spike.end_ms - spike.start_ms == 59_940 + 60_000
    assert dropout.end_ms - dropout.start_ms == 300_000 and reboot.end_ms - reboot.start_ms == 600_000
    assert [t for t in changed if spike.covers(t)] == [t for t in changed if t < dropout.start_ms]
    assert len([t for t in changed if spike.covers(t)]) == 1
    s = next(r for r in rows if spike.covers(r.ts_ms))
    c = next(r for r in clean if r.ts_ms == s.ts_ms)
    assert round(s.values["temperature"] - c.values["temperature"], 3) == 10.0
    dropped = [r for r in rows if dropout.covers(r.ts_ms)]
    assert len(dropped) == 5 and all(r.values == {"quality_score": 0.0} for r in dropped)
    assert not [r for r in rows if reboot.start_ms <= r.ts_ms < reboot.end_ms]
    assert len(rows) == 110  # the reboot's 10 missing minutes


def test_scenario_file_plans_the_documented_faults() -> None:
    plan = load_scenario(SCENARIO).plan()
    kinds = [e.kind for e in plan.events]
    assert {k: kinds.count(k) for k in set(kinds)} == {"spike": 12, "stuck": 6, "drift": 4, "dropout": 4}
