"""Registry changes take effect at once (registry events invalidate the key cache), and the loss
ledger balances a device's books and names the missing seqs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text
from sqlmodel import Session, delete, select

from broker_bridge import Bridge, BridgeSettings, compute_ledger
from broker_bridge.ledger import _PG_KNOWN, Ledger, LedgerRow, ensure_ledger_schema
from broker_bridge.pipeline import key_id_of
from broker_bridge.testing import Publisher, ReceiptCollector, make_batch, register_devices, sealed, wait_for
from cloud_core.core.config import CloudSettings
from cloud_core.core.db import create_all, make_engine
from cloud_core.models import BatchLedger, Device
from cloud_core.services.device_events import DeviceEventsConsumer
from cloud_core.tsdb import open_tsdb
from iot_protocol import Health, Topics, encode, generate_private_key, public_key_b64, public_key_raw

pytestmark = pytest.mark.integration
IOTCTL = str(Path(sys.executable).with_name("iotctl"))


@pytest.fixture
def setup(mosquitto_factory, pg_url, influx_url, topic_prefix):
    broker = mosquitto_factory(max_queued_messages=1_000_000, max_inflight_messages=1000)
    engine = make_engine(pg_url)
    keys = register_devices(engine, ["a", "b"])
    settings = BridgeSettings(
        mqtt_url=broker.url,
        db_url=pg_url,
        tsdb_url=influx_url,
        cache_url="memory://",
        topic_prefix=topic_prefix,
        client_id=f"bridge-{topic_prefix}",
        batch_max_delay_s=0.02,
        effects_interval_s=0.1,
        metrics_port=0,
        key_cache_ttl_s=3600,
    )
    yield broker, engine, keys, settings, Topics(topic_prefix)
    engine.dispose()


def test_deactivation_and_rotation_take_effect_at_once(setup) -> None:
    broker, engine, keys, settings, topics = setup
    with Bridge(settings) as bridge:
        bridge.wait_ready()
        rc = ReceiptCollector(broker.host, broker.port, topics)
        with Publisher(broker.host, broker.port) as pub:
            pub.publish(topics.telemetry("a"), sealed(make_batch("a", 1), keys["a"]))
            pub.publish(topics.telemetry("b"), sealed(make_batch("b", 1), keys["b"]))
            wait_for(lambda: len(rc.stored()) == 2, 20, what="2 receipts")
            # deactivate a, rotate b (the registry commits, then announces)
            new_b = generate_private_key()
            with Session(engine) as s:
                a, b = s.get(Device, "a"), s.get(Device, "b")
                a.status = "inactive"
                b.public_key = public_key_b64(new_b)
                s.add_all([a, b])
                s.commit()
            for d, ev in (("a", "deactivated"), ("b", "rotated")):
                pub.publish(topics.registry_events(), orjson.dumps({"v": 1, "device_id": d, "event": ev}))
            pub.wait_acked()
            # No wait: the broker delivers the events before the telemetry published after them.
            pub.publish(topics.telemetry("a"), sealed(make_batch("a", 2), keys["a"]))
            pub.publish(topics.telemetry("b"), sealed(make_batch("b", 2), keys["b"]))  # old key
            pub.publish(topics.telemetry("b"), sealed(make_batch("b", 3), new_b))
            pub.wait_acked()
        wait_for(lambda: bridge.metrics.rejected.labels("inactive_device")._value.get() == 1, 20, what="inactive")
        wait_for(lambda: bridge.metrics.rejected.labels("bad_signature")._value.get() == 1, 20, what="old key")
        wait_for(lambda: ("b", 3) in rc.stored(), 20, what="new key accepted")
        rc.close()


def test_ledger_balances_and_names_gaps(setup) -> None:
    broker, engine, keys, settings, topics = setup
    with Bridge(settings) as bridge:
        bridge.wait_ready()
        rc = ReceiptCollector(broker.host, broker.port, topics)
        with Publisher(broker.host, broker.port) as pub:
            for seq in (1, 2, 4, 5, 8):
                pub.publish(topics.telemetry("a"), sealed(make_batch("a", seq, 10), keys["a"]))
            pub.wait_acked()
        wait_for(lambda: len(rc.stored()) == 5, 20, what="5 receipts")
        rc.close()
    with Session(engine) as s:
        a = s.get(Device, "a")
        # the agent says: 100 produced, 20 still buffered, 10 dropped by policy, last sent seq 9
        a.health = {"produced": 100, "buffer_depth": 20, "dropped": 10, "last_seq": 9, "at": 1}
        s.add(a)
        s.commit()
        ledger = compute_ledger(s, "a")
    assert (ledger.produced, ledger.stored, ledger.buffered, ledger.dropped) == (100, 50, 20, 10)
    assert ledger.in_flight == 20
    assert ledger.missing == ((3, 3), (6, 7), (9, 9))
    assert not ledger.balanced


def test_ledger_compares_the_health_message_with_the_batches_sealed_by_then(setup) -> None:
    """A healthy device: its last health message said 12 produced, 3 of them still buffered (seq 4,
    sent, its receipt not yet back), last seq 4. Since then seq 4 and seq 5 were stored. Compared with
    everything stored, the books showed "in flight -6", NOT BALANCED; like with like they balance."""
    broker, engine, keys, settings, topics = setup
    with Bridge(settings) as bridge:
        bridge.wait_ready()
        rc = ReceiptCollector(broker.host, broker.port, topics)
        with Publisher(broker.host, broker.port) as pub:
            for seq in (1, 2, 3, 4, 5):
                pub.publish(topics.telemetry("a"), sealed(make_batch("a", seq, 3), keys["a"]))
            pub.wait_acked()
        wait_for(lambda: len(rc.stored()) == 5, 20, what="5 receipts")
        wait_for(lambda: len(_ledger_keys(engine, "a")) == 5, 10, what="5 ledger rows")
        rc.close()
    with Session(engine) as s:
        a = s.get(Device, "a")
        a.health = {"produced": 12, "buffer_depth": 3, "dropped": 0, "last_seq": 4, "at": 1,
                    "extra": {"stored": 9, "rejected": 0}}  # fmt: skip
        s.add(a)
        s.commit()
        ledger = compute_ledger(s, "a")
        assert (ledger.stored, ledger.buffered, ledger.in_flight, ledger.awaiting_receipt) == (12, 0, 0, 3)
        assert (ledger.stored_batches, ledger.stored_after, ledger.missing, ledger.lost) == (4, 1, (), 0)
        assert ledger.balanced
        # Had seq 2 vanished from the ledger, the next health message (every batch receipted by then)
        # shows it: receipted as stored, not in the ledger.
        s.exec(delete(BatchLedger).where(BatchLedger.device_id == "a", BatchLedger.seq == 2))
        a.health = {"produced": 15, "buffer_depth": 0, "dropped": 0, "last_seq": 5, "at": 2,
                    "extra": {"stored": 15, "rejected": 0}}  # fmt: skip
        s.add(a)
        s.commit()
        lost = compute_ledger(s, "a")
        assert (lost.in_flight, lost.lost, lost.missing, lost.balanced) == (3, 3, ((2, 2),), False)


def test_a_rotated_device_restarting_its_seqs_is_a_new_epoch_not_a_replay(setup) -> None:
    """Seqs 1..3 stored; the key is rotated; the device (fresh buffer) sends seqs 1..3 again with the
    new key and other readings: all stored, none rejected. The old key's seq, resent with another
    payload, stays a replay only under the same key."""
    broker, engine, keys, settings, topics = setup
    ts_old, ts_new = 1_000_000, 2_000_000  # distinct readings per epoch
    with Bridge(settings) as bridge:
        bridge.wait_ready()
        rc = ReceiptCollector(broker.host, broker.port, topics)
        t0 = bridge_now_ms() - 3_600_000
        with Publisher(broker.host, broker.port) as pub:
            for seq in (1, 2, 3):
                pub.publish(topics.telemetry("a"), sealed(make_batch("a", seq, 2, ts0=t0 + ts_old), keys["a"]))
            pub.wait_acked()
            wait_for(lambda: len(rc.stored("a")) == 3, 20, what="3 receipts")
            # same key, same seq, other payload: still a replay
            pub.publish(topics.telemetry("a"), sealed(make_batch("a", 2, 2, ts0=t0 + 5), keys["a"]))
            wait_for(lambda: ("a", 2, "replayed_seq") in rc.rejected(), 20, what="replayed_seq")
            new_a = generate_private_key()
            with Session(engine) as s:
                a = s.get(Device, "a")
                a.public_key = public_key_b64(new_a)
                a.key_version += 1
                s.add(a)
                s.commit()
            pub.publish(topics.registry_events(), orjson.dumps({"v": 1, "device_id": "a", "event": "rotated"}))
            pub.wait_acked()
            for seq in (1, 2, 3):
                pub.publish(topics.telemetry("a"), sealed(make_batch("a", seq, 2, ts0=t0 + ts_new), new_a))
            pub.wait_acked()
            wait_for(lambda: sum(len(r.stored) for _, d, r in rc.receipts if d == "a") == 6, 20, what="6 stored")
        assert rc.rejected() == {("a", 2, "replayed_seq")}
        assert bridge.metrics.rejected.labels("replayed_seq")._value.get() == 1
        assert bridge.metrics.messages_stored._value.get() == 6
        wait_for(lambda: _ledger_keys(engine, "a") == {1: new_kid(new_a), 2: new_kid(new_a), 3: new_kid(new_a)}, 10)
        rc.close()
    store = open_tsdb(settings.tsdb_url)
    try:
        assert store.count(device_id="a") == 12  # both epochs' readings
    finally:
        store.close()
    with Session(engine) as s:
        a = s.get(Device, "a")
        a.health = {"produced": 8, "buffer_depth": 2, "dropped": 0, "last_seq": 3, "at": 1}
        s.add(a)
        s.commit()
        ledger = compute_ledger(s, "a")
    # the current epoch only: the new key's 3 batches of 2 readings
    assert (ledger.stored, ledger.stored_batches, ledger.in_flight, ledger.missing) == (6, 3, 0, ())
    assert ledger.balanced


def bridge_now_ms() -> int:
    return int(time.time() * 1000)


def new_kid(key) -> str:
    return key_id_of(public_key_raw(key))


def _ledger_keys(engine, device_id: str) -> dict[int, str | None]:
    with Session(engine) as s:
        rows = s.exec(select(BatchLedger.seq, BatchLedger.key_id).where(BatchLedger.device_id == device_id)).all()
    return dict(rows)


def test_ledger_schema_gains_the_key_id_column(tmp_path) -> None:
    """A batch_ledger table from before seq epochs gets its key_id column (and the receipt columns,
    reason and rejections) when a bridge starts; its rows count as an older epoch, stored."""
    engine = make_engine(f"sqlite:///{tmp_path}/old.db")
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE batch_ledger (device_id VARCHAR(64) NOT NULL, seq INTEGER NOT NULL, "
                "batch_id VARCHAR(128) NOT NULL, payload_sha256 VARCHAR(64) NOT NULL, readings INTEGER NOT NULL, "
                "rejected_readings INTEGER NOT NULL, stored_at DATETIME NOT NULL, PRIMARY KEY (device_id, seq))"
            )
        )
        conn.execute(text("INSERT INTO batch_ledger VALUES ('x', 1, 'b', 'h', 1, 0, '2026-01-01 00:00:00')"))
    ensure_ledger_schema(engine)
    ensure_ledger_schema(engine)  # idempotent
    ledger = Ledger(engine)
    assert ledger.known([("x", 1)]) == {("x", 1): ("h", None, None, None)}
    engine.dispose()


def test_ledger_lookup_probes_the_key_even_when_statistics_are_stale(pg_url) -> None:
    """The bridge asks the ledger about every seq it writes. Against a table that grew faster than
    autovacuum's statistics (every busy bridge's), a plain join was planned as a hash of the whole
    table per lookup: cost growing with the ledger's age. The lookup must be one key probe per pair
    (and still find exactly the stored ones)."""
    engine = make_engine(pg_url)
    create_all(engine)
    ledger = Ledger(engine, cache_size=0)
    now = datetime.now(UTC)
    for chunk in range(20):  # 40,000 rows inserted in quick succession: the planner's idea of the table lags
        ledger.record(
            [LedgerRow(f"d{i % 50}", chunk * 10_000 + i, "b", "h" * 64, 1, 0, now, "k") for i in range(2_000)]
        )
    ask = [(f"d{i % 50}", 19 * 10_000 + i) for i in range(2_000)] + [("d1", 10**9), ("nobody", 1)]
    with engine.connect() as conn:
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                text("EXPLAIN " + _PG_KNOWN.text), {"pairs": orjson.dumps([{"d": d, "s": q} for d, q in ask]).decode()}
            )
        )
    assert "Seq Scan on batch_ledger" not in plan, plan
    assert "Index Scan using batch_ledger_pkey" in plan, plan
    found = ledger.known(ask)
    assert set(found) == set(ask[:2_000])
    assert found[("d3", 190_003)] == ("h" * 64, "k", None, None)
    engine.dispose()


def test_iotctl_devices_ledger_through_the_cli(setup, tmp_path) -> None:
    """A real bridge stores seqs 1, 2 and 4; the device's Health message is recorded by the cloud's
    device-events consumer; ``iotctl devices ledger`` (a subprocess) prints the books and the gaps."""
    broker, engine, keys, settings, topics = setup
    with Bridge(settings) as bridge:
        bridge.wait_ready()
        rc = ReceiptCollector(broker.host, broker.port, topics)
        with Publisher(broker.host, broker.port) as pub:
            for seq in (1, 2, 4):
                pub.publish(topics.telemetry("a"), sealed(make_batch("a", seq, 3), keys["a"]))
            pub.wait_acked()
        wait_for(lambda: len(rc.stored("a")) == 3, 20, what="3 receipts")
        wait_for(lambda: len(_ledger_keys(engine, "a")) == 3, 10, what="3 ledger rows")
        rc.close()
    # the agent: 15 readings produced, 3 still buffered, none dropped, batches up to seq 5 sealed
    health = Health(
        at=bridge_now_ms(), uptime_s=60.0, buffer_depth=3, produced=15, dropped=0, firmware="0.1.0",
        config_version=0, clock_synced=True, last_seq=5,
    )  # fmt: skip
    consumer = DeviceEventsConsumer(engine, CloudSettings(topic_prefix=settings.topic_prefix, db_url=settings.db_url))
    consumer.handle(topics.health("a"), encode(health))
    assert consumer.flush() == 1

    def iotctl(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "IOTCTL_STATE_DIR": str(tmp_path)}
        return subprocess.run(
            [IOTCTL, "devices", "ledger", *args, "--db", settings.db_url], capture_output=True, text=True, env=env
        )

    out = iotctl("a")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("ledger of a as of its last health message (received ")
    assert lines[0].endswith("; batches up to seq 5, 3 stored)")
    assert [ln[:24].split()[-1] for ln in lines[1:7]] == ["15", "9", "0", "3", "0", "3"]
    assert "missing seqs: 3, 5" in lines
    assert lines[-1].startswith(
        "verdict: NOT BALANCED: 3 readings neither stored, rejected, buffered nor dropped; seqs 3, 5 not stored"
    )
    as_json = orjson.loads(iotctl("a", "--json").stdout)
    assert {k: as_json[k] for k in ("produced", "stored", "buffered", "dropped", "in_flight", "missing")} == {
        "produced": 15,
        "stored": 9,
        "buffered": 3,
        "dropped": 0,
        "in_flight": 3,
        "missing": [[3, 3], [5, 5]],
    }
    assert as_json["balanced"] is False
    unknown = iotctl("nobody")
    assert unknown.returncode == 2 and "no device 'nobody'" in unknown.stderr and "Traceback" not in unknown.stderr
