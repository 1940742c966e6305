"""End to end, as `iotctl up` runs it: simulated devices publish over real MQTT, the bridge stores, and
`iotctl query` (and InfluxQL straight against InfluxDB) returns exactly the readings that were sent:
same count, same values, same timestamps. Once on embedded defaults, once on real servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import iot_protocol as p
from iot_testing import wait_for
from iotctl.platform import Platform, PlatformSettings

pytestmark = pytest.mark.integration

IOTCTL = [sys.executable, "-m", "iotctl"]
Key = tuple[str, int]  # (device_id, ts)


class WireSniffer:
    """Records every telemetry batch seen on the broker (by device and seq), decoded: the readings
    the devices actually sent, whatever happens to them afterwards."""

    def __init__(self, platform: Platform) -> None:
        host, port = urlsplit(platform.mqtt_url).hostname, urlsplit(platform.mqtt_url).port
        self.batches: dict[tuple[str, int], p.Batch] = {}
        self.subscribed = threading.Event()
        proto = mqtt.MQTTv5 if platform.mqtt_protocol == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="e2e-sniffer", protocol=proto)
        self.client.username_pw_set(platform.cloud.mqtt_username, platform.cloud.service_password())
        topic = p.Topics(platform.s.topic_prefix).all_devices(p.Kind.TELEMETRY)
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        assert host is not None and port is not None
        self.client.connect(host, port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "sniffer could not subscribe"

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        batch = p.decode_batch(p.jws.decode(bytes(msg.payload)).payload)
        self.batches[(batch.device_id, batch.seq)] = batch

    def readings(self) -> dict[Key, dict[str, float]]:
        out: dict[Key, dict[str, float]] = {}
        for batch in self.batches.values():
            for r in batch.readings:
                out[(batch.device_id, r.ts)] = {**r.values, "quality_score": r.quality}
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def query_cli(tsdb_url: str, *args: str) -> list[dict[str, Any]]:
    env = {**os.environ, "IOTCTL_TSDB": tsdb_url}
    out = subprocess.run(
        [*IOTCTL, "query", "--since", "1h", "--format", "json", *args],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    return list(json.loads(out.stdout))


def ts_ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def stored_by_key(rows: list[dict[str, Any]]) -> dict[Key, dict[str, float]]:
    meta = {"time", "device_id", "sensor_type", "location"}
    out: dict[Key, dict[str, float]] = {}
    for row in rows:
        key = (row["device_id"], ts_ms(row["time"]))
        assert key not in out, f"reading {key} stored twice"
        out[key] = {k: v for k, v in row.items() if k not in meta and v is not None}
    return out


def run_and_compare(settings: PlatformSettings, seconds: float) -> tuple[Platform, dict[Key, dict[str, float]]]:
    platform = Platform(settings).start(devices=False)
    with platform:
        sniffer = WireSniffer(platform)  # subscribed before the first device publishes
        platform.start_devices()
        try:
            wait_for(lambda: platform.stats().readings_stored >= 10, "10 readings stored", 30)
            time.sleep(seconds)  # let the fleet run: more batches, more chances to lose one
            platform.stop_devices(timeout_s=40)  # devices drain: every batch receipted
            sent = sniffer.readings()
        finally:
            sniffer.close()
        assert sent, "the devices sent nothing"
        assert platform.stats().rejected == {}
        stored = stored_by_key(query_cli(platform.tsdb_url))
        assert stored.keys() == sent.keys()
        for key, values in sent.items():
            assert stored[key] == pytest.approx(values, rel=1e-12), key
        return platform, sent


def test_embedded_defaults_store_exactly_what_was_sent(tmp_path: Path) -> None:
    settings = PlatformSettings(
        state_dir=tmp_path / "state", devices=3, sampling_interval_s=0.5, mqtt_port=0, api_port=0,
        bridge_metrics_port=0, drain_timeout_s=30,
    )  # fmt: skip
    platform, sent = run_and_compare(settings, seconds=3)
    assert {d for d, _ in sent} == {"up-000", "up-001", "up-002"}
    # the data stays on disk after the platform stops
    assert len(query_cli(platform.tsdb_url)) == len(sent)


def test_embedded_amqtt_fallback_stores_exactly_what_was_sent(tmp_path: Path) -> None:
    settings = PlatformSettings(
        state_dir=tmp_path / "state", devices=2, sampling_interval_s=0.5, mqtt_port=0, api_port=0,
        bridge_metrics_port=0, drain_timeout_s=30, broker_kind="amqtt",
    )  # fmt: skip
    run_and_compare(settings, seconds=2)


def test_real_servers_store_exactly_what_was_sent(
    tmp_path: Path, mosquitto_dynsec: Any, pg_url: str, influx_url: str, redis_url: str, topic_prefix: str
) -> None:
    settings = PlatformSettings(
        state_dir=tmp_path / "state", devices=3, sampling_interval_s=0.5, api_port=0, bridge_metrics_port=0,
        broker_url=mosquitto_dynsec.url, broker_admin_username=mosquitto_dynsec.admin_username,
        broker_admin_password=mosquitto_dynsec.admin_password, db_url=pg_url, tsdb_url=influx_url,
        cache_url=redis_url, topic_prefix=topic_prefix, drain_timeout_s=30,
    )  # fmt: skip
    _, sent = run_and_compare(settings, seconds=3)

    # InfluxQL straight against InfluxDB, as an analyst would
    parts = urlsplit(influx_url)
    r = httpx.get(
        f"http://{parts.hostname}:{parts.port}/query",
        params={"db": parts.path.strip("/"), "epoch": "ms",
                "q": "SELECT temperature, device_id FROM sensor_readings WHERE time > now() - 1h"},
    )  # fmt: skip
    r.raise_for_status()
    series = r.json()["results"][0]["series"][0]
    rows = {(row[2], row[0]): row[1] for row in series["values"]}
    assert rows == {key: values["temperature"] for key, values in sent.items()}


class SessionSniffer:
    """A telemetry sniffer with a persistent MQTT session on the broker `iotctl up` runs: subscribed once
    (while no device runs), it is sent every batch published afterwards, connected or not, because the
    broker queues QoS 1 messages for it and saves its session across restarts."""

    def __init__(self, state: Path, prefix: str = "edu") -> None:
        self.state = state
        self.topic = p.Topics(prefix).all_devices(p.Kind.TELEMETRY)
        self.batches: dict[tuple[str, int], p.Batch] = {}
        self.client: mqtt.Client | None = None

    def connect(self, *, subscribe: bool = False) -> None:
        url = urlsplit((self.state / "mqtt.url").read_text().strip())
        assert url.hostname is not None and url.port is not None
        subscribed = threading.Event()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="e2e-session-sniffer", protocol=mqtt.MQTTv5)
        c.username_pw_set("edu-cloud", (self.state / "mqtt-service.secret").read_text().strip())
        c.on_message = self._on_message
        c.on_subscribe = lambda *a: subscribed.set()
        if subscribe:
            c.on_connect = lambda cl, *a: cl.subscribe(self.topic, qos=1)
        connected = threading.Event()
        if not subscribe:
            c.on_connect = lambda *a: connected.set()
        c.connect(url.hostname, url.port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        assert (subscribed if subscribe else connected).wait(15), "the sniffer could not connect/subscribe"

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        batch = p.decode_batch(p.jws.decode(bytes(msg.payload)).payload)
        self.batches[(batch.device_id, batch.seq)] = batch

    def readings(self) -> dict[Key, dict[str, float]]:
        return {
            (b.device_id, r.ts): {**r.values, "quality_score": r.quality}
            for b in list(self.batches.values())
            for r in b.readings
        }

    def disconnect(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None


def start_up(state: Path, *args: str) -> subprocess.Popen[str]:
    """`iotctl up` as a user runs it (no live view), waited for until its broker and API answer."""
    (state / "mqtt.url").unlink(missing_ok=True)
    proc = subprocess.Popen(
        [*IOTCTL, "up", "--state-dir", str(state), "--mqtt-port", "0", "--api-port", "0", "--no-view", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: proc.poll() is not None or (state / "mqtt.url").exists(), "iotctl up starting", 90)
    except BaseException:
        proc.kill()
        raise
    assert proc.poll() is None, proc.communicate()[1]
    return proc


def stop_up(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C, then the exit: code 0, no traceback, the closing line. Returns stderr."""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "stopped." in err
    return err


