"""Every benchmark refuses a count or a duration that would make a phase empty or meaningless, with
argparse's one-line error naming the flag, before it starts any server. ``bench/ingest.py --single -5``
ran an empty phase and printed a single-reading ratio of 0.0 as a measurement; ``bench/sim_scale.py
--devices 0`` ended in a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize(
    ("script", "flag", "value", "said"),
    [
        ("ingest.py", "--single", "-5", "must be at least 1, not -5"),
        ("ingest.py", "--batch50", "0", "must be at least 1, not 0"),
        ("ingest.py", "--devices", "ten", "'ten' is not a whole number"),
        ("ingest.py", "--latency-s", "0", "must be more than 0 seconds, not 0"),
        ("ingest.py", "--settle-s", "-1", "must be 0 seconds or more, not -1"),
        ("peer_nodered.py", "--rounds", "0", "must be at least 1, not 0"),
        ("agent_footprint.py", "--duration", "-1", "must be more than 0 seconds, not -1"),
        ("sim_scale.py", "--devices", "0", "must be at least 1, not 0"),
        ("sim_scale.py", "--interval", "nan", "must be more than 0 seconds, not nan"),
        ("console.py", "--loads", "0", "must be at least 1, not 0"),
    ],
)
def test_a_value_that_would_measure_nothing_is_refused_naming_the_flag(
    script: str, flag: str, value: str, said: str
) -> None:
    r = subprocess.run(
        [sys.executable, str(BENCH / script), f"{flag}={value}"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2, (r.stdout[-500:], r.stderr[-500:])
    assert f"error: argument {flag}: {said}" in r.stderr
    assert "Traceback" not in r.stderr
