"""Rollouts end to end against the real API (with its engine), the real bridge, a real Mosquitto and
PostgreSQL, with simulated devices running the real agent pipeline and OTA over real HTTP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from rollout_env import platform, wait_until
from sqlmodel import Session, col, select

from cloud_core.core.db import make_engine
from cloud_core.models import DeviceConfig

pytestmark = pytest.mark.integration

N = 100
ARTIFACT = os.urandom(96 * 1024)


def _scenario(n: int, **group: Any) -> dict[str, Any]:
    return {
        "simulation": {"seed": 17},
        "devices": [
            {
                "count": n,
                "id_prefix": "fw",
                "type": "outdoor",
                "sampling_interval": "2s",
                "transmission_interval": "2s",
                **group,
            }
        ],
        "firmware": [{"version": "2.0.0", "behaviour": "crash_after_boot"}],
    }


def test_100_devices_good_config_through_every_wave_then_bad_firmware_aborts_in_the_canary(
    mosquitto: Any, topic_prefix: str, tmp_path: Path, pg_url: str
) -> None:
    # Liveness thresholds a loaded CI machine cannot trip by accident (heartbeats every 3 s)
    cloud = {"stale_after_s": 30.0, "offline_after_s": 60.0}
    with platform(broker_url=mosquitto.url, prefix=topic_prefix, tmp=tmp_path, db_url=pg_url, cloud=cloud) as env:
        plan, creds = env.fleet(_scenario(N))
        ids = [d.device_id for d in plan.devices]
        env.start_fleet(plan, creds, heartbeat_interval_s=3.0)
        env.wait_online(ids)

        # ---- a good config, canary 5% then 25%, 50%, 100%
        created = env.ok(
            "POST",
            "/v1/rollouts",
            json={
                "settings": {"calibration_offsets": {"temperature": 0.5}, "batch_max_readings": 50},
                "target": {"types": ["outdoor"]},
                "canary": "5%",
                "waves": ["25%", "50%", "100%"],
                "wave_wait_s": 1.0,
            },
        )
        assert created["devices"] == N
        assert [w["devices"] for w in created["per_wave"]] == [5, 20, 25, 50]
        done = env.wait_rollout(created["id"], lambda r: r["status"] in ("completed", "aborted"), "the config rollout")
        assert done["status"] == "completed", done["abort_reason"]
        assert done["counts"] == {"applied": N}
        events = env.ok("GET", f"/v1/rollouts/{created['id']}/events")
        assert [e["detail"]["wave"] for e in events if e["kind"] == "wave_started"] == [1, 2, 3]
        # every device applied the change (its report says so, and the desired config carries it)
        for d in env.ok("GET", "/v1/devices"):
            assert d["reported_config_version"] == d["desired_config_version"] >= 1, d

        # ---- a firmware build that crashes at boot: caught in the canary, every canary device back
        env.release("2.0.0", ARTIFACT, ["outdoor"])
        before = {d["id"]: d["desired_config_version"] for d in env.ok("GET", "/v1/devices")}
        fw = env.ok(
            "POST",
            "/v1/rollouts",
            json={"release": "2.0.0", "target": {"types": ["outdoor"]}, "canary": "5%", "wave_wait_s": 5.0},
        )
        out = env.wait_rollout(fw["id"], lambda r: r["status"] == "aborted", "the firmware rollout to abort")
        assert out["current_wave"] == 0
        assert out["abort_reason"].startswith("gate 'failed' failed in the canary wave"), out["abort_reason"]
        assert "crash loop" in out["abort_reason"]
        devices = env.ok("GET", f"/v1/rollouts/{fw['id']}/devices")
        canary = {d["device_id"] for d in devices if d["wave"] == 0}
        assert len(canary) == 5
        env.wait_rollout(
            fw["id"], lambda r: r["per_wave"][0]["counts"] == {"rolled_back": 5}, "every canary device rolled back"
        )
        states = {d["device_id"]: d["state"] for d in env.ok("GET", f"/v1/rollouts/{fw['id']}/devices")}
        assert {states[d] for d in canary} == {"rolled_back"}
        assert {s for d, s in states.items() if d not in canary} == {"pending"}
        # no device outside the canary touched: no new desired config, nothing downloaded
        after = {d["id"]: d for d in env.ok("GET", "/v1/devices")}
        for device_id in set(ids) - canary:
            assert after[device_id]["desired_config_version"] == before[device_id], device_id
        engine = make_engine(pg_url)
        with Session(engine) as s:
            rows = s.exec(select(DeviceConfig).where(col(DeviceConfig.created_by).like(f"rollout:{fw['id']}%"))).all()
        engine.dispose()
        assert {r.device_id for r in rows} == canary
        # every canary device runs its previous version again and says so
        for device_id in canary:
            history = env.ok("GET", f"/v1/devices/{device_id}/history")
            steps = [(e["version"], e["state"]) for e in history["firmware_events"]]
            assert ("2.0.0", "rolled_back") in steps, steps
            assert steps[-1] == ("1.0.0", "confirmed"), steps
            wait_until(
                lambda d=device_id: env.ok("GET", f"/v1/devices/{d}")["firmware"] == "edu-agent/1.0.0",
                "its heartbeat naming 1.0.0 again",
            )
            kinds = [e["kind"] for e in history["rollout_events"]]
            assert "rollback_sent" in kinds
        metrics = httpx.get(env.url + "/metrics").text
        assert 'edu_rollout_aborts_total{gate="failed"} 1.0' in metrics
        assert 'edu_rollouts{status="completed"} 1.0' in metrics and 'edu_rollouts{status="aborted"} 1.0' in metrics
        assert "edu_rollout_engine_active 1.0" in metrics
        assert 'edu_rollout_device_updates_total{purpose="rollback"} 5.0' in metrics