def test_iotctl_up_stores_exactly_what_its_devices_sent_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """The real command, compared exactly: every reading its simulated devices published (seen on the
    wire by a sniffer with a persistent session) is what `iotctl query` returns, once, with the same
    values; Ctrl-C stops everything and the data stays. Three runs on one state directory: the first
    only subscribes the sniffer, the second runs the devices, the third (no devices) delivers whatever
    the second left queued for the bridge or the sniffer when it stopped."""
    state = tmp_path / "state"
    sniffer = SessionSniffer(state)
    first = start_up(state, "--devices", "0")
    try:
        sniffer.connect(subscribe=True)
        sniffer.disconnect()  # the broker keeps the session and queues telemetry for it
    finally:
        stop_up(first)

    second = start_up(state, "--devices", "2", "--interval", "0.5")
    try:
        sniffer.connect()
        wait_for(lambda: len(sniffer.readings()) >= 20, "the devices sending 20 readings", 90)
    finally:
        err = stop_up(second)
        sniffer.disconnect()
    assert "readings stored this run" in err

    tsdb = f"sqlite:///{state / 'readings.db'}"
    third = start_up(state, "--devices", "0")
    try:
        sniffer.connect()
        sent = sniffer.readings()
        assert {d for d, _ in sent} == {"up-000", "up-001"}  # iotctl up's own fleet

        def stored_is_sent() -> bool:
            nonlocal sent
            sent = sniffer.readings()
            return stored_by_key(query_cli(tsdb)) == sent

        wait_for(stored_is_sent, "storage to hold exactly the readings the devices sent", 60, interval=1.0)
    finally:
        sniffer.disconnect()
        stop_up(third)
    stored = stored_by_key(query_cli(tsdb))
    assert stored.keys() == sent.keys() and len(sent) >= 20
    for key, values in sent.items():
        assert stored[key] == pytest.approx(values, rel=1e-12), key


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "--tsdb", "ftp://x"], "ftp://x"),
        (["query", "--since", "soon"], "--since"),
        (["query", "--tsdb", "influxdb://127.0.0.1:9/db", "--since", "1h"], "unreachable"),
        (["query", "--start", "2026-01-02T00:00:00Z", "--end", "2026-01-01T00:00:00Z"], "start"),
        (["up", "--db", "mysql://x"], "--db"),
        (["devices", "show", "nope", "--api", "http://127.0.0.1:9", "--token", "t"], "127.0.0.1:9"),
        (["devices", "show", "nope", "--api", "http://127.0.0.1:9"], "no API token"),
    ],
)
def test_bad_cli_input_gives_one_line_and_nonzero_exit(tmp_path: Path, args: list[str], message: str) -> None:
    env = {**os.environ, "EDU_STATE_DIR": str(tmp_path)}
    out = subprocess.run([*IOTCTL, *args], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert message in lines[0]
