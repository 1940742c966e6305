"""A class end to end on real servers (Mosquitto with dynamic security, the API, the bridge, SQLite
stores): a teacher creates a class and two students; each student registers and enrolls a device and
pushes config; neither can see or touch the other's device by any route; the teacher sees both; a
flooding student is refused ``quota_exceeded`` (acknowledged, not receipted) while every reading of the
other arrives; students' own broker accounts can read only their devices' topics."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlmodel import Session, col, func, select

from broker_bridge import Bridge, BridgeSettings
from broker_bridge.testing import make_batch, sealed
from cloud_core.core.db import make_engine
from cloud_core.models import RejectedMessage
from cloud_core.testing import RunningApi, api_settings, running_api
from cloud_core.tsdb import open_tsdb
from iot_protocol import Topics, decode_receipt, generate_private_key, public_key_b64
from iot_testing import wait_for

pytestmark = pytest.mark.integration

PASSWORD = "classroom password"


@dataclass
class Client:
    """A paho MQTT 5 client recording messages and SUBACK reason codes."""

    c: mqtt.Client
    messages: list[mqtt.MQTTMessage] = field(default_factory=list)
    subacks: list[list[int]] = field(default_factory=list)
    acked: int = 0

    def subscribe(self, topic: str) -> int:
        n = len(self.subacks)
        self.c.subscribe(topic, qos=1)
        wait_for(lambda: len(self.subacks) > n, f"SUBACK for {topic}")
        return self.subacks[n][0]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def connect(url: str, username: str, password: str, client_id: str = "") -> Client:
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or uuid.uuid4().hex[:12], protocol=mqtt.MQTTv5)
    box = Client(c)
    lock = threading.Lock()
    connected: list[Any] = []

    def on_publish(*_a: object) -> None:
        with lock:
            box.acked += 1

    c.username_pw_set(username, password)
    c.on_connect = lambda _c, _u, _f, rc, _p: connected.append(rc)
    c.on_message = lambda _c, _u, msg: box.messages.append(msg)
    c.on_subscribe = lambda _c, _u, _m, rcs, _p: box.subacks.append([r.value for r in rcs])
    c.on_publish = on_publish
    c.max_inflight_messages_set(1000)
    c.connect(host, int(port))
    c.loop_start()
    wait_for(lambda: connected, "CONNACK")
    assert not connected[0].is_failure, connected[0]
    return box


@pytest.fixture
def school(mosquitto_dynsec: Any, topic_prefix: str, tmp_path: Path) -> Iterator[tuple[RunningApi, Bridge]]:
    state = tmp_path / "state"
    cache = f"memory://{topic_prefix}"
    settings = api_settings(mosquitto_dynsec, topic_prefix, state, cache_url=cache)
    with running_api(settings) as api:
        bridge_settings = BridgeSettings(
            mqtt_url=mosquitto_dynsec.url,
            mqtt_username=settings.mqtt_username,
            mqtt_password=settings.service_password(),
            topic_prefix=topic_prefix,
            db_url=settings.db_url,
            tsdb_url=settings.tsdb_url,
            cache_url=cache,
            metrics_port=None,
            client_id=f"bridge-{topic_prefix}",
            rate_limit_msgs_per_s=0,  # quotas alone here
            quota_refresh_s=0.2,
            effects_interval_s=0.1,
        )
        with Bridge(bridge_settings) as bridge:
            bridge.wait_ready(30)
            yield api, bridge


def test_a_class_end_to_end(school: tuple[RunningApi, Bridge], topic_prefix: str) -> None:
    api, bridge = school
    topics = Topics(topic_prefix)
    # ---- the teacher makes the class and its students -------------------------------------------------
    api.add_user(f"teacher-{topic_prefix}", PASSWORD, is_teacher=True)
    teacher = api.login(f"teacher-{topic_prefix}", PASSWORD)
    quotas = {"readings_per_s_per_device": 2, "max_devices_per_student": 1}
    r = api.request("POST", "/v1/classes", token=teacher, json={"name": "7B", "quotas": quotas})
    assert r.status_code == 201, r.text
    class_id = r.json()["id"]
    students = {}
    for name in ("ana", "ben"):
        r = api.request(
            "POST", f"/v1/classes/{class_id}/members", token=teacher,
            json={"username": f"{name}-{topic_prefix}", "password": PASSWORD},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        students[name] = api.login(f"{name}-{topic_prefix}", PASSWORD)

    # ---- each student registers and enrolls a device, and pushes config -------------------------------
    devices, creds, keys = {}, {}, {}
    for name, token in students.items():
        devices[name] = f"{name}-sensor-{topic_prefix}"
        r = api.request("POST", "/v1/devices/register", token=token, json={"id": devices[name]})
        assert r.status_code == 201, r.text
        assert r.json()["device"]["class_id"] == class_id
        keys[name] = generate_private_key()
        enrolled = api.request(
            "POST", "/v1/enroll", json={"token": r.json()["enrollment_token"], "public_key": public_key_b64(keys[name])}
        )
        assert enrolled.status_code == 200, enrolled.text
        creds[name] = enrolled.json()
        cfg = api.request(
            "PUT", f"/v1/devices/{devices[name]}/config", token=token, json={"settings": {"sampling_interval_s": 5}}
        )
        assert cfg.status_code == 200, cfg.text
    # A second device is over the per-student quota.
    over = api.request("POST", "/v1/devices/register", token=students["ana"], json={"id": f"ana-2-{topic_prefix}"})
    assert over.status_code == 409 and over.json()["code"] == "quota_exceeded"

    # ---- neither student sees or touches the other's device, by any route ------------------------------
    for me, other in (("ana", "ben"), ("ben", "ana")):
        tok, dev = students[me], devices[other]
        for method, path, kw in (
            ("GET", f"/v1/devices/{dev}", {}),
            ("GET", f"/v1/devices/{dev}/config", {}),
            ("PUT", f"/v1/devices/{dev}/config", {"json": {"settings": {"sampling_interval_s": 1}}}),
            ("POST", f"/v1/devices/{dev}/deactivate", {}),
            ("POST", f"/v1/devices/{dev}/rotate", {}),
            ("PUT", f"/v1/devices/{dev}/share", {"json": {"shared": True}}),
            ("GET", f"/v1/devices/{dev}/readings", {}),
            ("GET", "/v1/readings", {"params": {"device": dev}}),
            ("GET", "/v1/analytics/summary", {"params": {"device_id": dev}}),
            ("GET", "/v1/analytics/anomalies", {"params": {"device_id": dev}}),
        ):
            got = api.request(method, path, token=tok, **kw)
            assert got.status_code == 404, (me, method, path, got.status_code, got.text)
        listed = [d["id"] for d in api.request("GET", "/v1/devices", token=tok).json()]
        assert listed == [devices[me]]
    # The teacher sees both.
    seen = {d["id"] for d in api.request("GET", "/v1/devices", token=teacher).json()}
    assert seen == set(devices.values())

    # ---- students' own broker accounts read only their devices' topics ---------------------------------
    reader = api.request("POST", "/v1/auth/mqtt-credentials", token=students["ana"]).json()
    ana_reader = connect(api.settings.mqtt_url, reader["mqtt_username"], reader["mqtt_password"])
    teacher_creds = api.request("POST", "/v1/auth/mqtt-credentials", token=teacher).json()
    teacher_reader = connect(api.settings.mqtt_url, teacher_creds["mqtt_username"], teacher_creds["mqtt_password"])
    try:
        assert ana_reader.subscribe(f"{topic_prefix}/devices/{devices['ana']}/#") == 1
        assert ana_reader.subscribe(f"{topic_prefix}/devices/{devices['ben']}/#") >= 0x80  # not authorised
        assert ana_reader.subscribe(f"{topic_prefix}/devices/#") >= 0x80
        assert ana_reader.subscribe("#") >= 0x80
        for name in devices:
            assert teacher_reader.subscribe(f"{topic_prefix}/devices/{devices[name]}/#") == 1

        # ---- telemetry: ben floods, ana sends at her pace ------------------------------------------------
        pubs = {n: connect(api.settings.mqtt_url, creds[n]["mqtt_username"], creds[n]["mqtt_password"],
                           creds[n]["client_id"]) for n in devices}  # fmt: skip
        receipts: dict[str, list[Any]] = {n: [] for n in devices}
        for n, p in pubs.items():
            p.c.on_message = lambda _c, _u, msg, n=n: receipts[n].append(decode_receipt(bytes(msg.payload)))
            assert p.subscribe(topics.receipts(devices[n])) == 1
        flood = 40
        for seq in range(1, flood + 1):
            batch = make_batch(devices["ben"], seq, n=5)
            pubs["ben"].c.publish(topics.telemetry(devices["ben"]), sealed(batch, keys["ben"]), qos=1)
        honest = 4  # one reading at a time, within 2 readings/s (bucket of 4)
        for seq in range(1, honest + 1):
            payload = sealed(make_batch(devices["ana"], seq), keys["ana"])
            pubs["ana"].c.publish(topics.telemetry(devices["ana"]), payload, qos=1)
        wait_for(lambda: pubs["ben"].acked >= flood and pubs["ana"].acked >= honest, "PUBACKs", timeout=30)

        store = open_tsdb(api.settings.tsdb_url)
        engine = make_engine(api.settings.db_url)
        try:
            # Every reading of ana's arrives; ana's reader account sees her telemetry, not ben's.
            wait_for(lambda: store.count(device_id=devices["ana"]) == honest, "ana's readings stored", timeout=30)
            wait_for(lambda: sum(len(r.stored) for r in receipts["ana"]) >= honest, "ana's receipts")
            assert sorted(s for r in receipts["ana"] for s in r.stored) == list(range(1, honest + 1))

            def refused() -> int:
                with Session(engine) as session:
                    return int(session.exec(
                        select(func.count()).select_from(RejectedMessage).where(
                            RejectedMessage.device_id == devices["ben"], RejectedMessage.reason == "quota_exceeded"
                        )
                    ).one())  # fmt: skip

            wait_for(lambda: refused() > 0, "quota_exceeded dead letters for ben", timeout=30)
            stored_ben = store.count(device_id=devices["ben"])
            assert 0 < stored_ben < flood * 5, stored_ben
            wait_for(lambda: refused() + stored_ben // 5 >= flood, "every flood message accounted for", timeout=30)
            # quota_exceeded is never receipted (like rate_limited): ben's device resends later.
            assert not [x for r in receipts["ben"] for x in r.rejected if x.reason == "quota_exceeded"]
            with Session(engine) as session:
                reasons = set(session.exec(select(RejectedMessage.reason).where(
                    col(RejectedMessage.device_id).in_(list(devices.values())))).all())  # fmt: skip
            assert reasons == {"quota_exceeded"}
            counted = {s.labels["reason"]: s.value for m in bridge.metrics.rejected.collect() for s in m.samples
                       if s.name.endswith("_total")}  # fmt: skip
            assert counted.get("quota_exceeded", 0) >= 1
        finally:
            store.close()
            engine.dispose()
        wait_for(lambda: any(m.topic == topics.telemetry(devices["ana"]) for m in ana_reader.messages), "ana's reader")
        assert not [m for m in ana_reader.messages if devices["ben"] in m.topic]
        assert any(devices["ben"] in m.topic for m in teacher_reader.messages)

        # ---- the teacher sees the quota at work ----------------------------------------------------------
        usage = wait_for(
            lambda: (
                (u := api.request("GET", f"/v1/classes/{class_id}/quota", token=teacher).json())["stored_bytes"] > 0
                and u
            ),
            "class usage",
        )
        assert usage["quota_exceeded"].get(devices["ben"], 0) > 0 and devices["ana"] not in usage["quota_exceeded"]
        assert usage["devices_per_student"] == {f"ana-{topic_prefix}": 1, f"ben-{topic_prefix}": 1}
        assert api.request("GET", f"/v1/classes/{class_id}/quota", token=students["ana"]).status_code == 403

        # ---- sharing: ben shares his device read-only; ana may read it, not change it --------------------
        assert api.request("PUT", f"/v1/devices/{devices['ben']}/share", token=students["ben"],
                           json={"shared": True}).status_code == 200  # fmt: skip
        assert api.request("GET", f"/v1/devices/{devices['ben']}/readings", token=students["ana"]).status_code == 200
        assert api.request("PUT", f"/v1/devices/{devices['ben']}/config", token=students["ana"],
                           json={"settings": {"sampling_interval_s": 1}}).status_code == 403  # fmt: skip
        assert ana_reader.subscribe(f"{topic_prefix}/devices/{devices['ben']}/#") == 1
        for p in pubs.values():
            p.close()
    finally:
        ana_reader.close()
        teacher_reader.close()
    # The audit log holds the class's story.
    actions = {e["action"] for e in api.admin("GET", "/v1/audit", params={"limit": 500}).json()}
    assert {
        "class.create",
        "user.create",
        "class.member",
        "device.register",
        "device.enroll",
        "config.set",
        "device.share",
    } <= actions
