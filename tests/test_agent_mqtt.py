"""The agent on a real Mosquitto: presence (online, clean offline, last will), receipts delete and
missing receipts resend identical bytes, health counters, and signed config apply (signed,
unsigned, wrong key, older version), taking effect without a restart."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge_agent.agent import Agent
from edge_agent.config import load_settings
from edge_agent.identity import Identity, write_identity
from iot_protocol import (
    ConfigDocument,
    Receipt,
    Topics,
    decode_config_report,
    decode_health,
    decode_status,
    encode,
    generate_private_key,
    open_batch,
    public_key_b64,
    seal_config,
)
from iot_testing import wait_for

pytestmark = pytest.mark.integration
DEVICE = "agent-mqtt-1"
IOTCTL = str(Path(sys.executable).with_name("iotctl"))


class Cloud:
    """A real MQTT client playing the cloud's side of the contract for one device."""

    def __init__(self, broker: Any, prefix: str) -> None:
        self.topics = Topics(prefix)
        self.msgs: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_message = lambda _c, _u, m: self._add(m)
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *_: subscribed.set()
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.c.subscribe(f"{prefix}/#", qos=1)
        assert subscribed.wait(10)

    def _add(self, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.msgs.append((m.topic, m.payload, bool(m.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.msgs if t == topic]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def cloud(mosquitto: Any, topic_prefix: str) -> Iterator[Cloud]:
    c = Cloud(mosquitto, topic_prefix)
    yield c
    c.close()


CLOUD_KEY = generate_private_key()


def make_identity(tmp: Path, broker: Any, prefix: str) -> Identity:
    return write_identity(
        tmp / "identity",
        generate_private_key(),
        {
            "device_id": DEVICE,
            "mqtt_url": broker.url,
            "topic_prefix": prefix,
            "cloud_public_key": public_key_b64(CLOUD_KEY),
        },
    )


def write_config(tmp: Path, **over: Any) -> Path:
    fields = {
        "sampling_interval_s": 0.1,
        "transmission_interval_s": 0.1,
        "batch_max_readings": 5,
        "receipt_timeout_s": 30.0,
        "heartbeat_interval_s": 1,
        "backoff_initial_s": 0.1,
        "backoff_max_s": 0.5,
        **over,
    }
    body = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in fields.items())
    path = tmp / "agent.toml"
    path.write_text(f'identity_dir = "identity"\nbuffer_path = "buffer.db"\n{body}[[sensors]]\ntype = "simulated"\n')
    return path


@pytest.fixture
def agent_factory(tmp_path: Path, mosquitto: Any, topic_prefix: str) -> Iterator[Callable[..., Agent]]:
    ident = make_identity(tmp_path, mosquitto, topic_prefix)
    agents: list[Agent] = []

    def make(**over: Any) -> Agent:
        a = Agent(load_settings(write_config(tmp_path, **over)), ident)
        a.start()
        assert a.wait_connected(10)
        agents.append(a)
        return a

    yield make
    for a in agents:
        if not a._stop.is_set():
            a.stop()


def test_online_then_clean_offline(cloud: Cloud, agent_factory: Callable[..., Agent]) -> None:
    agent = agent_factory()
    topic = cloud.topics.status(DEVICE)
    wait_for(lambda: [decode_status(p).state for p in cloud.on(topic)] == ["online"], "online status")
    agent.stop()
    last = decode_status(wait_for(lambda: cloud.on(topic)[1:], "offline status")[-1])
    assert (last.state, last.reason) == ("offline", "clean")


def test_last_will_says_lost_when_the_agent_is_killed(cloud: Cloud, tmp_path: Path, mosquitto: Any) -> None:
    make_identity(tmp_path, mosquitto, cloud.topics.prefix)
    proc = subprocess.Popen([IOTCTL, "agent", "run", "--config", str(write_config(tmp_path))])
    topic = cloud.topics.status(DEVICE)
    try:
        wait_for(lambda: cloud.on(topic), "online status")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = decode_status(wait_for(lambda: cloud.on(topic)[1:], "last will")[-1])
    assert (last.state, last.reason) == ("offline", "lost")


def test_receipts_delete_and_missing_receipts_resend_identical_bytes(
    cloud: Cloud, agent_factory: Callable[..., Agent]
) -> None:
    agent = agent_factory(receipt_timeout_s=0.5)
    tele = cloud.topics.telemetry(DEVICE)
    first = wait_for(lambda: cloud.on(tele), "a batch")[0]
    # no receipt: the same bytes come again after the timeout
    wait_for(lambda: cloud.on(tele).count(first) >= 2, "the resend of the first batch")
    pub = agent.identity.key.public_key()
    from cryptography.hazmat.primitives import serialization

    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    seen = {p: 0 for p in cloud.on(tele)}  # one snapshot: more batches may arrive meanwhile, unreceipted
    batches = {(b := open_batch(p, topic_device=DEVICE, public_key=raw)).seq: len(b.readings) for p in seen}
    cloud.publish(cloud.topics.receipts(DEVICE), encode(Receipt(stored=tuple(sorted(batches)))))
    st = wait_for(lambda: (s := agent.pipeline.buffer.stats()).stored > 0 and s, "receipt applied")
    assert st.batches <= agent.settings.max_inflight_batches
    assert st.stored == sum(batches.values())
    health = decode_health(wait_for(lambda: cloud.on(cloud.topics.health(DEVICE)), "health")[-1])
    assert health.firmware.startswith("edu-agent/") and health.produced >= health.buffer_depth


def _doc(version: int, key: Any = CLOUD_KEY, device: str = DEVICE, **settings: Any) -> bytes:
    return seal_config(ConfigDocument(device, version, int(time.time() * 1000), settings), key)


def test_config_signed_unsigned_wrong_key_older(cloud: Cloud, agent_factory: Callable[..., Agent]) -> None:
    agent = agent_factory(sampling_interval_s=5.0)
    desired, reported = cloud.topics.config_desired(DEVICE), cloud.topics.config_reported(DEVICE)

    def reports(n: int) -> list[Any]:
        return [
            decode_config_report(p)
            for p in wait_for(lambda: len(cloud.on(reported)) >= n and cloud.on(reported), f"{n} config reports")
        ]

    # signed, newer: applied without a restart; the next sample follows the new interval
    produced = agent.pipeline.buffer.counters["produced"]
    cloud.publish(desired, _doc(2, sampling_interval_s=0.1, calibration_offsets={"temperature": 1.5}), retain=True)
    r = reports(1)[-1]
    assert (r.version, r.status, r.error) == (2, "applied", None)
    assert agent.pipeline.runtime.sampling_interval_s == 0.1
    wait_for(lambda: agent.pipeline.buffer.counters["produced"] >= produced + 5, "faster sampling", timeout=3)

    # unsigned (plain JSON), wrongly signed, older, invalid setting: refused and reported
    cloud.publish(desired, encode(ConfigDocument(DEVICE, 3, 0, {"sampling_interval_s": 9})), retain=True)
    cloud.publish(desired, _doc(4, key=generate_private_key(), sampling_interval_s=9), retain=True)
    cloud.publish(desired, _doc(1, sampling_interval_s=9), retain=True)
    cloud.publish(desired, _doc(5, sampling_interval_s=-1), retain=True)
    cloud.publish(desired, _doc(6, device="someone-else", sampling_interval_s=9), retain=True)
    rs = reports(6)[1:]
    assert [(r.version, r.status) for r in rs] == [
        (0, "rejected"),
        (4, "rejected"),
        (1, "rejected"),
        (5, "rejected"),
        (6, "rejected"),
    ]
    assert "bad_signature" in (rs[1].error or "") and "older" in (rs[2].error or "")
    assert "sampling_interval_s" in (rs[3].error or "") and "device_mismatch" in (rs[4].error or "")
    assert agent.pipeline.runtime.sampling_interval_s == 0.1 and agent.pipeline.runtime.config_version == 2

    # the applied config persists: a restarted agent starts with version 2 and the offsets
    cloud.publish(desired, _doc(2, sampling_interval_s=0.1, calibration_offsets={"temperature": 1.5}), retain=True)
    agent.stop()
    again = agent_factory(sampling_interval_s=5.0)
    assert again.pipeline.runtime.config_version == 2
    assert again.pipeline.runtime.calibration_offsets == {"temperature": 1.5}
    # The retained version-2 document arrives again on subscribe, before anything published after it:
    # once version 7's report is in, a report for version 2 would be too.
    cloud.publish(desired, _doc(7, sampling_interval_s=5.0), retain=True)
    last = reports(7)
    assert len(cloud.on(reported)) == 7 and (last[-1].version, last[-1].status) == (7, "applied")
