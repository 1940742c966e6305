"""A hypothesis state machine drives one device through arbitrary sequences of valid, partly
invalid, invalid, replayed, resent, forged, oversized and re-keyed batches, through the real bridge,
Mosquitto, PostgreSQL and InfluxDB. At the end of each run: storage holds exactly the readings the
receipts said were stored, the ledger balances (with the device's own counters, as its health would
report them), and the bridge is still ready.

Each step waits for the bridge to have handled its message (its receipt, or its acknowledgement when
none is due), so a receipt is attributed to the batch that caused it. Bounded: ``SOAK_SCALE`` (via
``iot_testing.soak_scale``) multiplies the number of runs.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlmodel import Session

from broker_bridge import Bridge, BridgeSettings, compute_ledger
from broker_bridge.testing import Publisher, ReceiptCollector, wait_for
from cloud_core.core.db import create_all, make_engine, session_scope
from cloud_core.models import Device
from cloud_core.tsdb import open_tsdb
from iot_protocol import Topics, generate_private_key, jws, public_key_b64, public_key_raw
from iot_protocol.jws import b64url_encode
from iot_testing.servers import soak_scale

pytestmark = pytest.mark.integration

LIMITS = {"max_queued_messages": 1_000_000, "max_inflight_messages": 1000}
_ids = itertools.count()


def signed(payload: bytes, key: Ed25519PrivateKey, kid: str) -> bytes:
    header = orjson.dumps({"alg": "EdDSA", "kid": kid, "typ": "edu.batch.v1"})
    signing_input = b64url_encode(header) + b"." + b64url_encode(payload)
    return signing_input + b"." + b64url_encode(key.sign(signing_input))


@dataclass
class World:
    """What every run shares: one broker, one bridge, one database, one store."""

    bridge: Bridge
    topics: Topics
    engine: Any
    store: Any
    pub: Publisher
    rc: ReceiptCollector


@dataclass
class Sent:
    """A batch the device itself sealed: its token, its readings' ts, and which are invalid."""

    seq: int
    token: bytes
    ts: list[int]
    bad: set[int] = field(default_factory=set)  # indexes the cloud must reject


@pytest.fixture
def world(mosquitto_factory: Any, pg_url: str, influx_url: str, topic_prefix: str) -> Iterator[World]:
    broker = mosquitto_factory(**LIMITS)
    engine = make_engine(pg_url)
    create_all(engine)
    s = BridgeSettings(
        mqtt_url=broker.url,
        db_url=pg_url,
        tsdb_url=influx_url,
        cache_url="memory://",
        topic_prefix=topic_prefix,
        client_id=f"bridge-{topic_prefix}",
        batch_max_delay_s=0.01,
        receipt_interval_s=0.02,
        effects_interval_s=0.1,
        metrics_port=0,
        rate_limit_msgs_per_s=0,
        key_cache_ttl_s=3600,
    )
    store = open_tsdb(influx_url)
    with Bridge(s) as bridge:
        bridge.wait_ready()
        rc = ReceiptCollector(broker.host, broker.port, Topics(topic_prefix))
        with Publisher(broker.host, broker.port) as pub:
            yield World(bridge, Topics(topic_prefix), engine, store, pub, rc)
        rc.close()
    store.close()
    engine.dispose()


