"""The students' scenario, firmware_sim/scenarios/bad_update.toml, as docs/simulation.md tells it:
the fleet runs (``iotctl sim run``, enrolling through the API), releases are uploaded and rolled out
with the CLI; the good build goes through every wave, the bad one is caught in its canary wave."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rollout_env import platform, wait_until

from firmware_sim.scenario import load_scenario

pytestmark = pytest.mark.integration

SCENARIO = Path(__file__).resolve().parents[1] / "firmware_sim" / "scenarios" / "bad_update.toml"


def test_the_bad_update_scenario_shows_the_catch(mosquitto: Any, topic_prefix: str, tmp_path: Path) -> None:
    sc = load_scenario(SCENARIO)
    assert {b.version: b.behaviour for b in sc.firmware} == {"1.1.0": "good", "2.0.0": "crash_after_boot"}
    # the scenario sends every 5 s and heartbeats rarely: liveness thresholds nearer production's (90 s)
    cloud = {"stale_after_s": 30.0, "offline_after_s": 60.0}
    with platform(broker_url=mosquitto.url, prefix=topic_prefix, tmp=tmp_path, cloud=cloud) as env:
        cli_env = {**os.environ, "IOTCTL_API": env.url, "IOTCTL_TOKEN": env.token}
        cli_env["EDU_STATE_DIR"] = str(tmp_path / "cli")

        def cli(*args: str) -> str:
            proc = subprocess.run(
                [sys.executable, "-m", "iotctl", *args], capture_output=True, text=True, timeout=120, env=cli_env
            )
            assert proc.returncode == 0, (args, proc.stderr)
            return proc.stdout

        sim_log = open(tmp_path / "sim.log", "wb")  # noqa: SIM115 - closed in the finally below
        sim = subprocess.Popen(
            [sys.executable, "-m", "iotctl", "sim", "run", "--scenario", str(SCENARIO), "--api", env.url,
             "--admin-token", env.token, "--broker", env.broker_url, "--prefix", topic_prefix, "--json"],
            stdout=sim_log, stderr=sim_log, env=cli_env,
        )  # fmt: skip
        try:
            wait_until(lambda: len(env.ok("GET", "/v1/devices")) == 20, "the scenario's devices enrolled", 120)
            ids = sorted(d["id"] for d in env.ok("GET", "/v1/devices"))  # the fleet's own names
            env.wait_online(ids, timeout=120)
            build = tmp_path / "build.bin"
            build.write_bytes(os.urandom(200_000))
            rollout = ["--target", "type:outdoor", "--canary", "10%", "--waves", "50%,100%", "--wave-wait", "10s"]

            cli("release", "upload", str(build), "--version", "1.1.0", "--device-type", "outdoor")
            assert "rollout #1" in cli("rollout", "create", "--release", "1.1.0", *rollout)
            good = env.wait_rollout(1, lambda r: r["status"] in ("completed", "aborted"), "the good build", 240)
            assert good["status"] == "completed" and good["counts"] == {"confirmed": 20}, good["abort_reason"]
            assert "status   completed" in cli("rollout", "status", "1")

            cli("release", "upload", str(build), "--version", "2.0.0", "--device-type", "outdoor")
            cli("rollout", "create", "--release", "2.0.0", *rollout)
            bad = env.wait_rollout(2, lambda r: r["status"] == "aborted", "the bad build caught", 240)
            assert bad["current_wave"] == 0
            assert "gate 'failed' failed in the canary wave" in bad["abort_reason"]
            assert "firmware 2.0.0 rolled back by the device: crash loop" in bad["abort_reason"]
            env.wait_rollout(2, lambda r: r["per_wave"][0]["counts"] == {"rolled_back": 2}, "the canary back", 120)
            status = cli("rollout", "status", "2", "--devices")
            assert "status   aborted" in status and "reason   gate 'failed'" in status
            assert status.count("rolled_back") >= 2 and status.count("pending") >= 18
            canary = [d for d in env.ok("GET", "/v1/rollouts/2/devices") if d["wave"] == 0]
            history = cli("devices", "history", canary[0]["device_id"])
            assert "2.0.0      rolled_back" in history and "crash loop" in history
            assert "1.1.0      confirmed" in history  # the version it ran before, running again
        finally:
            sim.send_signal(signal.SIGINT)
            try:
                sim.wait(60)
            except subprocess.TimeoutExpired:
                sim.kill()
            sim_log.close()
