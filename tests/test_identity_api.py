"""Device identity end to end against real Mosquitto (dynamic security) and PostgreSQL: register and
enroll through the real API (uvicorn on a free port), then real MQTT clients with the issued
credentials; broker ACLs, deactivation, rotation, tokens, signed config, liveness, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
import uvicorn
from sqlmodel import Session

from cloud_core.api import create_app
from cloud_core.auth.models import ApiKey
from cloud_core.auth.users import create_user
from cloud_core.core.config import CloudSettings
from cloud_core.core.db import make_engine
from cloud_core.core.security import generate_token, hash_token
from cloud_core.models import EnrollmentToken
from iot_protocol import (
    ConfigReport,
    Health,
    Kind,
    Status,
    Topics,
    encode,
    generate_private_key,
    open_config,
    public_key_b64,
    public_key_from_b64,
)
from iot_testing import wait_for

pytestmark = pytest.mark.integration

DEADLINE_S = 10.0


@dataclass
class Mqtt:
    """A real paho client that records what it receives, its SUBACKs and its disconnects."""

    client: mqtt.Client
    messages: list[mqtt.MQTTMessage] = field(default_factory=list)
    subacks: list[list[str]] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)

    def on(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.messages if m.topic == topic]

    def subscribe(self, topic: str) -> list[str]:
        n = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        wait_for(lambda: len(self.subacks) > n, f"SUBACK for {topic}")
        return self.subacks[n]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(DEADLINE_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_connect(
    url: str,
    username: str,
    password: str,
    *,
    client_id: str = "",
    will: tuple[str, bytes] | None = None,
    keepalive: int = 30,
) -> Mqtt:
    """Connect and wait for CONNACK; raises ConnectionRefusedError with the reason if refused."""
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    box = Mqtt(client)
    client.username_pw_set(username, password)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    result: list[Any] = []
    client.on_connect = lambda _c, _u, _f, rc, _p: result.append(rc)
    client.on_message = lambda _c, _u, msg: box.messages.append(msg)
    client.on_subscribe = lambda _c, _u, _mid, rcs, _p: box.subacks.append([str(r) for r in rcs])
    client.on_disconnect = lambda _c, _u, _f, rc, _p: box.disconnects.append(str(rc))
    client.reconnect_delay_set(60, 120)  # never reconnect on its own during a test
    client.connect(host, int(port), keepalive=keepalive)
    client.loop_start()
    wait_for(lambda: result, "CONNACK")
    if result[0].is_failure:
        client.loop_stop()
        raise ConnectionRefusedError(str(result[0]))
    return box


@dataclass
class Cloud:
    url: str
    settings: CloudSettings
    token: str
    broker_url: str
    topics: Topics

    def request(self, method: str, path: str, *, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kw)

    def register(self, device_id: str, **fields: str) -> str:
        r = self.request("POST", "/v1/devices/register", json={"id": device_id, **fields})
        assert r.status_code == 201, r.text
        token: str = r.json()["enrollment_token"]
        return token

    def enroll(self, token: str, public_key: str | None = None) -> httpx.Response:
        key = public_key or public_key_b64(generate_private_key())
        return httpx.post(self.url + "/v1/enroll", json={"token": token, "public_key": key}, timeout=30)

    def enrolled(self, device_id: str) -> dict[str, Any]:
        r = self.enroll(self.register(device_id))
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def device(self, creds: dict[str, Any], **kw: Any) -> Mqtt:
        return mqtt_connect(
            self.broker_url,
            creds["mqtt_username"],
            creds["mqtt_password"],
            client_id=creds["client_id"],
            **kw,
        )

    def service(self) -> Mqtt:
        return mqtt_connect(self.broker_url, self.settings.mqtt_username, self.settings.service_password())

    def get_device(self, device_id: str) -> dict[str, Any]:
        r = self.request("GET", f"/v1/devices/{device_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


def serve(app: Any) -> tuple[uvicorn.Server, threading.Thread, int]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, ws="none", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-api", daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), "the API to start", timeout=30)
    assert server.started, "the API did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, port


@pytest.fixture
def cloud(mosquitto_dynsec: Any, pg_url: str, topic_prefix: str, tmp_path: Path) -> Iterator[Cloud]:
    settings = CloudSettings(
        state_dir=tmp_path / "state",
        db_url=pg_url,
        mqtt_url=mosquitto_dynsec.url,
        mqtt_username=f"svc-{topic_prefix}",
        mqtt_admin_username=mosquitto_dynsec.admin_username,
        mqtt_admin_password=mosquitto_dynsec.admin_password,
        topic_prefix=topic_prefix,
        events_flush_interval_s=0.1,
        stale_after_s=2.0,
        offline_after_s=4.0,
    )
    server, thread, port = serve(create_app(settings))
    try:
        token = (settings.state_dir / "admin.token").read_text().strip()
        yield Cloud(f"http://127.0.0.1:{port}", settings, token, mosquitto_dynsec.url, Topics(topic_prefix))
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def dev(topic_prefix: str, name: str) -> str:
    """A device id unique on the shared broker (dynsec usernames are broker-wide)."""
    return f"{name}-{topic_prefix}"


# ---- enrollment and broker ACLs ------------------------------------------------------------------


def test_admin_token_is_private_and_ops_endpoints_answer(cloud: Cloud) -> None:
    assert (cloud.settings.state_dir / "admin.token").stat().st_mode & 0o777 == 0o600
    assert cloud.settings.signing_key_path.stat().st_mode & 0o777 == 0o600
    assert httpx.get(cloud.url + "/health").json() == {"status": "ok"}
    assert httpx.get(cloud.url + "/ready").json() == {"status": "ready", "broker": "connected"}
    cloud.register(dev(cloud.topics.prefix, "m"))
    metrics = httpx.get(cloud.url + "/metrics").text
    assert 'edu_api_requests_total{method="POST",route="/v1/devices/register",status="201"} 1.0' in metrics


def test_enrolled_device_connects_and_publishes_its_telemetry(cloud: Cloud) -> None:
    device_id = dev(cloud.topics.prefix, "a")
    creds = cloud.enrolled(device_id)
    assert creds["device_id"] == device_id
    assert creds["mqtt_url"] == cloud.broker_url
    assert creds["topic_prefix"] == cloud.topics.prefix
    assert creds["key_version"] == 1
    assert len(public_key_from_b64(creds["cloud_public_key"])) == 32
    service = cloud.service()
    assert service.subscribe(cloud.topics.all_devices(Kind.TELEMETRY)) == ["Granted QoS 1"]
    device = cloud.device(creds)
    device.publish(cloud.topics.telemetry(device_id), b"batch-1")
    wait_for(lambda: service.on(cloud.topics.telemetry(device_id)), "the device's telemetry")
    assert service.on(cloud.topics.telemetry(device_id)) == [b"batch-1"]
    assert cloud.get_device(device_id)["status"] == "active"
    device.close()
    service.close()


def test_device_cannot_publish_to_or_read_another_devices_topics(cloud: Cloud) -> None:
    a_id, b_id = dev(cloud.topics.prefix, "a"), dev(cloud.topics.prefix, "b")
    a = cloud.device(cloud.enrolled(a_id))
    cloud.enrolled(b_id)
    service = cloud.service()
    service.subscribe(cloud.topics.all_devices(Kind.TELEMETRY))
    # A may not read B's desired config, nor everything under the prefix.
    assert a.subscribe(cloud.topics.config_desired(b_id)) == ["Not authorized"]
    assert a.subscribe(f"{cloud.topics.prefix}/#") == ["Not authorized"]
    assert a.subscribe(cloud.topics.config_desired(a_id)) == ["Granted QoS 1"]
    r = cloud.request("PUT", f"/v1/devices/{b_id}/config", json={"settings": {"sampling_interval_s": 7}})
    assert r.status_code == 200, r.text
    # A forges B's telemetry, then sends its own: once its own arrives, the forged one would have too.
    a.publish(cloud.topics.telemetry(b_id), b"forged")
    a.publish(cloud.topics.telemetry(a_id), b"own")
    wait_for(lambda: service.on(cloud.topics.telemetry(a_id)), "A's own telemetry")
    assert service.on(cloud.topics.telemetry(b_id)) == []
    assert a.on(cloud.topics.config_desired(b_id)) == []
    a.close()
    service.close()


def test_wrong_password_and_foreign_client_id_are_refused(cloud: Cloud) -> None:
    device_id = dev(cloud.topics.prefix, "a")
    creds = cloud.enrolled(device_id)
    with pytest.raises(ConnectionRefusedError, match="Not authorized"):
        mqtt_connect(cloud.broker_url, device_id, "wrong-password", client_id=device_id)
    with pytest.raises(ConnectionRefusedError, match="Not authorized"):
        mqtt_connect(cloud.broker_url, device_id, creds["mqtt_password"], client_id="someone-else")


def test_deactivate_cuts_the_live_connection_and_refuses_the_next(cloud: Cloud) -> None:
    device_id = dev(cloud.topics.prefix, "a")
    creds = cloud.enrolled(device_id)
    service = cloud.service()
    service.subscribe(cloud.topics.registry_events())
    device = cloud.device(creds)
    r = cloud.request("POST", f"/v1/devices/{device_id}/deactivate")
    assert r.status_code == 200 and r.json()["status"] == "inactive"
    wait_for(lambda: device.disconnects, "the broker to drop the deactivated device")
    with pytest.raises(ConnectionRefusedError, match="Not authorized"):
        cloud.device(creds)
    events = wait_for(lambda: service.on(cloud.topics.registry_events()), "the registry event")
    assert orjson.loads(events[-1]) == {"v": 1, "device_id": device_id, "event": "deactivated"}
    device.close()
    service.close()


def test_rotate_refuses_old_credentials_and_reenrolling_replaces_the_key(cloud: Cloud) -> None:
    device_id = dev(cloud.topics.prefix, "a")
    first_token = cloud.register(device_id)
    old = cloud.enroll(first_token).json()
    old_key = cloud.get_device(device_id)
    device = cloud.device(old)
    r = cloud.request("POST", f"/v1/devices/{device_id}/rotate")
    assert r.status_code == 200, r.text
    new_token = r.json()["enrollment_token"]
    wait_for(lambda: device.disconnects, "the broker to drop the rotated device")
    with pytest.raises(ConnectionRefusedError, match="Not authorized"):
        cloud.device(old)
    new_public = public_key_b64(generate_private_key())
    new = cloud.enroll(new_token, new_public)
    assert new.status_code == 200, new.text
    assert new.json()["key_version"] == 2
    assert new.json()["mqtt_password"] != old["mqtt_password"]
    with pytest.raises(ConnectionRefusedError, match="Not authorized"):
        cloud.device(old)
    cloud.device(new.json()).close()
    after = cloud.get_device(device_id)
    assert after["key_version"] == 2 and after["status"] == "active"
    assert old_key["key_version"] == 1
    assert cloud.enroll(first_token).status_code == 409
    device.close()


def test_used_unknown_and_expired_tokens_are_refused_with_distinct_errors(cloud: Cloud) -> None:
    a_id, b_id = dev(cloud.topics.prefix, "a"), dev(cloud.topics.prefix, "b")
    token = cloud.register(a_id)
    assert cloud.enroll(token).status_code == 200
    used = cloud.enroll(token)
    assert (used.status_code, used.json()["code"]) == (409, "token_used")
    assert "already used" in used.json()["detail"]
    unknown = cloud.enroll("not-a-token")
    assert (unknown.status_code, unknown.json()["code"]) == (401, "token_unknown")
    expiring = cloud.register(b_id)
    engine = make_engine(cloud.settings.db_url)
    with Session(engine) as session:
        row = session.get(EnrollmentToken, hash_token(expiring))
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.add(row)
        session.commit()
    engine.dispose()
    expired = cloud.enroll(expiring)
    assert (expired.status_code, expired.json()["code"]) == (410, "token_expired")
    assert "expired" in expired.json()["detail"]
    bad_key = cloud.enroll(
        cloud.request("POST", f"/v1/devices/{a_id}/rotate").json()["enrollment_token"], "xx"
    )
    assert (bad_key.status_code, bad_key.json()["code"]) == (422, "invalid")
    assert cloud.get_device(b_id)["status"] == "pending"


def test_roles_limit_what_a_user_may_do(cloud: Cloud) -> None:
    engine = make_engine(cloud.settings.db_url)
    viewer_token = generate_token()
    with Session(engine) as session:
        user = create_user(
            session, actor="test", username="vic", password="long enough pw", role="readonly", fleet_access="read"
        )
        assert user.id is not None
        session.add(ApiKey(token_hash=hash_token(viewer_token), user_id=user.id, role="readonly"))
        session.commit()
    engine.dispose()
    assert cloud.request("GET", "/v1/devices", token=viewer_token).status_code == 200
    denied = cloud.request("POST", "/v1/devices/register", token=viewer_token, json={"id": "x"})
    assert denied.status_code == 403 and "write_devices" in denied.json()["detail"]
    assert httpx.get(cloud.url + "/v1/devices").status_code == 401
    assert cloud.request("GET", "/v1/devices", token="bogus").json()["detail"] == "invalid API key"


# ---- signed desired config -----------------------------------------------------------------------


def test_config_versions_are_signed_retained_and_only_the_newest_reaches_a_returning_device(
    cloud: Cloud,
) -> None:
    device_id = dev(cloud.topics.prefix, "a")
    creds = cloud.enrolled(device_id)
    cloud.device(creds).close()  # it was here once, then went away
    versions = []
    for change in (
        {"sampling_interval_s": 5},
        {"calibration_offsets": {"temperature": -0.4}},
        {"low_power": True},
    ):
        r = cloud.request("PUT", f"/v1/devices/{device_id}/config", json={"settings": change})
        assert r.status_code == 200, r.text
        versions.append(r.json()["desired_version"])
    assert versions == [1, 2, 3]
    bad = cloud.request(
        "PUT", f"/v1/devices/{device_id}/config", json={"settings": {"sampling_interval_s": -1}}
    )
    assert bad.status_code == 422 and "sampling_interval_s" in bad.json()["detail"]
    unknown = cloud.request("PUT", f"/v1/devices/{device_id}/config", json={"settings": {"colour": "red"}})
    assert unknown.status_code == 422
    device = cloud.device(creds)
    device.subscribe(cloud.topics.config_desired(device_id))
    wait_for(lambda: device.messages, "the retained desired config")
    # The broker answers one SUBSCRIBE (SUBACK, then its retained messages) before the next: once this
    # SUBACK is in, a second (older) retained config would have arrived too.
    assert device.subscribe(cloud.topics.receipts(device_id)) == ["Granted QoS 1"]
    assert len(device.messages) == 1 and device.messages[0].retain
    doc = open_config(
        device.messages[0].payload,
        device_id=device_id,
        cloud_public_key=public_key_from_b64(creds["cloud_public_key"]),
    )
    assert doc.version == 3
    assert dict(doc.settings) == {
        "sampling_interval_s": 5.0,
        "calibration_offsets": {"temperature": -0.4},
        "low_power": True,
    }
    shown = cloud.request("GET", f"/v1/devices/{device_id}/config").json()
    assert (shown["desired_version"], shown["reported_version"], shown["in_sync"]) == (3, 0, False)
    device.close()


# ---- device events and liveness ------------------------------------------------------------------


def test_presence_heartbeat_and_config_reports_drive_liveness(cloud: Cloud) -> None:
    device_id = dev(cloud.topics.prefix, "a")
    creds = cloud.enrolled(device_id)
    topics = cloud.topics
    assert cloud.get_device(device_id)["state"] == "offline"
    lost = encode(Status("offline", reason="lost"))
    device = cloud.device(creds, will=(topics.status(device_id), lost), keepalive=1)
    now_ms = int(time.time() * 1000)
    device.publish(topics.status(device_id), encode(Status("online", at=now_ms)), retain=True)
    health = Health(
        at=now_ms,
        uptime_s=1.0,
        buffer_depth=0,
        produced=0,
        dropped=0,
        firmware="1.2.3",
        config_version=0,
        clock_synced=True,
    )
    device.publish(topics.health(device_id), encode(health))
    device.publish(
        topics.config_reported(device_id), encode(ConfigReport(1, "rejected", now_ms, "no such sensor"))
    )
    seen = wait_for(
        lambda: (d := cloud.get_device(device_id))["state"] == "online" and d["firmware"] == "1.2.3" and d,
        "the device to show online",
    )
    assert seen["presence"] == "online" and seen["last_seen_age_s"] < 2.0
    assert (seen["reported_config_version"], seen["reported_config_status"]) == (1, "rejected")
    assert seen["reported_config_error"] == "no such sensor"
    # The device dies without a clean disconnect: the broker fires its last will after 1.5 x keepalive.
    device.client.loop_stop()
    sock = device.client.socket()
    assert sock is not None
    sock.close()
    died = time.monotonic()
    gone = wait_for(lambda: (d := cloud.get_device(device_id))["state"] == "offline" and d, "the last will")
    assert gone["presence"] == "offline"
    assert time.monotonic() - died < 1.5 * 1 + 2.0


def test_silent_device_goes_stale_then_offline(cloud: Cloud) -> None:
    device_id = dev(cloud.topics.prefix, "a")
    device = cloud.device(cloud.enrolled(device_id))
    device.publish(cloud.topics.status(device_id), encode(Status("online")), retain=True)
    wait_for(lambda: cloud.get_device(device_id)["state"] == "online", "online")
    wait_for(lambda: cloud.get_device(device_id)["state"] == "stale", "stale after stale_after_s (2 s)")
    wait_for(lambda: cloud.get_device(device_id)["state"] == "offline", "offline after offline_after_s (4 s)")
    device.close()


# ---- the CLI -------------------------------------------------------------------------------------


def iotctl(
    *args: str, cloud: Cloud | None = None, api: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDU_STATE_DIR": "/nonexistent-edu-state"}
    env.pop("IOTCTL_TOKEN", None)
    if cloud is not None:
        env["IOTCTL_API"] = cloud.url
        env["IOTCTL_TOKEN"] = cloud.token
    if api is not None:
        env["IOTCTL_API"] = api
    cmd = [sys.executable, "-c", "from iotctl.main import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_registers_lists_sets_config_and_rotates(cloud: Cloud) -> None:
    device_id = dev(cloud.topics.prefix, "c")
    out = iotctl(
        "devices", "register", device_id, "--type", "environment", "--location", "lab-1", cloud=cloud
    )
    assert out.returncode == 0, out.stderr
    token = out.stdout.splitlines()[2]
    assert cloud.enroll(token).status_code == 200
    listed = iotctl("devices", "list", cloud=cloud)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(device_id))
    assert row.split()[:5] == [device_id, "active", "offline", "never", "lab-1"]
    cfg = iotctl(
        "config",
        "set",
        device_id,
        "sampling_interval_s=10",
        "calibration_offsets.temperature=-0.4",
        cloud=cloud,
    )
    assert cfg.returncode == 0, cfg.stderr
    shown = iotctl("config", "show", device_id, "--json", cloud=cloud)
    view = orjson.loads(shown.stdout)
    assert view["desired_version"] == 1
    assert view["desired"] == {"sampling_interval_s": 10.0, "calibration_offsets": {"temperature": -0.4}}
    rotated = iotctl("devices", "rotate", device_id, cloud=cloud)
    assert rotated.returncode == 0 and cloud.enroll(rotated.stdout.splitlines()[2]).status_code == 200
    assert (
        iotctl("devices", "deactivate", device_id, cloud=cloud).stdout.strip() == f"deactivated {device_id}"
    )


def test_cli_errors_are_one_line(cloud: Cloud) -> None:
    assert one_line_error(iotctl("devices", "show", "ghost", cloud=cloud)) == (
        "error: no device 'ghost' [HTTP 404]"
    )
    assert "bad setting 'oops'" in one_line_error(iotctl("config", "set", "ghost", "oops", cloud=cloud))
    bad_value = one_line_error(iotctl("config", "set", "ghost", "sampling_interval_s=10", cloud=cloud))
    assert bad_value == "error: no device 'ghost' [HTTP 404]"
    assert "cannot reach the API at http://127.0.0.1:9" in one_line_error(
        iotctl("devices", "list", "--token", "t", api="http://127.0.0.1:9")
    )
    assert "no API token" in one_line_error(iotctl("devices", "list", api=cloud.url))
    exists = cloud.register(dev(cloud.topics.prefix, "d"))
    assert exists
    dup = one_line_error(iotctl("devices", "register", dev(cloud.topics.prefix, "d"), cloud=cloud))
    assert "already exists" in dup


def test_the_agents_enroll_client_gets_working_credentials(cloud: Cloud, tmp_path: Path) -> None:
    from edge_agent.identity import enroll

    device_id = dev(cloud.topics.prefix, "e")
    identity = enroll(cloud.url, cloud.register(device_id), tmp_path / "identity")
    assert identity.device_id == device_id
    assert identity.cloud_public_key == public_key_from_b64(
        cloud.enrolled(dev(cloud.topics.prefix, "f"))["cloud_public_key"]
    )
    assert identity.mqtt_username is not None and identity.mqtt_password is not None
    device = mqtt_connect(
        identity.mqtt_url, identity.mqtt_username, identity.mqtt_password, client_id=identity.client_id
    )
    assert device.subscribe(cloud.topics.config_desired(device_id)) == ["Granted QoS 1"]
    device.close()
    public = cloud.get_device(device_id)
    assert public["key_version"] == 1 and "public_key" not in public


def test_a_restarted_api_keeps_its_service_account_keys_and_devices(cloud: Cloud) -> None:
    device_id = dev(cloud.topics.prefix, "r")
    creds = cloud.enrolled(device_id)
    server, thread, port = serve(create_app(cloud.settings))  # a second replica on the same state
    try:
        r = httpx.get(
            f"http://127.0.0.1:{port}/v1/devices/{device_id}",
            headers={"Authorization": f"Bearer {cloud.token}"},
        )
        assert r.status_code == 200 and r.json()["status"] == "active"
        again = cloud.enrolled(dev(cloud.topics.prefix, "s"))
        assert again["cloud_public_key"] == creds["cloud_public_key"]
        cloud.device(creds).close()
    finally:
        server.should_exit = True
        thread.join(timeout=15)
