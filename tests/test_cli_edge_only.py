"""`iotctl agent ...` works with only the `edge` extra: no cloud-side package is imported.

A subprocess refuses to import any package that the `edge` extra does not install, then runs the
agent commands through the real CLI root. A cloud import sneaking into the agent path fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Installed by the cloud/dev extras only (see pyproject.toml).
CLOUD_ONLY = [
    "sqlmodel", "sqlalchemy", "fastapi", "starlette", "uvicorn", "redis", "psycopg", "numpy", "sklearn",
    "httpx", "prometheus_client", "amqtt", "yaml", "nacl", "pybase64", "hiredis", "msgspec",
    "cloud_core", "broker_bridge", "firmware_sim",
]  # fmt: skip

RUNNER = """
import sys
BLOCKED = set(sys.argv[1].split(","))

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is not part of the edge install", name=name)
        return None

sys.meta_path.insert(0, Block())
sys.argv = ["iotctl", *sys.argv[2:]]
from iotctl.main import main
main()
"""


def run_edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUNNER, ",".join(CLOUD_ONLY), *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["agent", "--help"], "enroll"),
        (["agent", "enroll", "--api", "http://127.0.0.1:9", "--token", "t", "--dir", "{tmp}/id"], "cannot reach"),
        (["agent", "status", "--config", "{example}"], "no buffer"),
        (["agent", "run", "--config", "{example}"], "identity"),
    ],
)
def test_agent_commands_need_only_the_edge_extra(tmp_path: Path, args: list[str], expected: str) -> None:
    example = Path(__file__).resolve().parents[1] / "edge_agent" / "agent.example.toml"
    config = tmp_path / "agent.toml"
    # the example points at /var/lib; keep the test inside its temp dir
    config.write_text(example.read_text().replace("/var/lib/edu-agent", str(tmp_path)))
    out = run_edge(*(a.format(tmp=tmp_path, example=config) for a in args))
    combined = out.stdout + out.stderr
    assert "is not part of the edge install" not in combined, combined
    assert "Traceback" not in combined, combined
    assert expected in combined, combined


def test_the_blocker_really_blocks() -> None:
    """The guard itself: a cloud command does fail under it, with the one-line install hint."""
    out = run_edge("devices", "list")
    assert out.returncode != 0
    assert "pip install 'edu-platform[all]'" in out.stderr
