"""bench/ingest.py at a tiny load: it runs end to end on real servers, stores exactly what it published,
and its last JSON line carries issue 20's targets and a verdict that follows from its own ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "ingest.py"
SMALL = ["--mqtt-msgs", "2000", "--influx-points", "2000", "--batch50", "40", "--single", "400", "--devices", "20"]


def test_a_small_run_stores_everything_and_prints_the_targets_and_its_verdict() -> None:
    r = subprocess.run(
        [sys.executable, str(BENCH), *SMALL, "--latency-s", "1", "--settle-s", "0"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["bridge_batch50_stored"] == out["bridge_batch50_expected"] == 40 * 50
    assert out["bridge_single_stored"] == out["bridge_single_expected"] == 400
    assert out["targets"] == {
        "ratio_single_to_mosquitto": ">= 0.5",
        "ratio_batch50_to_influx": ">= 0.6",
        "latency_p99_ms": "< 1000.0",
    }
    expected = (
        out["ratio_single_to_mosquitto"] >= 0.5
        and out["ratio_batch50_to_influx"] >= 0.6
        and out["latency_p99_ms"] < 1000
    )
    assert out["meets_targets"] is expected
    assert f"meets targets: {expected}" in r.stdout  # the human line says the same

