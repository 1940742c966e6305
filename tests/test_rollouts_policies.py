"""Rollout rules against the real API, bridge and Mosquitto with simulated devices: bad builds caught
by each gate, devices offline for a whole rollout (converge later, or fail by policy), overlapping
rollouts refused, an abort while devices are mid-download, pause and resume, tags, and the CLI."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rollout_env import Env, platform, wait_until

pytestmark = pytest.mark.integration

ARTIFACT = os.urandom(64 * 1024)


@pytest.fixture
def env(mosquitto: Any, topic_prefix: str, tmp_path: Path) -> Iterator[Env]:
    with platform(broker_url=mosquitto.url, prefix=topic_prefix, tmp=tmp_path) as e:
        yield e


def _scenario(n: int, builds: list[dict[str, Any]] | None = None, **group: Any) -> dict[str, Any]:
    return {
        "simulation": {"seed": 5},
        "devices": [
            {"count": n, "id_prefix": "sim", "type": "outdoor", "sampling_interval": "1s",
             "transmission_interval": "1s", **group}
        ],
        "firmware": builds or [],
    }  # fmt: skip


def test_each_kind_of_bad_build_is_caught_by_its_gate(mosquitto: Any, topic_prefix: str, tmp_path: Path) -> None:
    # stale after 10 s: long enough that a loaded machine does not make healthy devices look stale
    cloud = {"stale_after_s": 10.0, "offline_after_s": 20.0}
    with platform(broker_url=mosquitto.url, prefix=topic_prefix, tmp=tmp_path, cloud=cloud) as env:
        _bad_builds(env)


def _bad_builds(env: Env) -> None:
    builds = [
        {"version": "2.1.0", "behaviour": "stop_sending", "after": "8s"},
        {"version": "2.2.0", "behaviour": "out_of_range", "after": "4s", "field": "temperature"},
        {"version": "2.3.0", "behaviour": "drift", "after": "2s", "field": "temperature", "magnitude": 120.0},
        {"version": "2.4.0", "behaviour": "reject_config"},
    ]
    plan, creds = env.fleet(_scenario(16, builds))
    ids = [d.device_id for d in plan.devices]
    env.start_fleet(plan, creds, heartbeat_interval_s=1.0, ota_confirm_timeout_s=30.0)
    env.wait_online(ids)
    expected = {"2.1.0": "offline", "2.2.0": "rejected", "2.3.0": "guard:temperature", "2.4.0": "failed"}
    rollouts = {}
    for i, build in enumerate(builds):
        version = build["version"]
        env.release(version, ARTIFACT, ["outdoor"])
        body = {
            "release": version,
            "target": {"devices": ids[4 * i : 4 * i + 4]},
            "canary": "50%",
            "waves": ["100%"],
            "wave_wait_s": 120.0,  # the canary stays under watch until a gate trips
            "abort_if": ["temperature>45"],
        }
        rollouts[version] = env.ok("POST", "/v1/rollouts", json=body)["id"]
    for version, rollout_id in rollouts.items():
        out = env.wait_rollout(rollout_id, lambda r: r["status"] in ("aborted", "completed"), f"{version} caught")
        assert out["status"] == "aborted", out
        assert out["abort_reason"].startswith(f"gate '{expected[version]}' failed in the canary wave"), (
            version,
            out["abort_reason"],
        )
        assert out["per_wave"][1]["counts"] == {"pending": 2}  # the second wave never started
    reasons = {v: env.rollout(r)["abort_reason"] for v, r in rollouts.items()}
    assert "went stale or offline" in reasons["2.1.0"]
    assert "readings from canary devices were rejected" in reasons["2.2.0"]
    assert "sent temperature outside -inf..45" in reasons["2.3.0"]
    assert "rejected: firmware 2.4.0 cannot parse its config" in reasons["2.4.0"]
    # every touched device goes back: config rolled back, and the firmware before the rollout runs
    for version, rollout_id in rollouts.items():
        env.wait_rollout(
            rollout_id, lambda r: r["per_wave"][0]["counts"] == {"rolled_back": 2}, f"{version}: canary rolled back"
        )
    fleet = env.fleets[0].fleet
    wait_until(
        lambda: {st.running for st in fleet.ota.devices.values()} == {"1.0.0"},
        "every device on 1.0.0 again",
    )


def test_a_device_offline_for_the_whole_rollout_converges_later_or_fails_by_policy(env: Env) -> None:
    plan, creds = env.fleet(_scenario(6))
    ids = [d.device_id for d in plan.devices]
    away = ids[-1]
    present = dataclasses.replace(plan, devices=plan.devices[:-1])
    env.start_fleet(present, creds)
    env.wait_online(ids[:-1])

    # converge (the default): the rollout completes; the absent device applies the change on return
    r1 = env.ok(
        "POST",
        "/v1/rollouts",
        json={"settings": {"batch_max_readings": 20}, "target": {"devices": ids}, "canary": "50%", "waves": ["100%"]},
    )
    done = env.wait_rollout(r1["id"], lambda r: r["status"] == "completed", "the rollout to complete")
    assert done["counts"] == {"applied": 5, "waiting": 1}
    assert env.devices_of(r1["id"])[away]["error"] == "offline: applies the change when it is back"
    env.start_fleet(dataclasses.replace(plan, devices=plan.devices[-1:]), creds)
    env.wait_rollout(r1["id"], lambda r: r["counts"] == {"applied": 6}, "the returning device to converge")

    # fail: offline past the deadline counts as failed (here within the failure budget: 1 of 6)
    env.fleets[-1].stop()
    wait_until(lambda: env.ok("GET", f"/v1/devices/{away}")["state"] == "offline", "the device to be offline again")
    r2 = env.ok(
        "POST",
        "/v1/rollouts",
        json={
            "settings": {"batch_max_readings": 30},
            "target": {"devices": ids},
            "canary": "50%",
            "waves": ["100%"],
            "offline_policy": "fail",
            "device_deadline_s": 2.0,
            "abort_if": ["failed>50%"],
        },
    )
    done = env.wait_rollout(r2["id"], lambda r: r["status"] == "completed", "the second rollout")
    assert done["counts"] == {"applied": 5, "failed": 1}
    assert env.devices_of(r2["id"])[away]["error"] == "offline past the deadline of 2s"


def test_overlapping_rollouts_are_refused_even_when_created_at_once(env: Env) -> None:
    plan, creds = env.fleet(_scenario(4))
    ids = [d.device_id for d in plan.devices]
    env.start_fleet(plan, creds)
    body = {"settings": {"batch_max_readings": 40}, "target": {"devices": ids}, "canary": "50%", "waves": ["100%"],
            "wave_wait_s": 600}  # fmt: skip
    first = env.ok("POST", "/v1/rollouts", json=body)
    again = env.request("POST", "/v1/rollouts", json={**body, "target": {"devices": [ids[2]]}})
    assert again.status_code == 409
    assert again.json()["detail"] == (
        f"device '{ids[2]}' is already in rollout #{first['id']} (running): wait for it to finish or abort it "
        "(overlapping rollouts are refused)"
    )
    env.ok("POST", f"/v1/rollouts/{first['id']}/abort", json={"reason": "test"})
    env.wait_rollout(first["id"], lambda r: r["status"] == "aborted", "the abort")
    # now several at the same moment: exactly one wins (a database row per device decides)
    answers: list[int] = []

    def create() -> None:
        answers.append(env.request("POST", "/v1/rollouts", json=body).status_code)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [201, 409, 409, 409]


def test_an_abort_while_devices_download_stops_them_and_installs_nothing(env: Env) -> None:
    plan, creds = env.fleet(_scenario(4, [{"version": "3.0.0", "behaviour": "good"}]))
    ids = [d.device_id for d in plan.devices]
    run = env.start_fleet(plan, creds)
    env.wait_online(ids)
    env.release("3.0.0", ARTIFACT, ["outdoor"])
    created = env.ok(
        "POST",
        "/v1/rollouts",
        json={"release": "3.0.0", "target": {"devices": ids}, "canary": "100%", "waves": [], "max_bytes_per_s": 4096},
    )
    env.wait_rollout(created["id"], lambda r: r["counts"].get("downloading") == 4, "every device downloading")
    aborted = env.ok("POST", f"/v1/rollouts/{created['id']}/abort", json={"reason": "wrong build"})
    assert aborted["status"] == "aborting" and aborted["abort_reason"].endswith("wrong build")
    env.wait_rollout(
        created["id"],
        lambda r: r["counts"] == {"rolled_back": 4} and r["status"] == "aborted",
        "every device rolled back",
    )
    devices = run.fleet.ota.devices.values()
    wait_until(lambda: all(("3.0.0", "cancelled", None) in st.history for st in devices), "the downloads cancelled")
    for st in devices:
        assert st.running == "1.0.0" and st.trial is None
        assert [h[1] for h in st.history if h[0] == "3.0.0"] == ["downloading", "cancelled"]  # never installed


def _cli(env: Env, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "iotctl", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "IOTCTL_API": env.url, "IOTCTL_TOKEN": env.token, "EDU_STATE_DIR": str(env.tmp / "cli")},
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_tags_pause_resume_status_and_one_line_errors(env: Env) -> None:
    plan, creds = env.fleet(_scenario(4))
    ids = [d.device_id for d in plan.devices]
    env.start_fleet(plan, creds)
    env.wait_online(ids)
    for device_id in ids[:3]:
        assert "pilot" in _cli(env, "devices", "tag", device_id, "pilot", "room-2").stdout
    created = _cli(
        env, "rollout", "create", "--target", "tag:pilot", "--config", "sampling_interval_s=0.5",
        "--config", "calibration_offsets.temperature=-0.3", "--canary", "33%", "--waves", "100%",
        "--wave-wait", "10s", "--abort-if", "failed>50%", "--abort-if", "temperature>80", "--json",
    ).stdout  # fmt: skip
    import json

    view = json.loads(created)
    rid = str(view["id"])
    assert view["devices"] == 3 and view["gates"]["max_failed"] == 0.5 and view["gates"]["guards"][0]["max"] == 80
    env.wait_rollout(view["id"], lambda r: r["per_wave"][0]["counts"] == {"applied": 1}, "the canary applied")
    paused = _cli(env, "rollout", "pause", rid).stdout
    assert "status   paused" in paused
    assert "only a running rollout can pause" in _cli(env, "rollout", "pause", rid, check=False).stderr
    _cli(env, "rollout", "resume", rid)
    out = env.wait_rollout(view["id"], lambda r: r["status"] == "completed", "the rollout to finish", timeout=120)
    assert out["counts"] == {"applied": 3}
    status = _cli(env, "rollout", "status", rid, "--devices").stdout
    assert "status   completed" in status and ids[3] not in status and "applied" in status
    kinds = _cli(env, "rollout", "events", rid).stdout
    assert "paused" in kinds and "resumed" in kinds and "wave_started" in kinds and "completed" in kinds
    assert f"#{rid}" in _cli(env, "rollout", "list").stdout
    history = _cli(env, "devices", "history", ids[0]).stdout
    assert f"by rollout:{rid}" in history
    # bad input: one line, no traceback
    for args, message in (
        (["rollout", "create", "--target", "tag:pilot"], "give --config key=value"),
        (["rollout", "create", "--target", "shelf:3", "--config", "a=1"], "bad --target 'shelf:3'"),
        (["rollout", "create", "--target", "tag:pilot", "--config", "batch_max_readings=0"], "must be >= 1"),
        (
            ["rollout", "create", "--target", "tag:nobody", "--config", "batch_max_readings=5"],
            "the target tag:nobody matches no device",
        ),
        (["rollout", "create", "--target", "tag:pilot", "--config", "a=1", "--waves", "50%"], "must reach 100%"),
        (["rollout", "create", "--target", "tag:pilot", "--config", "a=1", "--abort-if", "lots"], "bad --abort-if"),
        (["rollout", "status", "999"], "no rollout #999"),
        (["rollout", "create", "--target", "group:class-3a", "--config", "batch_max_readings=5"], "not available yet"),
    ):
        proc = _cli(env, *args, check=False)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
