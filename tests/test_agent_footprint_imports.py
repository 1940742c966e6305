"""The agent process stays small: it must not import pydantic (about 11 MB of RSS on its own)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("pydantic", "pydantic_core", "pydantic_settings", "typer", "sqlmodel", "sqlalchemy")


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return set(out.stdout.split())


def test_the_agent_and_the_contract_do_not_import_pydantic() -> None:
    code = (
        "import iot_protocol, edge_agent.agent, edge_agent.config, edge_agent.identity, edge_agent.buffer\n"
        "from edge_agent.sensors import simulated, cpu_temp, command"
    )
    assert _loaded_after(code) == set()


def test_loading_and_running_the_pipeline_does_not_import_pydantic() -> None:
    # what run_agent does before its network loop: settings, sensors, buffer, one sample and one batch
    code = """
import pathlib, tempfile
from edge_agent.agent import Pipeline, build_sensors, open_buffer
from edge_agent.config import load_settings
from iot_protocol import generate_private_key, parse_settings
d = pathlib.Path(tempfile.mkdtemp())
(d / "a.toml").write_text('buffer_path = "b.db"\\n[[sensors]]\\ntype = "simulated"\\n')
s = load_settings(d / "a.toml")
p = Pipeline(device_id="dev-1", key=generate_private_key(), buffer=open_buffer(s), sensors=build_sensors(s))
p.sample()
assert p.plan(0.0)
parse_settings({"sampling_interval_s": 2})
"""
    assert _loaded_after(code) == set()
