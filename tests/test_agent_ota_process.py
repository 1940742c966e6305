"""A/B firmware updates of the real agent as real processes: the agent runs from its slot through the
boot step (``boot.py``), restarted by a supervisor loop doing what systemd's ``Restart=always`` does.
Rollouts go through the real API's engine, the bridge and Mosquitto. The agent swaps to a good
release and confirms it; a release whose health check fails is switched back by the agent itself; a
release that crash-loops is switched back by the boot step; a downgrade below the minimum version
is refused. Each reason reaches the cloud."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rollout_env import Env, platform

from edge_agent.identity import enroll
from edge_agent.ota_boot import Layout
from edge_agent.ota_build import build_artifact, init_layout
from iot_testing import wait_for

pytestmark = pytest.mark.integration

DEVICE = "pi-ab"


class Supervisor:
    """Runs ``boot.py`` again whenever it exits, like systemd with ``Restart=always``."""

    def __init__(self, argv: list[str], cwd: Path, log: Path) -> None:
        self.argv, self.cwd, self.log = argv, cwd, log
        self.exits: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        with open(self.log, "ab") as out:
            while not self._stop.is_set():
                self.proc = subprocess.Popen(self.argv, cwd=self.cwd, stdout=out, stderr=out, env=env)
                code = self.proc.wait()
                self.exits.append(code)
                self._stop.wait(0.3)  # RestartSec

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._thread.join(20)


@pytest.fixture
def env(mosquitto: Any, topic_prefix: str, tmp_path: Path) -> Iterator[Env]:
    with platform(broker_url=mosquitto.url, prefix=topic_prefix, tmp=tmp_path) as e:
        yield e


def _break_telemetry(tree: Path) -> None:
    """A build that runs but never gets a batch stored: it publishes telemetry on a wrong topic."""
    topics = tree / "iot_protocol" / "topics.py"
    text = topics.read_text()
    assert 'TELEMETRY = "telemetry"' in text
    topics.write_text(text.replace('TELEMETRY = "telemetry"', 'TELEMETRY = "telemetry-v2"'))


def _crash_at_start(tree: Path) -> None:
    """A build that dies as soon as the agent starts (exit 70), every time."""
    agent = tree / "edge_agent" / "agent.py"
    agent.write_text(agent.read_text().replace("    import argparse\n", "    raise SystemExit(70)\n", 1))


def test_the_real_agent_swaps_slots_confirms_and_rolls_back_by_itself(env: Env, tmp_path: Path) -> None:
    token = env.ok("POST", "/v1/devices/register", json={"id": DEVICE, "device_type": "rpi"})["enrollment_token"]
    enroll(env.url, token, tmp_path / "identity")
    ota_dir = tmp_path / "ota"
    init_layout(ota_dir, version="0.1.0")
    layout = Layout(ota_dir)
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
identity_dir = "{tmp_path / "identity"}"
buffer_path = "{tmp_path / "buffer.db"}"
sampling_interval_s = 0.2
transmission_interval_s = 0.2
heartbeat_interval_s = 1.0
backoff_initial_s = 0.2
ota_dir = "{ota_dir}"
device_type = "rpi"
ota_confirm_timeout_s = 8.0
ota_max_boots = 2
ota_retry_delay_s = 0.2
[[sensors]]
type = "simulated"
sensor_type = "environment"
"""
    )
    supervisor = Supervisor(
        [sys.executable, str(ota_dir / "boot.py"), "--ota-dir", str(ota_dir), "--config", str(config)],
        tmp_path,
        tmp_path / "agent.log",
    )

    def device() -> dict[str, Any]:
        return env.ok("GET", f"/v1/devices/{DEVICE}")  # type: ignore[no-any-return]

    def steps() -> list[tuple[str, str, str | None]]:
        events = env.ok("GET", f"/v1/devices/{DEVICE}/history")["firmware_events"]
        return [(e["version"], e["state"], e["error"]) for e in events]

    def release(version: str, patch: Callable[[Path], None] | None = None, **extra: Any) -> None:
        build = build_artifact(tmp_path / f"agent-{version}.tar.gz", version, patch=patch, workdir=tmp_path)
        env.release(version, build.read_bytes(), ["rpi"], **extra)

    def rollout(version: str) -> dict[str, Any]:
        body = {"release": version, "target": {"devices": [DEVICE]}, "canary": "100%", "waves": [], "wave_wait_s": 0}
        created = env.ok("POST", "/v1/rollouts", json=body)
        return env.wait_rollout(
            created["id"], lambda r: r["status"] in ("completed", "aborted"), f"the rollout of {version}", timeout=150
        )

    try:
        wait_for(lambda: device()["firmware"] == "edu-agent/0.1.0", "the agent running 0.1.0 from slot a", 60)

        # 1. a good release: downloaded, verified, installed in slot b, switched, restarted, confirmed
        release("0.2.0", min_version="0.2")
        done = rollout("0.2.0")
        assert done["status"] == "completed" and done["counts"] == {"confirmed": 1}, done
        assert device()["firmware"] == "edu-agent/0.2.0"  # the process now runs slot b's code
        assert layout.current() == "b" and layout.slot_version("b") == "0.2.0"
        state = layout.read_state()
        assert (state["phase"], state["floor"]) == ("confirmed", "0.2")
        assert 75 in supervisor.exits  # the agent restarted itself into the new slot

        # 2. a release whose health check fails (no batch ever stored): the agent switches back itself
        release("0.3.0", _break_telemetry)
        out = rollout("0.3.0")
        assert out["status"] == "aborted" and "firmware 0.3.0 rolled back by the device" in out["abort_reason"]
        assert "health check failed: no batch receipted by the cloud within 8s" in out["abort_reason"]
        wait_for(lambda: env.rollout(out["id"])["counts"] == {"rolled_back": 1}, "the rollout's rollback", 60)
        assert layout.current() == "b" and device()["firmware"] == "edu-agent/0.2.0"

        # 3. a release that crashes at every start: the boot step switches back after 2 boots
        release("0.4.0", _crash_at_start)
        out = rollout("0.4.0")
        assert out["status"] == "aborted" and "crash loop: 2 boots without confirmation" in out["abort_reason"], out
        assert supervisor.exits.count(70) == 2
        wait_for(lambda: env.rollout(out["id"])["counts"] == {"rolled_back": 1}, "the rollout's rollback", 60)
        assert layout.current() == "b" and device()["firmware"] == "edu-agent/0.2.0"

        # 4. a validly signed older release, below the floor 0.2.0 set: refused, nothing downloaded
        release("0.1.5")
        out = rollout("0.1.5")
        assert out["status"] == "aborted" and "downgrade below the minimum version 0.2" in out["abort_reason"], out
        assert layout.slot_version("a") == "0.4.0" and layout.current() == "b"
        assert [s[:2] for s in steps() if s[0] == "0.1.5"] == [("0.1.5", "failed")]
    except BaseException:
        print((tmp_path / "agent.log").read_text()[-6000:])
        raise
    finally:
        supervisor.stop()