class DeviceMachine(RuleBasedStateMachine):
    world: World

    @initialize()
    def enroll(self) -> None:
        self.device = f"sm{next(_ids)}-{uuid.uuid4().hex[:6]}"
        self.key = generate_private_key()
        with session_scope(self.world.engine) as s:
            s.add(Device(id=self.device, status="active", public_key=public_key_b64(self.key), location="lab"))
        self.seq = 0  # the last seq sealed under the current key
        self.ts = int(time.time() * 1000) - 3_600_000
        self.sent: dict[int, Sent] = {}  # this key epoch's batches, by seq
        self.stored_ts: set[int] = set()  # what the receipts said was stored (every epoch)
        self.counters = {"produced": 0, "stored": 0, "rejected": 0}  # this epoch's, as the device keeps them
        self.receipts_seen = 0
        self.received = self.world.bridge.metrics.messages_received._value.get()
        self.oversized: bytes | None = None

    # ---- helpers ---------------------------------------------------------------------------------
    def _new_receipts(self) -> list[Any]:
        mine = [r for _, d, r in list(self.world.rc.receipts) if d == self.device]
        return mine[self.receipts_seen :]

    def _send(self, token: bytes) -> None:
        self.world.pub.publish(self.world.topics.telemetry(self.device), token)
        self.received += 1
        m = self.world.bridge

        def handled() -> bool:
            return m.metrics.messages_received._value.get() >= self.received and m.ingest.backlog == 0

        wait_for(handled, 20, what="the bridge handled the message")

    def _answer(self, seq: int) -> Any:
        """Wait for the receipt naming ``seq``; returns it."""

        def named() -> Any:
            for r in self._new_receipts():
                if seq in r.stored or any(x.seq == seq for x in r.rejected):
                    return r
            return None

        receipt = wait_for(named, 20, what=f"a receipt naming seq {seq}")
        self.receipts_seen = len([r for _, d, r in list(self.world.rc.receipts) if d == self.device])
        return receipt

    def _apply(self, b: Sent, receipt: Any) -> None:
        """What the device does with its receipt, and what it tells us about storage."""
        rejected = {x.index for x in receipt.rejected_readings(b.seq)}
        if b.seq in receipt.stored:
            assert rejected == b.bad, (b.seq, rejected, b.bad)
            self.stored_ts |= {t for i, t in enumerate(b.ts) if i not in rejected}
            self.counters["stored"] += len(b.ts) - len(rejected)
            self.counters["rejected"] += len(rejected)
        else:
            assert len(b.bad) == len(b.ts), f"seq {b.seq} finally rejected though some readings were valid"
            self.counters["rejected"] += len(b.ts)

    def _seal(self, readings: list[dict[str, Any]], bad: set[int], **extra: Any) -> Sent:
        self.seq += 1
        payload = {
            "v": 1,
            "device_id": self.device,
            "batch_id": uuid.uuid4().hex,
            "seq": self.seq,
            "sent_at": self.ts,
            "readings": readings,
            **extra,
        }
        b = Sent(self.seq, signed(orjson.dumps(payload), self.key, self.device), [r["ts"] for r in readings], bad)
        self.sent[b.seq] = b
        self.counters["produced"] += len(readings)
        return b

    def _reading(self, kind: str = "ok") -> dict[str, Any]:
        self.ts += 1000
        if kind == "future":
            return {"ts": self.ts + 86_400_000, "sensor_type": "env", "values": {"temperature": 20.0}}
        if kind == "range":
            return {"ts": self.ts, "sensor_type": "env", "values": {"humidity": 150.0}}
        if kind == "name":
            return {"ts": self.ts, "sensor_type": "env", "values": {"a=b": 1.0}}
        if kind == "shape":
            return {"ts": -1, "sensor_type": "env", "values": {"temperature": 20.0}}
        return {"ts": self.ts, "sensor_type": "env", "values": {"temperature": 20.0 + self.ts % 7}}

    # ---- rules -----------------------------------------------------------------------------------
    @rule(
        kinds=st.lists(st.sampled_from(["ok", "ok", "ok", "future", "range", "name", "shape"]), min_size=1, max_size=6)
    )
    def send_batch(self, kinds: list[str]) -> None:
        """A batch of valid and invalid readings (all valid, some, or none)."""
        b = self._seal([self._reading(k) for k in kinds], {i for i, k in enumerate(kinds) if k != "ok"})
        self._send(b.token)
        self._apply(b, self._answer(b.seq))

    @rule()
    def send_invalid_batch(self) -> None:
        """Signed, but not a valid batch (no readings): finally rejected as a whole."""
        b = self._seal([], set())
        b.token = signed(
            orjson.dumps({"v": 1, "device_id": self.device, "seq": b.seq, "readings": []}), self.key, self.device
        )
        self._send(b.token)
        receipt = self._answer(b.seq)
        assert [(x.seq, x.reason) for x in receipt.rejected if x.seq == b.seq] == [(b.seq, "bad_schema")]

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def resend(self, data: st.DataObject) -> None:
        """A byte-identical resend: stored once, answered as the first time (nothing changes)."""
        b = self.sent[data.draw(st.sampled_from(sorted(self.sent)))]
        self._send(b.token)
        receipt = self._answer(b.seq)
        rejected = {x.index for x in receipt.rejected_readings(b.seq)}
        if b.seq in receipt.stored:
            assert rejected == b.bad
        else:
            assert len(b.bad) == len(b.ts)

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """Another payload under a used seq, signed with the device's key: replayed_seq, nothing stored."""
        seq = data.draw(st.sampled_from(sorted(self.sent)))
        self.ts += 1000
        payload = {
            "v": 1,
            "device_id": self.device,
            "batch_id": uuid.uuid4().hex,
            "seq": seq,
            "sent_at": self.ts,
            "readings": [{"ts": self.ts, "sensor_type": "env", "values": {"temperature": 1.0}}],
        }
        self._send(signed(orjson.dumps(payload), self.key, self.device))
        receipt = self._answer(seq)
        assert any(x.seq == seq and x.reason == "replayed_seq" for x in receipt.rejected)

    @rule()
    def forged(self) -> None:
        """Signed with a key the cloud does not know: dead-lettered, never answered."""
        self.ts += 1000
        payload = {"v": 1, "device_id": self.device, "batch_id": "f", "seq": 999, "sent_at": self.ts,
                   "readings": [{"ts": self.ts, "sensor_type": "env", "values": {"temperature": 1.0}}]}  # fmt: skip
        self._send(signed(orjson.dumps(payload), generate_private_key(), self.device))

    @rule()
    def oversized(self) -> None:
        """Validly signed but over the 256 KiB message limit: refused before verification, unanswered."""
        if self.oversized is None:
            readings = [
                {"ts": self.ts + i, "sensor_type": "env", "values": {f"f{j:02d}": float(j) for j in range(40)}}
                for i in range(1000)
            ]
            payload = {"v": 1, "device_id": self.device, "batch_id": "o", "seq": 998, "sent_at": self.ts,
                       "readings": readings}  # fmt: skip
            self.oversized = signed(orjson.dumps(payload), self.key, self.device)
            assert len(self.oversized) > jws.MAX_TOKEN_BYTES
        self._send(self.oversized)

    @rule()
    def rekey(self) -> None:
        """The device is rotated and re-enrolls with a new key and a fresh buffer: seqs restart at 1."""
        old_tokens = [b.token for b in self.sent.values()]
        self.key = generate_private_key()
        with session_scope(self.world.engine) as s:
            d = s.get(Device, self.device)
            assert d is not None
            d.public_key = public_key_b64(self.key)
            s.add(d)
        self.world.pub.publish(
            self.world.topics.registry_events(),
            orjson.dumps({"v": 1, "device_id": self.device, "event": "rotated"}),
        )
        raw = public_key_raw(self.key)
        directory = self.world.bridge.directory
        wait_for(lambda: (k := directory.lookup(self.device)) is not None and k.public_key == raw, 10, what="new key")
        self.seq, self.sent = 0, {}
        self.counters = {"produced": 0, "stored": 0, "rejected": 0}
        for token in old_tokens[:2]:  # a batch sealed with the old key is no longer verifiable
            self._send(token)

    # ---- at every step and at the end --------------------------------------------------------------
    @invariant()
    def bridge_ready(self) -> None:
        assert self.world.bridge.ready() == (True, "")

    def teardown(self) -> None:
        if not hasattr(self, "device"):
            return
        world = self.world
        end = int(time.time() * 1000) + 2 * 86_400_000
        rows = world.store.query(device_id=self.device, fields=None, start_ms=0, end_ms=end)
        assert {r.ts_ms for r in rows} == self.stored_ts
        assert world.store.count(device_id=self.device) == len(self.stored_ts)
        with Session(world.engine) as s:
            d = s.get(Device, self.device)
            assert d is not None
            d.health = {**self.counters, "buffer_depth": 0, "dropped": 0, "last_seq": self.seq}
            s.add(d)
            s.commit()
            books = compute_ledger(s, self.device)
        assert books.balanced, books
        assert (books.stored, books.rejected) == (self.counters["stored"], self.counters["rejected"])


def test_one_device_through_arbitrary_batches_keeps_the_books_exact(world: World) -> None:
    machine = type("Machine", (DeviceMachine,), {"world": world})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=int(6 * soak_scale()),
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
