"""API replicas as real processes (``iotctl api``) on one PostgreSQL: exactly one runs the rollout
engine (a database lease); when it is killed (-9) mid-rollout, the other takes the lease over when it
expires and finishes the rollout from the state in the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from rollout_env import platform

from iot_testing import free_port, wait_for

pytestmark = pytest.mark.integration


def _active(url: str) -> float | None:
    try:
        text = httpx.get(url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("edu_rollout_engine_active "):
            return float(line.split()[1])
    return None


def test_one_engine_across_replicas_and_a_takeover_after_a_kill(
    mosquitto: Any, topic_prefix: str, tmp_path: Path, pg_url: str
) -> None:
    # the in-process API serves the test and the devices but runs no engine; two replicas do
    with platform(
        broker_url=mosquitto.url, prefix=topic_prefix, tmp=tmp_path, db_url=pg_url, rollout={"engine": False}
    ) as env:
        s = env.settings
        base = {
            **os.environ,
            "EDU_STATE_DIR": str(s.state_dir),
            "EDU_DB_URL": pg_url,
            "EDU_TSDB_URL": s.tsdb_url,
            "EDU_MQTT_URL": s.mqtt_url,
            "EDU_MQTT_USERNAME": s.mqtt_username,
            "EDU_TOPIC_PREFIX": topic_prefix,
            "EDU_STALE_AFTER_S": str(s.stale_after_s),
            "EDU_OFFLINE_AFTER_S": str(s.offline_after_s),
            "EDU_ROLLOUT_TICK_S": "0.25",
            "EDU_ROLLOUT_LEASE_TTL_S": "3",
            "EDU_ROLLOUT_PUBLIC_API_URL": env.url,
            "EDU_LOG_LEVEL": "WARNING",
        }
        replicas: dict[str, subprocess.Popen[bytes]] = {}
        log = open(tmp_path / "replicas.log", "wb")  # noqa: SIM115 - closed below
        try:
            for _ in range(2):
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                replicas[url] = subprocess.Popen(
                    [sys.executable, "-m", "iotctl", "api", "--port", str(port), "--no-events"],
                    env=base,
                    stdout=log,
                    stderr=log,
                )
            wait_for(
                lambda: sorted(_active(u) or 0.0 for u in replicas) == [0.0, 1.0],
                "exactly one replica running the engine",
                60,
            )
            plan, creds = env.fleet(
                {
                    "simulation": {"seed": 9},
                    "devices": [
                        {"count": 8, "id_prefix": "rep", "sampling_interval": "1s", "transmission_interval": "1s"}
                    ],
                }
            )
            env.start_fleet(plan, creds)
            ids = [d.device_id for d in plan.devices]
            env.wait_online(ids)
            body = {
                "settings": {"batch_max_readings": 25},
                "target": {"devices": ids},
                "canary": "25%",
                "waves": ["50%", "100%"],
                "wave_wait_s": 5.0,
            }
            created = env.ok("POST", "/v1/rollouts", json=body)
            env.wait_rollout(
                created["id"], lambda r: r["per_wave"][0]["counts"] == {"applied": 2}, "the canary applied"
            )
            active = next(u for u in replicas if _active(u) == 1.0)
            standby = next(u for u in replicas if u != active)
            replicas[active].send_signal(signal.SIGKILL)  # no clean shutdown: its lease must expire
            replicas[active].wait(30)
            assert env.rollout(created["id"])["status"] == "running"
            wait_for(lambda: _active(standby) == 1.0, "the standby to take the lease over", 30)
            done = env.wait_rollout(created["id"], lambda r: r["status"] == "completed", "the rollout finished")
            assert done["counts"] == {"applied": 8}
            events = env.ok("GET", f"/v1/rollouts/{created['id']}/events")
            assert [e["detail"]["wave"] for e in events if e["kind"] == "wave_started"] == [1, 2]
            # each device was sent its update once, whichever replica held the lease at the time
            assert sorted(e["device_id"] for e in events if e["kind"] == "device_updated") == sorted(ids)
        except BaseException:
            log.flush()
            print((tmp_path / "replicas.log").read_text()[-5000:])
            raise
        finally:
            for proc in replicas.values():
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            log.close()
