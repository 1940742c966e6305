"""The console's server side through the real API (uvicorn, Mosquitto with dynamic security): the page
and its assets (same origin, a strict CSP, nothing outside static/), signing a browser in with an API
key (HttpOnly cookie, CSRF on changes), the fleet overview (liveness, config and firmware desired vs
reported, readings/s, rejections, ledger verdict; only what you may see; classes for teachers), live
readings as server-sent events, a device's ledger and dead letters over REST, the simulator's states
without a simulator, and the scoring of a run's ground truth against the detector's episodes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlmodel import Session

from cloud_core.console import GroundTruth, score_run
from cloud_core.core.db import make_engine
from cloud_core.models import BatchLedger, Device, RejectedMessage
from cloud_core.testing import RunningApi, api_settings, running_api
from cloud_core.tsdb import Point, open_tsdb

pytestmark = pytest.mark.integration

PASSWORD = "console password 1"


@pytest.fixture
def api(mosquitto_dynsec: Any, topic_prefix: str, tmp_path: Path) -> Iterator[RunningApi]:
    settings = api_settings(mosquitto_dynsec, topic_prefix, tmp_path / "state")
    with running_api(settings) as running:
        yield running


def _register(api: RunningApi, device_id: str, token: str | None = None) -> None:
    r = api.request("POST", "/v1/devices/register", token=token or api.admin_token, json={"id": device_id})
    assert r.status_code == 201, r.text


def _sse_events(text: str) -> list[tuple[str, Any]]:
    out = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in lines:
            out.append((lines["event"], orjson.loads(lines["data"])))
    return out


def test_the_page_and_its_assets_are_served_same_origin_with_a_strict_policy(api: RunningApi) -> None:
    r = api.request("GET", "/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/console/"
    page = api.request("GET", "/console/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
    assert "http" not in page.text.replace("http-equiv", ""), "the page names no other origin"
    js = api.request("GET", "/console/static/main.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert api.request("GET", "/console/static/uPlot.iife.min.js").status_code == 200
    for bad in ("/console/static/%2e%2e%2Froutes.py", "/console/static/..%2Fsettings.py", "/console/static/.hidden"):
        assert api.request("GET", bad).status_code in (404, 422), bad
    assert api.request("GET", "/console/static/nope.js").status_code == 404


def test_an_api_key_signs_a_browser_in_with_cookies_and_changes_need_the_csrf_header(api: RunningApi) -> None:
    _register(api, "cookie-dev")
    browser = httpx.Client(base_url=api.url)
    bad = browser.post("/v1/console/session", json={"token": "edu_not-a-real-key-at-all"})
    assert bad.status_code == 401 and "detail" in bad.json()
    jwt = browser.post("/v1/console/session", json={"token": "a.b.c-not-a-key"})
    assert jwt.status_code == 401 and "password" in jwt.json()["detail"]
    ok = browser.post("/v1/console/session", json={"token": api.admin_token})
    assert ok.status_code == 200 and ok.json()["role"] == "admin"
    set_cookie = ok.headers.get_list("set-cookie")
    access = next(c for c in set_cookie if c.startswith("edu_access="))
    assert "HttpOnly" in access and "SameSite=strict" in access.replace("Strict", "strict")
    assert browser.get("/v1/auth/me").json()["user"]["username"] == "admin"
    body = {"settings": {"sampling_interval_s": 3}}
    refused = browser.put("/v1/devices/cookie-dev/config", json=body)
    assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["detail"]
    csrf = browser.cookies["edu_csrf"]
    accepted = browser.put("/v1/devices/cookie-dev/config", json=body, headers={"X-CSRF-Token": csrf})
    assert accepted.status_code == 200 and accepted.json()["desired_version"] == 1
    browser.close()


def test_the_fleet_overview_shows_each_devices_state_books_and_rates(api: RunningApi) -> None:
    for d in ("fl-ok", "fl-lossy", "fl-new"):
        _register(api, d)
    assert (
        api.admin("PUT", "/v1/devices/fl-ok/config", json={"settings": {"sampling_interval_s": 2}}).status_code == 200
    )
    now = datetime.now(UTC)
    engine = make_engine(api.settings.db_url)
    with Session(engine) as session:
        for device_id, produced in (("fl-ok", 30), ("fl-lossy", 40)):
            row = session.get(Device, device_id)
            assert row is not None
            row.status, row.last_seen, row.presence, row.presence_at = "active", now, "online", now
            row.health = {"produced": produced, "buffer_depth": 0, "dropped": 0, "last_seq": 3, "at": 1}
            row.last_health_at, row.firmware, row.reported_config_version = now, "1.0.0", 0
            session.add(row)
            for seq in (1, 2, 3):
                session.add(BatchLedger(device_id=device_id, seq=seq, batch_id=f"{device_id}-{seq}",
                                        payload_sha256="0" * 64, readings=10))  # fmt: skip
        session.add(RejectedMessage(device_id="fl-lossy", topic="t", reason="bad_signature", payload_sha256="0" * 64))
        session.add(RejectedMessage(device_id="fl-lossy", topic="t", reason="replayed_seq", payload_sha256="0" * 64,
                                    received_at=now - timedelta(days=2)))  # fmt: skip
        session.commit()
    engine.dispose()
    store = open_tsdb(api.settings.tsdb_url)
    t = int(time.time() * 1000)
    store.write([Point("fl-ok", "outdoor", "yard", t - 1000 * i, {"temperature": 20.0}) for i in range(30)])
    store.close()

    view = api.admin("GET", "/v1/console/fleet").json()
    rows = {d["id"]: d for d in view["devices"]}
    assert rows["fl-ok"]["state"] == "online" and rows["fl-new"]["state"] == "offline"
    assert rows["fl-ok"]["verdict"] == "balanced" and rows["fl-ok"]["firmware_reported"] == "1.0.0"
    assert rows["fl-ok"]["config_desired"] == 1 and rows["fl-ok"]["config_reported"] == 0
    assert rows["fl-ok"]["readings_per_s"] == pytest.approx(30 / view["rate_window_s"])
    assert rows["fl-lossy"]["verdict"] == "in-flight" and rows["fl-lossy"]["in_flight"] == 10
    assert rows["fl-lossy"]["rejections"] == 1, "only the rejections window counts"
    assert rows["fl-new"]["verdict"] == "no-health" and rows["fl-new"]["readings_per_s"] == 0

    ledger = api.admin("GET", "/v1/devices/fl-lossy/ledger").json()
    assert ledger["verdict"] == "in-flight" and ledger["missing"] == [] and ledger["stored"] == 30
    letters = api.admin("GET", "/v1/devices/fl-lossy/dead-letters").json()
    assert [x["reason"] for x in letters] == ["bad_signature", "replayed_seq"] and "payload" not in letters[0]


def test_students_see_only_their_devices_and_teachers_their_classes(api: RunningApi) -> None:
    api.add_user("tess", PASSWORD, is_teacher=True)
    teacher = api.login("tess", PASSWORD)
    class_id = api.request("POST", "/v1/classes", token=teacher, json={"name": "7B"}).json()["id"]
    tokens = {}
    for name in ("ana", "ben"):
        r = api.request("POST", f"/v1/classes/{class_id}/members", token=teacher,
                        json={"username": name, "password": PASSWORD})  # fmt: skip
        assert r.status_code == 201, r.text
        tokens[name] = api.login(name, PASSWORD)
        _register(api, f"{name}-sensor", tokens[name])
    ana = api.request("GET", "/v1/console/fleet", token=tokens["ana"]).json()
    assert [d["id"] for d in ana["devices"]] == ["ana-sensor"] and ana["classes"] == []
    assert ana["devices"][0]["access"] == "write" and ana["devices"][0]["owner"] == "ana"
    assert api.request("GET", "/v1/devices/ben-sensor/ledger", token=tokens["ana"]).status_code == 404
    live = api.request("GET", "/v1/console/devices/ben-sensor/live", token=tokens["ana"], params={"duration_s": 0})
    assert live.status_code == 404
    tess = api.request("GET", "/v1/console/fleet", token=teacher).json()
    assert {d["id"] for d in tess["devices"]} == {"ana-sensor", "ben-sensor"}
    assert tess["classes"] == [{"id": class_id, "name": "7B"}]
    assert {d["class_id"] for d in tess["devices"]} == {class_id}


def test_live_readings_arrive_as_server_sent_events_and_resume_after_the_last(api: RunningApi) -> None:
    _register(api, "live-dev")
    store = open_tsdb(api.settings.tsdb_url)
    base = int(time.time() * 1000) - 3_600_000  # an hour ago: the stream follows the data's own time
    store.write([Point("live-dev", "outdoor", "yard", base + 1000 * i, {"temperature": float(i)}) for i in range(5)])
    r = api.admin("GET", "/v1/console/devices/live-dev/live", params={"duration_s": 0})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse_events(r.text)
    assert [e for e, _ in events] == ["readings"]
    rows = events[0][1]["rows"]
    assert [x["ts"] for x in rows] == [base + 1000 * i for i in range(5)]
    assert rows[-1]["values"] == {"temperature": 4.0}
    store.write([Point("live-dev", "outdoor", "yard", base + 9000, {"temperature": 9.0})])
    store.close()
    again = _sse_events(api.admin("GET", "/v1/console/devices/live-dev/live",
                                  params={"duration_s": 0, "after_ms": base + 4000}).text)  # fmt: skip
    assert [x["ts"] for x in again[0][1]["rows"]] == [base + 9000]
    quiet = _sse_events(api.admin("GET", "/v1/console/devices/live-dev/live",
                                  params={"duration_s": 0, "after_ms": base + 9000}).text)  # fmt: skip
    assert quiet == []


def test_without_a_simulator_the_simulator_says_so(api: RunningApi) -> None:
    assert api.admin("GET", "/v1/console/scenarios").json() == {"available": False, "scenarios": []}
    assert api.admin("GET", "/v1/console/simulations").json() == []
    r = api.admin("POST", "/v1/console/simulations", json={"scenario": "first_alert"})
    assert r.status_code == 409 and "iotctl up" in r.json()["detail"]
    assert api.admin("GET", "/v1/console/simulations/1").status_code == 404


def test_a_runs_score_puts_ground_truth_next_to_the_episodes() -> None:
    labels = [
        GroundTruth("d1", 1_000_000, 1_060_000, "spike", "sensor", "temperature"),
        GroundTruth("d2", 5_000_000, 8_000_000, "stuck", "sensor", "humidity"),
        GroundTruth("d1", 9_000_000, 9_500_000, "replay", "attack"),
    ]
    episodes = [
        {"id": 1, "device_id": "d1", "start_ms": 1_030_000, "end_ms": 1_030_000},  # the spike
        {"id": 2, "device_id": "d2", "start_ms": 200_000, "end_ms": 250_000},  # a false alarm
        {"id": 3, "device_id": "d1", "start_ms": 5_000_000, "end_ms": 6_000_000},  # right time, wrong device
    ]
    score = score_run(labels, episodes)
    assert score.episode_truth == {1: True, 2: False, 3: False}
    assert (score.true_episodes, score.precision) == (1, pytest.approx(1 / 3))
    assert (score.found, score.labels, score.recall) == (1, 2, 0.5), "attacks are the bridge's, not counted"
    assert [m.found_by for m in score.matches] == [(1,), (), ()]
    assert score_run([], []).precision is None and score_run([], []).recall is None
