"""The agent's side of the receipt contract, with the real agent, the real bridge and a real Mosquitto:
per-reading receipts counted (stored vs rejected readings), a batch the cloud never verifies
quarantined after bounded resends and counted in health (while an outage never quarantines), and
batches split so none exceeds the message limit (no broker disconnect, everything stored). Plus the
same rules on the pure pipeline, where they are quick to pin down exactly."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker_bridge import Bridge, BridgeSettings
from broker_bridge.testing import wait_for
from cloud_core.core.db import create_all, make_engine, session_scope
from cloud_core.models import Device
from cloud_core.tsdb import open_tsdb
from edge_agent.agent import Agent, Pipeline
from edge_agent.buffer import Buffer
from edge_agent.config import load_settings
from edge_agent.identity import Identity, write_identity
from iot_protocol import (
    MAX_TOKEN_BYTES,
    Reading,
    ReadingOutcome,
    ReadingRejection,
    Receipt,
    Rejection,
    Retry,
    Topics,
    Unread,
    decode_health,
    encode,
    generate_private_key,
    public_key_b64,
)

pytestmark = pytest.mark.integration

LIMITS = {"max_queued_messages": 1_000_000, "max_inflight_messages": 1000}
DEVICE = "agent-contract-1"


def now_ms() -> int:
    return int(time.time() * 1000)


def big_reading(ts: int) -> Reading:
    """The largest reading the contract allows, about 5 KiB of JSON: 64 fields of 64-character names."""
    return Reading(ts, "wide", {f"f{i:02d}_{'x' * 60}": 1000.0 + i / 7 for i in range(64)}, 1.0)


# ---- the pure pipeline ------------------------------------------------------------------------------


def _pipeline(tmp_path: Path, **kw: Any) -> Pipeline:
    buf = Buffer(tmp_path / "buffer.db", synchronous="normal")
    return Pipeline(device_id=DEVICE, key=generate_private_key(), buffer=buf, sensors=[], **kw)


def _fill(p: Pipeline, n: int, t0: int) -> None:
    p.buffer.add([Reading(t0 + i, "env", {"temperature": 20.0}) for i in range(n)])


def test_per_reading_receipts_retries_and_unread_are_applied(tmp_path: Path) -> None:
    import hashlib

    p = _pipeline(tmp_path, receipt_timeout_s=10.0)
    p.runtime = p.runtime.__class__(batch_max_readings=4)
    _fill(p, 16, now_ms())
    batches = p.plan(0.0)
    assert [b.seq for b in batches] == [1, 2, 3, 4]
    for b in batches:
        p.mark_sent(b.seq, 0.0)
    unread = hashlib.sha256(batches[3].token).hexdigest()
    receipt = Receipt(
        stored=(1,),
        rejected=(Rejection(2, "bad_schema"),),
        readings=(ReadingOutcome(1, (ReadingRejection(0, "out_of_range"), ReadingRejection(3, "bad_name"))),),
        retry=(Retry(3, "rate_limited", 500),),
        unread=(Unread(unread, "bad_json"),),
    )
    assert p.on_receipt(encode(receipt), now_mono=100.0) == 12
    c = p.buffer.counters
    assert (c["stored"], c["rejected"]) == (2, 2 + 4 + 4)
    assert p.inflight == 1
    assert [b.seq for b in p.plan(100.2, fresh=False)] == []  # the retry waits its 500 ms
    assert [b.seq for b in p.plan(100.5, fresh=False)] == [3]


def test_bounded_resends_quarantine_only_while_the_cloud_answers_others(tmp_path: Path) -> None:
    p = _pipeline(tmp_path, receipt_timeout_s=1.0, max_unanswered_sends=3, max_inflight=2)
    p.runtime = p.runtime.__class__(batch_max_readings=2)
    _fill(p, 2, now_ms())
    (stuck,) = p.plan(0.0)
    p.mark_sent(stuck.seq, 0.0)
    # an outage: nothing is receipted, however often the batch is resent
    for t in range(1, 20):
        assert [b.seq for b in p.plan(float(t), fresh=False)] == [stuck.seq]
        p.mark_sent(stuck.seq, float(t))
    assert p.buffer.counters["quarantined"] == 0
    # the cloud answers the batches sent after it, never this one: quarantined after 3 such sends
    for t in range(20, 30):
        _fill(p, 2, now_ms() + 1000 * t)
        for b in p.plan(float(t) + 0.5, fresh=True):
            p.mark_sent(b.seq, float(t) + 0.5)
            if b.seq != stuck.seq:
                p.on_receipt(encode(Receipt(stored=(b.seq,))), now_mono=float(t) + 0.6)
        if p.buffer.counters["quarantined"]:
            break
    assert p.buffer.counters["quarantined"] == 2
    assert [(seq, reason, n) for seq, reason, n, _ in p.buffer.quarantined()] == [(stuck.seq, "no_receipt", 2)]
    assert p.health(1.0).quarantined == 2 and p.buffer.depth == 0
    assert stuck.seq not in {b.seq for b in p.plan(1000.0, fresh=False)}


def test_batches_are_split_to_fit_the_message_limit(tmp_path: Path) -> None:
    p = _pipeline(tmp_path)
    p.runtime = p.runtime.__class__(batch_max_readings=1000)
    t0 = now_ms()
    p.buffer.add([big_reading(t0 + i) for i in range(400)])
    huge = Reading(t0 + 400, "wide", {f"f{i:05d}": 1.0 for i in range(30_000)})  # beyond any message
    p.buffer.add([huge, big_reading(t0 + 401)])
    sizes, n = [], 0
    while (b := p.buffer.next_batch(DEVICE, p.key, max_readings=1000, now_ms=t0)) is not None:
        sizes.append(len(b.token))
        n += b.n
    assert n == 401 and len(sizes) > 1
    assert max(sizes) <= MAX_TOKEN_BYTES
    assert sum(s > MAX_TOKEN_BYTES * 0.9 for s in sizes) == len(sizes) - 2  # full, but before the huge one and last
    assert p.buffer.counters["quarantined"] == 1
    assert [(seq, reason) for seq, reason, _, _ in p.buffer.quarantined()] == [(None, "too_large")]


# ---- the real agent, bridge and broker -----------------------------------------------------------


@dataclass
class Rig:
    broker: Any
    tmp: Path
    topics: Topics
    identity: Identity
    bridge_settings: BridgeSettings
    tsdb_url: str

    def settings_file(self, **over: Any) -> Path:
        fields = {
            "sampling_interval_s": 0.2,
            "transmission_interval_s": 0.1,
            "batch_max_readings": 5,
            "receipt_timeout_s": 0.5,
            "heartbeat_interval_s": 1,
            "backoff_initial_s": 0.1,
            "backoff_max_s": 0.5,
            "buffer_synchronous": "normal",
            **over,
        }
        body = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in fields.items())
        path = self.tmp / "agent.toml"
        path.write_text(
            f'identity_dir = "identity"\nbuffer_path = "buffer.db"\n{body}[[sensors]]\ntype = "simulated"\n'
        )
        return path

    def buffer(self) -> Buffer:
        return Buffer(self.tmp / "buffer.db", synchronous="normal")


@pytest.fixture
def rig(mosquitto_factory: Any, topic_prefix: str, tmp_path: Path) -> Iterator[Rig]:
    broker = mosquitto_factory(**LIMITS)
    key = generate_private_key()
    identity = write_identity(
        tmp_path / "identity",
        key,
        {
            "device_id": DEVICE,
            "mqtt_url": broker.url,
            "topic_prefix": topic_prefix,
            "cloud_public_key": public_key_b64(generate_private_key()),
        },
    )
    db_url = f"sqlite:///{tmp_path}/meta.db"
    engine = make_engine(db_url)
    create_all(engine)
    with session_scope(engine) as s:
        s.add(Device(id=DEVICE, status="active", public_key=public_key_b64(key), location="lab", key_version=1))
    engine.dispose()
    settings = BridgeSettings(
        mqtt_url=broker.url,
        db_url=db_url,
        tsdb_url=f"sqlite:///{tmp_path}/readings.db",
        topic_prefix=topic_prefix,
        client_id=f"bridge-{topic_prefix}",
        batch_max_delay_s=0.02,
        effects_interval_s=0.1,
        retry_initial_s=0.1,
        retry_max_s=0.5,
        metrics_port=0,
        rate_limit_msgs_per_s=0,
    )
    yield Rig(broker, tmp_path, Topics(topic_prefix), identity, settings, settings.tsdb_url)


class Healths:
    def __init__(self, rig: Rig) -> None:
        self.items: list[bytes] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_message = lambda _c, _u, m: self.items.append(bytes(m.payload))
        ok = threading.Event()
        self.c.on_subscribe = lambda *_: ok.set()
        self.c.connect(rig.broker.host, rig.broker.port)
        self.c.loop_start()
        self.c.subscribe(rig.topics.health(DEVICE), qos=1)
        assert ok.wait(10)

    def last(self) -> Any:
        return decode_health(self.items[-1]) if self.items else None

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _plant_unverifiable_batch(rig: Rig, other: Ed25519PrivateKey) -> int:
    """A sealed batch in the agent's buffer signed with a key the cloud does not know (as a batch
    sealed before a key change would be): the cloud can never verify it."""
    buf = rig.buffer()
    buf.add([Reading(now_ms() - 60_000 + i, "environment", {"temperature": 20.0}) for i in range(3)])
    b = buf.next_batch(DEVICE, other, max_readings=3, now_ms=now_ms())
    buf.close()
    assert b is not None
    return b.seq


def test_the_agent_quarantines_what_the_cloud_never_verifies_and_says_so_in_health(rig: Rig) -> None:
    seq = _plant_unverifiable_batch(rig, generate_private_key())
    healths = Healths(rig)
    with Bridge(rig.bridge_settings) as bridge:
        bridge.wait_ready()
        agent = Agent(load_settings(rig.settings_file(max_unanswered_sends=3)), rig.identity)
        agent.start()
        try:
            wait_for(lambda: agent.pipeline.buffer.counters["quarantined"] == 3, 30, what="the batch quarantined")
            assert [s for s, *_ in agent.pipeline.buffer.quarantined()] == [seq]
            wait_for(lambda: (h := healths.last()) is not None and h.quarantined == 3, 10, what="health says 3")
            rejected = bridge.metrics.rejected.labels("bad_signature")._value.get()
            assert 3 <= rejected <= 4  # sent 3 times unanswered (a 4th may be in flight)
            wait_for(lambda: agent.pipeline.buffer.counters["stored"] >= 10, 20, what="the rest stored")
        finally:
            agent.stop()
    healths.close()


def test_an_outage_never_quarantines(rig: Rig) -> None:
    agent = Agent(load_settings(rig.settings_file(max_unanswered_sends=2)), rig.identity)
    agent.start()  # no bridge: nothing is receipted, batches are resent every 0.5 s
    try:
        assert agent.wait_connected(10)
        wait_for(lambda: agent.pipeline.buffer.counters["last_seq"] >= 3, 10, what="batches sealed")
        time.sleep(3.0)  # six receipt timeouts without any receipt
        assert agent.pipeline.buffer.counters["quarantined"] == 0
        with Bridge(rig.bridge_settings) as bridge:
            bridge.wait_ready()
            produced = agent.pipeline.buffer.counters["produced"]
            wait_for(lambda: agent.pipeline.buffer.counters["stored"] >= produced, 30, what="the backlog stored")
        assert agent.pipeline.buffer.counters["quarantined"] == 0
    finally:
        agent.stop()


def test_the_agent_never_sends_a_message_over_the_limit(rig: Rig) -> None:
    """400 of the largest readings the contract allows (2 MB of JSON) buffered before the agent
    connects, batch_max_readings 1000: sealed as one batch they would exceed the broker's 1 MiB
    packet limit, which drops the connection (and the persistent session resends it on every
    reconnect). Split to fit 256 KiB, every reading is stored and no connection is lost."""
    buf = rig.buffer()
    t0 = now_ms() - 600_000
    buf.add([big_reading(t0 + i) for i in range(400)])
    buf.close()
    with Bridge(rig.bridge_settings) as bridge:
        bridge.wait_ready()
        agent = Agent(load_settings(rig.settings_file(batch_max_readings=1000, sampling_interval_s=60.0)), rig.identity)
        agent.start()
        try:
            wait_for(lambda: agent.pipeline.buffer.counters["stored"] >= 400, 60, what="400 wide readings stored")
            assert agent.connects == 1
            assert bridge.metrics.connection_losses._value.get() == 0
            assert bridge.metrics.rejected.labels("too_large")._value.get() == 0
        finally:
            agent.stop()
    store = open_tsdb(rig.tsdb_url)
    assert store.count(device_id=DEVICE, start_ms=t0, end_ms=t0 + 400) == 400
    store.close()


def test_rejected_readings_are_counted_as_rejected_by_the_agent(rig: Rig) -> None:
    buf = rig.buffer()
    t0 = now_ms() - 600_000
    buf.add(
        [
            Reading(t0, "environment", {"temperature": 20.0}),
            Reading(t0 + 1, "environment", {"humidity": 150.0}),  # out_of_range
            Reading(t0 + 2, "env ironment", {"temperature": 20.0}),  # bad_name
            Reading(t0 + 3, "environment", {"temperature": 21.0}),
        ]
    )
    buf.close()
    with Bridge(rig.bridge_settings) as bridge:
        bridge.wait_ready()
        agent = Agent(load_settings(rig.settings_file(sampling_interval_s=60.0)), rig.identity)
        agent.start()
        try:
            wait_for(lambda: agent.pipeline.buffer.depth == 0, 20, what="everything receipted")
            c = agent.pipeline.buffer.counters
            assert (c["stored"], c["rejected"]) == (c["produced"] - 2, 2)
            assert bridge.metrics.readings_stored._value.get() == c["produced"] - 2
        finally:
            agent.stop()
