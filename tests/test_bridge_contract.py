"""The wire contract against any implementer, through the real bridge and a real Mosquitto: every
verified batch is answered (per reading), nothing a device signs can wedge the bridge's bookkeeping,
the limits and the name rule hold on either store, and the broker's packet limit is visible.

Broker limits for the bridge as in test_bridge_ingest.py (max_queued_messages 1,000,000,
max_inflight_messages 1000).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from broker_bridge import Bridge, BridgeSettings
from broker_bridge.testing import Publisher, ReceiptCollector, make_batch, register_devices, sealed, wait_for
from cloud_core.core.db import make_engine, session_scope
from cloud_core.models import BatchLedger, Device, RejectedMessage
from cloud_core.tsdb import open_tsdb
from cloud_core.tsdb.base import TimeSeriesStore
from iot_protocol import (
    Batch,
    Reading,
    Status,
    Topics,
    encode,
    jws,
    private_key_from_seed,
    public_key_b64,
    seal_batch,
)
from iot_protocol.jws import b64url_encode

pytestmark = pytest.mark.integration

LIMITS = {"max_queued_messages": 1_000_000, "max_inflight_messages": 1000}
NOW = int(time.time() * 1000)


@dataclass
class Env:
    broker: Any
    settings: BridgeSettings
    topics: Topics
    engine: Engine
    store: TimeSeriesStore
    keys: dict[str, Ed25519PrivateKey]

    def publish(self, device_id: str, *payloads: bytes) -> None:
        with Publisher(self.broker.host, self.broker.port) as pub:
            for payload in payloads:
                pub.publish(self.topics.telemetry(device_id), payload)
            pub.wait_acked()

    def receipts(self) -> ReceiptCollector:
        return ReceiptCollector(self.broker.host, self.broker.port, self.topics)


def fast(**kw: Any) -> dict[str, Any]:
    return {
        "batch_max_delay_s": 0.02,
        "effects_interval_s": 0.1,
        "retry_initial_s": 0.1,
        "retry_max_s": 0.5,
        "metrics_port": 0,
        **kw,
    }


def make_env(broker: Any, db_url: str, tsdb_url: str, prefix: str, **kw: Any) -> Env:
    engine = make_engine(db_url)
    keys = register_devices(engine, [f"dev{i}" for i in range(4)], location="room1")
    settings = BridgeSettings(
        mqtt_url=broker.url,
        db_url=db_url,
        tsdb_url=tsdb_url,
        cache_url="memory://",
        topic_prefix=prefix,
        client_id=f"bridge-{prefix}",
        **fast(**kw),
    )
    return Env(broker, settings, Topics(prefix), engine, open_tsdb(tsdb_url), keys)


@pytest.fixture
def env(mosquitto_factory: Any, pg_url: str, influx_url: str, topic_prefix: str) -> Iterator[Env]:
    e = make_env(mosquitto_factory(**LIMITS), pg_url, influx_url, topic_prefix)
    yield e
    e.store.close()
    e.engine.dispose()


@pytest.fixture(params=["influxdb", "embedded"])
def any_store_env(
    request: pytest.FixtureRequest, mosquitto_factory: Any, pg_url: str, topic_prefix: str, tmp_path: Path
) -> Iterator[Env]:
    """The same bridge over either time-series store: the outcome must not depend on it."""
    tsdb_url = request.getfixturevalue("influx_url") if request.param == "influxdb" else f"sqlite:///{tmp_path}/r.db"
    e = make_env(mosquitto_factory(**LIMITS), pg_url, tsdb_url, topic_prefix)
    yield e
    e.store.close()
    e.engine.dispose()


def signed(body: object, key: Ed25519PrivateKey, kid: str, *, alg: str = "EdDSA") -> bytes:
    """A telemetry message signed over exactly ``body`` (bytes, or an object written as JSON)."""
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    header = orjson.dumps({"alg": alg, "kid": kid, "typ": "edu.batch.v1"})
    signing_input = b64url_encode(header) + b"." + b64url_encode(payload)
    return signing_input + b"." + b64url_encode(key.sign(signing_input))


def batch_obj(device_id: str, seq: int, readings: list[object]) -> dict[str, object]:
    return {"v": 1, "device_id": device_id, "batch_id": f"b{seq}", "seq": seq, "sent_at": NOW, "readings": readings}


def reading(ts: int, **values: float) -> dict[str, object]:
    return {"ts": ts, "sensor_type": "bme280", "values": values or {"temperature": 20.0}}


def dead_letters(engine: Engine) -> dict[str, int]:
    with Session(engine) as s:
        return dict(s.exec(select(RejectedMessage.reason, func.count()).group_by(RejectedMessage.reason)).all())


def ledger_rows(engine: Engine, device_id: str) -> dict[int, tuple[int, int, str | None]]:
    with Session(engine) as s:
        rows = s.exec(
            select(BatchLedger.seq, BatchLedger.readings, BatchLedger.rejected_readings, BatchLedger.reason).where(
                BatchLedger.device_id == device_id
            )
        ).all()
    return {seq: (n, rej, reason) for seq, n, rej, reason in rows}


def ready(bridge: Bridge) -> tuple[int, dict[str, Any]]:
    assert bridge.http is not None
    r = httpx.get(f"http://127.0.0.1:{bridge.http.port}/ready", timeout=10)
    return r.status_code, r.json()


# ---- bug 1: a validly signed seq >= 2**63 wedged the side effects ---------------------------------


def test_a_seq_beyond_the_contract_is_answered_and_wedges_nothing(mosquitto_factory, topic_prefix, tmp_path) -> None:
    """On the embedded metadata DB a seq of 2**63 was stored and receipted, then SQLite refused its
    ledger row ("Python int too large") and every later ledger row, dead letter and last_seen with it,
    forever, while /ready said 200; after a restart a changed payload at a seq receipted meanwhile was
    accepted. Now the contract bounds seq (0..2**31-1): the batch is refused as bad_schema and told
    (by its SHA-256: its seq cannot be read), the bookkeeping keeps flowing, and a receipted seq's
    ledger row is durable before its receipt, so replay protection survives a restart."""
    e = make_env(
        mosquitto_factory(**LIMITS), f"sqlite:///{tmp_path}/meta.db", f"sqlite:///{tmp_path}/r.db", topic_prefix
    )
    k = e.keys["dev0"]
    huge = [signed(batch_obj("dev0", seq, [reading(NOW - 5_000)]), k, "dev0") for seq in (2**63, 2**31)]
    first = sealed(make_batch("dev0", 7, 3, ts0=NOW - 60_000), k)
    rows_at_receipt: list[dict[int, Any] | Exception] = []

    def at_receipt(device_id: str) -> None:  # on the collector's network thread: an error must not end it
        if rc.stored(device_id):
            try:
                rows_at_receipt.append(ledger_rows(e.engine, "dev0"))
            except Exception as exc:  # shown by the assertion below
                rows_at_receipt.append(exc)

    with Bridge(e.settings) as bridge:
        bridge.wait_ready()
        rc = e.receipts()
        rc.on_receipt = at_receipt
        e.publish("dev0", *huge, first)
        wait_for(lambda: ("dev0", 7) in rc.stored(), 20, what="seq 7 receipted")
        expected_unread = {("dev0", hashlib.sha256(t).hexdigest(), "bad_schema") for t in huge}
        wait_for(lambda: rc.unread() == expected_unread, 20, what="both huge seqs answered by hash")
        # the receipt of seq 7 came only once its ledger row was written
        assert rows_at_receipt and isinstance(rows_at_receipt[0], dict), rows_at_receipt
        assert 7 in rows_at_receipt[0]
        wait_for(lambda: dead_letters(e.engine) == {"bad_schema": 2}, 20, what="two dead letters")
        with Session(e.engine) as s:
            wait_for(lambda: s.get(Device, "dev0", populate_existing=True).last_seen is not None, 20, what="last_seen")
        assert bridge.metrics.write_failures.labels("metadata")._value.get() == 0
        assert bridge.ready() == (True, "")
        assert e.store.count(device_id="dev0") == 3
        rc.close()
    changed = sealed(make_batch("dev0", 7, 3, ts0=NOW - 30_000), k)  # same seq, another payload
    with Bridge(e.settings) as bridge:
        bridge.wait_ready()
        rc = e.receipts()
        e.publish("dev0", changed)
        wait_for(lambda: ("dev0", 7, "replayed_seq") in rc.rejected(), 20, what="the changed payload refused")
        rc.close()
    assert e.store.count(device_id="dev0") == 3
    e.store.close()
    e.engine.dispose()


def test_rows_the_metadata_db_refuses_are_isolated_and_the_rest_flow(env: Env) -> None:
    """A ledger row, a dead letter and a last_seen the DB refuses for good (constraints and a trigger
    added here) are each set aside on their own, counted and dead-lettered where possible; every
    other row is written, every batch receipted, and the bridge stays ready."""
    with env.engine.begin() as conn:
        conn.execute(text("ALTER TABLE batch_ledger ADD CONSTRAINT t_no_13 CHECK (seq <> 13)"))
        conn.execute(text("ALTER TABLE rejected_messages ADD CONSTRAINT t_no_bad_json CHECK (reason <> 'bad_json')"))
        conn.execute(
            text(
                "CREATE FUNCTION t_refuse() RETURNS trigger AS $$ BEGIN "
                "IF NEW.id = 'dev3' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(text("CREATE TRIGGER t_refuse BEFORE UPDATE ON devices FOR EACH ROW EXECUTE FUNCTION t_refuse()"))
    k0, k1, k3 = env.keys["dev0"], env.keys["dev1"], env.keys["dev3"]
    with Bridge(env.settings) as bridge:
        bridge.wait_ready()
        rc = env.receipts()
        env.publish("dev0", *(sealed(make_batch("dev0", s, 2, ts0=NOW - 60_000), k0) for s in range(11, 16)))
        env.publish("dev1", signed(b"{oops", k1, "dev1"), signed(batch_obj("dev1", 4, []), k1, "dev1"))
        env.publish("dev3", sealed(make_batch("dev3", 1, 2, ts0=NOW - 60_000), k3))
        wait_for(lambda: rc.stored("dev0") == {("dev0", s) for s in range(11, 16)}, 20, what="every seq receipted")
        wait_for(lambda: ("dev3", 1) in rc.stored(), 20, what="dev3 receipted")
        wait_for(lambda: ("dev1", 4, "bad_schema") in rc.rejected(), 20, what="bad_schema receipted")
        wait_for(lambda: len(rc.unread()) == 1, 20, what="bad_json receipted by hash")
        wait_for(lambda: dead_letters(env.engine) == {"bad_schema": 1, "ledger_refused": 1}, 20, what="dead letters")
        m = bridge.metrics.sink_rows_refused
        wait_for(lambda: m.labels("last_seen")._value.get() == 1, 20, what="dev3's last_seen refused")
        assert m.labels("ledger")._value.get() == 1 and m.labels("deadletters")._value.get() == 1
        assert sorted(ledger_rows(env.engine, "dev0")) == [11, 12, 14, 15]
        with Session(env.engine) as s:
            wait_for(lambda: s.get(Device, "dev0", populate_existing=True).last_seen is not None, 20, what="dev0 seen")
        env.publish("dev0", sealed(make_batch("dev0", 16, 2, ts0=NOW - 60_000), k0))
        wait_for(lambda: ("dev0", 16) in rc.stored(), 20, what="later batches flow")
        assert 16 in ledger_rows(env.engine, "dev0")
        assert bridge.metrics.write_failures.labels("metadata")._value.get() == 0
        assert bridge.metrics.write_failures.labels("ledger")._value.get() == 0
        assert ready(bridge)[0] == 200
        assert env.store.count() == 6 * 2 + 2
        rc.close()


def test_a_sink_that_keeps_failing_turns_ready_red_and_shows_in_metrics(
    mosquitto_factory, influx_url, topic_prefix
) -> None:
    from iot_testing.servers import PostgresServer

    pg = PostgresServer()
    pg.start()
    try:
        e = make_env(mosquitto_factory(**LIMITS), pg.create_database("b"), influx_url, topic_prefix,
                     sink_unready_after_s=0.5, retry_max_s=0.3)  # fmt: skip
        with Bridge(e.settings) as bridge:
            bridge.wait_ready()
            assert ready(bridge) == (200, {"ready": True})
            pg.stop()
            e.publish("dev0", sealed(make_batch("dev0", 1, 2, ts0=NOW - 60_000), e.keys["dev0"]))
            wait_for(lambda: ready(bridge)[0] == 503, 20, what="/ready red")
            assert "failing" in ready(bridge)[1]["why"]
            assert bridge.metrics.sink_up.labels("ledger")._value.get() == 0
            assert bridge.metrics.sink_up.labels("metadata")._value.get() == 0
            pg.start()
            wait_for(lambda: ready(bridge)[0] == 200, 30, what="/ready green again")
            assert bridge.metrics.sink_up.labels("ledger")._value.get() == 1
        e.store.close()
        e.engine.dispose()
    finally:
        pg.close()


# ---- bug 2 ------------------------------------------------------------------------------------------


def test_mqtt_connected_gauge_follows_the_connection(env: Env) -> None:
    with Bridge(env.settings) as bridge:
        bridge.wait_ready()
        gauge = bridge.metrics.connected
        assert gauge._value.get() == 1
        assert b"bridge_mqtt_connected 1.0" in bridge.metrics.render()
        env.broker.stop()
        wait_for(lambda: gauge._value.get() == 0, 20, what="gauge 0 while the broker is down")
        env.broker.start()
        wait_for(lambda: gauge._value.get() == 1, 30, what="gauge 1 after reconnecting")


# ---- bug 4: duplicate timestamps --------------------------------------------------------------------


def test_a_repeated_timestamp_is_rejected_not_silently_overwritten(any_store_env: Env) -> None:
    """Storage keys a point on (device, sensor type, location, ts). Two readings with one ts in a batch
    kept one and counted both; a new seq reusing a stored ts overwrote it. Now the repeat is rejected
    as duplicate_timestamp (in the receipt, dead-lettered), the stored values stay, and the ledger
    counts exactly what is stored, also after a bridge restart (the store is asked)."""
    e = any_store_env
    k = e.keys["dev0"]
    t0 = NOW - 60_000
    b1 = batch_obj("dev0", 1, [reading(t0, temperature=20.0), reading(t0, temperature=25.0), reading(t0 + 1)])
    b2 = batch_obj("dev0", 2, [reading(t0, temperature=30.0), reading(t0 + 2)])
    b3 = batch_obj("dev0", 3, [reading(t0 + 1, temperature=31.0), reading(t0 + 3)])
    with Bridge(e.settings) as bridge:
        bridge.wait_ready()
        rc = e.receipts()
        e.publish("dev0", signed(b1, k, "dev0"))
        wait_for(lambda: ("dev0", 1) in rc.stored(), 20, what="seq 1")
        e.publish("dev0", signed(b2, k, "dev0"))
        wait_for(lambda: ("dev0", 2) in rc.stored(), 20, what="seq 2")
        assert rc.reading_rejections("dev0") == {
            ("dev0", 1, 1, "duplicate_timestamp"),
            ("dev0", 2, 0, "duplicate_timestamp"),
        }
        rc.close()
    with Bridge(e.settings) as bridge:  # a new replica knows nothing in memory: the store tells
        bridge.wait_ready()
        rc = e.receipts()
        e.publish("dev0", signed(b3, k, "dev0"))
        wait_for(lambda: ("dev0", 3) in rc.stored(), 20, what="seq 3")
        assert rc.reading_rejections("dev0") == {("dev0", 3, 0, "duplicate_timestamp")}
        rc.close()
    rows = ledger_rows(e.engine, "dev0")
    assert rows == {1: (2, 1, None), 2: (1, 1, None), 3: (1, 1, None)}
    assert e.store.count(device_id="dev0") == 4 == sum(n for n, _, _ in rows.values())
    stored = {r.ts_ms: r.values["temperature"] for r in e.store.query(device_id="dev0", fields=["temperature"],
                                                                       start_ms=t0, end_ms=t0 + 10)}  # fmt: skip
    assert stored == {t0: 20.0, t0 + 1: 20.0, t0 + 2: 20.0, t0 + 3: 20.0}
    with Session(e.engine) as s:
        dups = s.exec(
            select(RejectedMessage.seq, RejectedMessage.reading_index).where(
                RejectedMessage.reason == "duplicate_timestamp"
            )
        ).all()
    assert sorted(dups) == [(1, 1), (2, 0), (3, 0)]


# ---- gap 5: which rejections get a receipt ------------------------------------------------------


def test_every_verified_batch_is_answered_per_reading_and_resends_get_the_same_answer(env: Env) -> None:
    """A verified batch is always answered: stored (naming its rejected readings), or finally rejected
    by seq, or by SHA-256 when no seq can be read. An unverified one is not (anyone could have sent
    it). A byte-identical resend gets the same answer, also from a new replica (the ledger keeps it)."""
    k1, k2 = env.keys["dev1"], env.keys["dev2"]
    partial = batch_obj("dev1", 1, [reading(NOW - 50), reading(NOW + 3_600_000), reading(NOW - 40, humidity=150.0)])
    rejected = {
        2: signed(batch_obj("dev1", 2, []), k1, "dev1"),  # bad_schema
        3: signed({**batch_obj("dev1", 3, [reading(NOW - 30)]), "v": 2}, k1, "dev1"),  # unsupported_version
        4: signed(batch_obj("dev1", 4, [reading(NOW - 5_000 + i) for i in range(1001)]), k1, "dev1"),  # too_large
        5: signed(batch_obj("dev2", 5, [reading(NOW - 20)]), k1, "dev1"),  # device_mismatch, signed by dev1
    }
    not_json = signed(b"not json", k1, "dev1")
    forged = sealed(make_batch("dev1", 6, 1, ts0=NOW - 10), k2)  # bad_signature: not told
    messages = [signed(partial, k1, "dev1"), *rejected.values(), not_json, forged]
    expected_rejected = {
        ("dev1", 2, "bad_schema"),
        ("dev1", 3, "unsupported_version"),
        ("dev1", 4, "too_large"),
        ("dev1", 5, "device_mismatch"),
    }
    expected_readings = {("dev1", 1, 1, "future_timestamp"), ("dev1", 1, 2, "out_of_range")}
    unread = {("dev1", hashlib.sha256(not_json).hexdigest(), "bad_json")}
    for round_ in range(2):  # the second time: resends to a new replica, answered from the ledger
        with Bridge(env.settings) as bridge:
            bridge.wait_ready()
            rc = env.receipts()
            env.publish("dev1", *messages)
            _wait_answers(rc, expected_rejected, expected_readings, unread)
            wait_for(lambda b=bridge: b.ingest.backlog == 0, 20, what="everything acknowledged")
            time.sleep(0.3)  # a few receipt intervals: nothing names the forged batch
            assert all(6 not in r.stored and all(x.seq != 6 for x in r.rejected) for _, _, r in rc.receipts)
            if round_:
                assert bridge.metrics.duplicates._value.get() == 5  # the partial one and the four rejected
            rc.close()
    assert env.store.count(device_id="dev1") == 1
    rows = ledger_rows(env.engine, "dev1")
    assert rows == {
        1: (1, 2, None),
        2: (0, 0, "bad_schema"),
        3: (0, 1, "unsupported_version"),
        4: (0, 1001, "too_large"),
        5: (0, 1, "device_mismatch"),
    }


def _wait_answers(rc: ReceiptCollector, rejected: set[Any], readings: set[Any], unread: set[Any]) -> None:
    wait_for(lambda: rc.rejected() == rejected, 20, what="the final rejections")
    wait_for(lambda: rc.stored("dev1") == {("dev1", 1)}, 20, what="the partial batch stored")
    wait_for(lambda: rc.reading_rejections("dev1") == readings, 20, what="its rejected readings")
    wait_for(lambda: rc.unread() == unread, 20, what="the unreadable one, by hash")


# ---- gaps 6, 7, 10: reading-level rejections, the name rule, duplicate members, alg --------------


def test_a_malformed_reading_rejects_only_itself_on_either_store(any_store_env: Env) -> None:
    """ts=-1, a float or string ts, quality="high", a sensor type or field name outside the name rule
    (a newline, '=', ',', a reserved name): each rejects only its reading, with a reason, and the same
    way whichever store is behind the bridge. The valid readings are stored."""
    e = any_store_env
    k = e.keys["dev0"]
    t = NOW - 60_000
    readings = [
        reading(t),
        {"ts": -1, "sensor_type": "bme280", "values": {"temperature": 1.0}},
        {"ts": t + 1.5, "sensor_type": "bme280", "values": {"temperature": 1.0}},
        reading(t + 2),
        {"ts": "soon", "sensor_type": "bme280", "values": {"temperature": 1.0}},
        {"ts": t + 4, "sensor_type": "bme280", "values": {"temperature": 1.0}, "quality": "high"},
        reading(t + 5),
        {"ts": t + 6, "sensor_type": "bme\n280", "values": {"temperature": 1.0}},
        {"ts": t + 7, "sensor_type": "bme280", "values": {"a=b": 1.0}},
        {"ts": t + 8, "sensor_type": "bme280", "values": {"a,b": 1.0}},
        {"ts": t + 9, "sensor_type": "bme280", "values": {"time": 1.0}},
        reading(t + 10),
        {"ts": t + 11, "sensor_type": "bme280", "values": {"temperature": 1.0}, "flags": [""]},
        reading(t + 12),
    ]
    with Bridge(e.settings) as bridge:
        bridge.wait_ready()
        rc = e.receipts()
        e.publish("dev0", signed(batch_obj("dev0", 1, readings), k, "dev0"))
        wait_for(lambda: ("dev0", 1) in rc.stored(), 20, what="the batch stored")
        assert rc.reading_rejections("dev0") == {
            ("dev0", 1, 1, "bad_reading"),
            ("dev0", 1, 2, "bad_reading"),
            ("dev0", 1, 4, "bad_reading"),
            ("dev0", 1, 5, "bad_reading"),
            ("dev0", 1, 7, "bad_name"),
            ("dev0", 1, 8, "bad_name"),
            ("dev0", 1, 9, "bad_name"),
            ("dev0", 1, 10, "bad_name"),
            ("dev0", 1, 12, "bad_reading"),
        }
        assert bridge.metrics.readings_stored._value.get() == 5
        assert bridge.metrics.rejected.labels("store_rejected")._value.get() == 0
        rc.close()
    assert e.store.count(device_id="dev0") == 5
    assert ledger_rows(e.engine, "dev0") == {1: (5, 9, None)}


def test_duplicate_member_names_are_refused_and_the_ed25519_alg_accepted(env: Env) -> None:
    k = env.keys["dev0"]
    t = NOW - 60_000
    twice_in_values = (
        b'{"v":1,"device_id":"dev0","batch_id":"b","seq":1,"sent_at":1,"readings":'
        b'[{"ts":%d,"sensor_type":"bme280","values":{"temperature":20.0,"temperature":99.0}}]}' % t
    )
    twice_seq = orjson.dumps(batch_obj("dev0", 2, [reading(t + 1)])).replace(b'"seq":2', b'"seq":2,"seq":2')
    rfc9864 = signed(batch_obj("dev0", 3, [reading(t + 2)]), k, "dev0", alg="Ed25519")
    dup_header = jws.b64url_encode(b'{"alg":"EdDSA","kid":"dev0","kid":"dev0","typ":"edu.batch.v1"}')
    token = seal_batch(Batch("dev0", "b4", 4, t, (Reading(t + 3, "bme280", {"temperature": 1.0}),)), k)
    p64 = token.split(b".")[1]
    dup_head_token = dup_header + b"." + p64 + b"." + jws.b64url_encode(k.sign(dup_header + b"." + p64))
    with Bridge(env.settings) as bridge:
        bridge.wait_ready()
        rc = env.receipts()
        env.publish("dev0", signed(twice_in_values, k, "dev0"), signed(twice_seq, k, "dev0"), rfc9864, dup_head_token)
        wait_for(lambda: ("dev0", 3) in rc.stored(), 20, what="the Ed25519 token stored")
        wait_for(
            lambda: {("dev0", 1, "bad_json"), ("dev0", 2, "bad_json")} <= rc.rejected(), 20, what="duplicates refused"
        )
        wait_for(lambda: bridge.metrics.rejected.labels("bad_envelope")._value.get() == 1, 20, what="bad header")
        rc.close()
    assert env.store.count(device_id="dev0") == 1


# ---- gap 8: the broker's packet limit -------------------------------------------------------------


def test_a_message_over_the_broker_limit_shows_as_a_lost_connection(env: Env) -> None:
    """Mosquitto (max_packet_size 1 MiB here) drops the connection of a client that sends a larger
    packet, saying so only in its log; the device's last will is the trace the bridge can see:
    bridge_device_connection_losses_total counts it (a retained will from before is not counted)."""
    topics = env.topics
    stale = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="old", protocol=mqtt.MQTTv5)
    stale.connect(env.broker.host, env.broker.port)
    stale.loop_start()
    stale.publish(
        topics.status("dev2"), encode(Status("offline", reason="lost")), qos=1, retain=True
    ).wait_for_publish()
    stale.disconnect()
    stale.loop_stop()
    with Bridge(env.settings) as bridge:
        bridge.wait_ready()
        time.sleep(0.5)
        assert bridge.metrics.connection_losses._value.get() == 0
        dev = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev1", protocol=mqtt.MQTTv5)
        dev.will_set(topics.status("dev1"), encode(Status("offline", reason="lost")), qos=1, retain=True)
        reasons: list[str] = []
        dev.on_disconnect = lambda _c, _u, _f, rc, _p: reasons.append(str(rc))
        dev.reconnect_delay_set(60, 120)
        dev.connect(env.broker.host, env.broker.port)
        dev.loop_start()
        wait_for(dev.is_connected, 10, what="device connected")
        dev.publish(topics.telemetry("dev1"), b"x" * (1024 * 1024 + 10), qos=1)
        wait_for(lambda: reasons, 10, what="the broker drops the connection")
        wait_for(lambda: bridge.metrics.connection_losses._value.get() == 1, 10, what="the loss counted")
        assert b"bridge_device_connection_losses_total 1.0" in bridge.metrics.render()
        dev.loop_stop()


def test_the_partial_batch_vector_is_receipted_byte_for_byte(mosquitto_factory, pg_url, topic_prefix, tmp_path) -> None:
    """docs/protocol.md's partly rejected batch, published by its device, gets exactly the receipt
    bytes the document shows (the embedded store: the vector's 2025 readings are older than
    InfluxDB's 30-day retention)."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()

    def vector(name: str) -> str:
        m = re.search(rf"<!-- vector:{name} -->\s*```\w*\n(.*?)\n```", doc, re.S)
        assert m, name
        return m.group(1).strip()

    e = make_env(mosquitto_factory(**LIMITS), pg_url, f"sqlite:///{tmp_path}/r.db", topic_prefix)
    key = private_key_from_seed(bytes.fromhex(vector("device_seed")))
    with session_scope(e.engine) as s:
        s.add(Device(id="greenhouse-01", status="active", public_key=public_key_b64(key), location="greenhouse"))
    with Bridge(e.settings) as bridge:
        bridge.wait_ready()
        rc = e.receipts()
        e.publish("greenhouse-01", vector("partial_batch_token").encode())
        wait_for(lambda: ("greenhouse-01", 43) in rc.stored(), 20, what="the vector batch receipted")
        assert [raw for d, raw in rc.raw if d == "greenhouse-01"] == [vector("partial_receipt").encode()]
        rc.close()
    assert e.store.count(device_id="greenhouse-01") == 2
    e.store.close()
    e.engine.dispose()
