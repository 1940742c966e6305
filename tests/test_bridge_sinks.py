"""Side-effect sinks down: readings keep flowing into the store while Redis or PostgreSQL is down,
and the side effects (latest cache, stream, dead letters, ledger, last_seen) catch up when it is back.
Receipts wait for the ledger (replay state is durable before a device is told), so while PostgreSQL
is down they are held (up to ``receipts_held_max``) and go out once it is back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from broker_bridge import Bridge, BridgeSettings
from broker_bridge.deadletter import DeadLetter, DeadLetterQueue
from broker_bridge.effects import LATEST_KEY, db_alive
from broker_bridge.testing import Publisher, ReceiptCollector, make_batch, register_devices, sealed, wait_for
from cloud_core.cache import open_cache
from cloud_core.core.db import create_all, make_engine
from cloud_core.models import BatchLedger, Device, RejectedMessage
from cloud_core.tsdb import open_tsdb
from iot_protocol import Topics
from iot_testing.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.integration

LIMITS = {"max_queued_messages": 1_000_000, "max_inflight_messages": 1000}


def _settings(broker, db_url: str, tsdb_url: str, cache_url: str, prefix: str) -> BridgeSettings:
    return BridgeSettings(
        mqtt_url=broker.url, db_url=db_url, tsdb_url=tsdb_url, cache_url=cache_url, topic_prefix=prefix,
        client_id=f"bridge-{prefix}", batch_max_delay_s=0.02, effects_interval_s=0.1, retry_initial_s=0.1,
        retry_max_s=0.3, metrics_port=0,
    )  # fmt: skip


class StreamReader:
    """Reads the analytics stream through its own consumer group: every reading (as the worker parses
    it) and every batch seq the entries name, accumulated over calls."""

    def __init__(self, cache, stream: str = "edu:readings") -> None:
        self.cache, self.stream = cache, stream
        self.readings: list = []
        self.seqs: list[int] = []
        cache.ensure_group(stream, "check", start="0")

    def read(self) -> StreamReader:
        from cloud_core.analytics.worker import parse_entry

        while entries := self.cache.stream_read_group(self.stream, "check", "c", count=1000):
            for _, fields in entries:
                self.readings.extend(parse_entry(fields))
                self.seqs.extend(orjson.loads(fields["seqs"]))
        return self


@dataclass
class PgOutage:
    """What the PostgreSQL-outage tests share: a private PostgreSQL (``postgres_factory``: stopped and
    started by the test), its database with device ``a`` registered, the time-series store, and a
    receipt collector and a publisher on the broker (open them with :meth:`clients`)."""

    broker: Any
    pg: PostgresServer
    engine: Engine
    keys: dict[str, Any]
    topics: Topics
    store: Any
    settings: BridgeSettings

    @contextlib.contextmanager
    def clients(self) -> Iterator[tuple[ReceiptCollector, Publisher]]:
        rc = ReceiptCollector(self.broker.host, self.broker.port, self.topics)
        pub = Publisher(self.broker.host, self.broker.port)
        try:
            yield rc, pub
        finally:
            pub.close()
            rc.close()


@pytest.fixture
def pg_outage(mosquitto_factory, postgres_factory, influx_url, topic_prefix) -> Iterator[PgOutage]:
    broker = mosquitto_factory(**LIMITS)
    pg = postgres_factory()
    db_url = pg.create_database("bridge")
    engine = make_engine(db_url)
    store = open_tsdb(influx_url)
    try:
        yield PgOutage(
            broker,
            pg,
            engine,
            register_devices(engine, ["a"]),
            Topics(topic_prefix),
            store,
            _settings(broker, db_url, influx_url, "memory://", topic_prefix),
        )
    finally:
        store.close()
        engine.dispose()


def test_redis_down_readings_flow_and_cache_catches_up(mosquitto_factory, pg_url, influx_url, topic_prefix) -> None:
    """Every batch arrives while Redis is down; once it is back, each reading's side effects are there
    exactly: the latest value is the newest reading's, and the stream holds every reading once. A last
    batch sent after the outage marks the end: side effects are flushed oldest first, so once its
    readings are on the stream, anything the outage could have duplicated or lost would show."""
    broker = mosquitto_factory(**LIMITS)
    redis = RedisServer()
    redis.start()
    try:
        engine = make_engine(pg_url)
        keys = register_devices(engine, ["a"])
        topics = Topics(topic_prefix)
        store = open_tsdb(influx_url)
        batches = [
            make_batch("a", seq, 5, values={"temperature": 20.0 + seq, "humidity": 40.0}) for seq in range(1, 12)
        ]
        with Bridge(_settings(broker, pg_url, influx_url, redis.url, topic_prefix)) as bridge:
            bridge.wait_ready()
            redis.stop()
            with Publisher(broker.host, broker.port) as pub:
                for b in batches[:10]:
                    pub.publish(topics.telemetry("a"), sealed(b, keys["a"]))
                pub.wait_acked()
                wait_for(lambda: store.count() == 50, 20, what="50 points while Redis is down")
                wait_for(lambda: not bridge.effects.cache_ok, 10, what="cache failure noticed")
                redis.start()
                pub.publish(topics.telemetry("a"), sealed(batches[10], keys["a"]))
                pub.wait_acked()
            cache = open_cache(redis.url)
            stream = StreamReader(cache)
            wait_for(lambda: 11 in stream.read().seqs, 20, what="the last batch's readings on the stream")
            newest = batches[-1].readings[-1]
            latest = cache.hgetall(LATEST_KEY.format(device_id="a"))
            assert int(latest["ts"]) == newest.ts and latest["sensor_type"] == newest.sensor_type
            assert orjson.loads(latest["values"]) == {**newest.values, "quality_score": newest.quality}
            assert sorted(stream.seqs) == list(range(1, 12))
            assert sorted(stream.readings) == sorted(
                ("a", r.sensor_type, r.ts, {**r.values, "quality_score": r.quality})
                for b in batches
                for r in b.readings
            )
            cache.close()
        store.close()
        engine.dispose()
    finally:
        redis.close()


def test_postgres_down_readings_flow_receipts_wait_and_bookkeeping_catches_up(pg_outage: PgOutage) -> None:
    o = pg_outage
    pg, engine, keys, topics, store = o.pg, o.engine, o.keys, o.topics, o.store
    with Bridge(o.settings) as bridge, o.clients() as (rc, pub):
        bridge.wait_ready()

        def send(seqs: range) -> None:
            for seq in seqs:
                pub.publish(topics.telemetry("a"), sealed(make_batch("a", seq, 5), keys["a"]))
            pub.wait_acked()

        send(range(0, 1))  # the writer's ledger connection is open when the server goes away
        wait_for(lambda: len(rc.stored("a")) == 1, 20, what="first receipt")
        pg.stop()  # the registry snapshot (a's key) keeps serving
        send(range(1, 11))
        pub.publish(topics.telemetry("a"), b"garbage")
        pub.wait_acked()
        wait_for(lambda: store.count() == 55, 30, what="55 points while PostgreSQL is down")
        wait_for(lambda: bridge.ingest.backlog == 0, 20, what="every message acknowledged")
        wait_for(lambda: not bridge.effects.db_ok, 10, what="DB failure noticed")
        # stored, acknowledged, but not receipted: the ledger rows (replay state) are not durable yet
        assert bridge.metrics.receipts_held._value.get() == 10
        assert rc.stored("a") == {("a", 0)}
        assert bridge.metrics.sink_up.labels("ledger")._value.get() == 0
        pg.start()
        engine.dispose()
        wait_for(lambda: len(rc.stored("a")) == 11, 30, what="the held receipts once PostgreSQL is back")
        assert bridge.metrics.receipts_held._value.get() == 0

        def caught_up() -> bool:
            with Session(engine) as s:
                ledger = s.exec(select(func.count()).select_from(BatchLedger)).one()
                dead = s.exec(select(func.count()).select_from(RejectedMessage)).one()
                seen = s.get(Device, "a").last_seen
            return ledger == 11 and dead == 1 and seen is not None

        wait_for(caught_up, 30, interval=0.3, what="ledger, dead letter and last_seen written")
        # the writer's ledger lookups work again (a new connection), without another failure
        failures = bridge.metrics.write_failures.labels("ledger_lookup")._value.get()
        assert failures >= 1
        send(range(11, 14))
        wait_for(lambda: len(rc.stored("a")) == 14, 20, what="receipts after PostgreSQL is back")
        assert bridge.metrics.write_failures.labels("ledger_lookup")._value.get() == failures
        assert store.count() == 70


def test_postgres_down_held_receipts_are_bounded_and_the_dropped_batches_resent(pg_outage: PgOutage) -> None:
    """Beyond ``receipts_held_max`` held receipts the oldest are given up (their rows forgotten, counted
    in ``bridge_ledger_rows_dropped_total``): the device resends those batches, which are stored again
    (idempotently) and receipted once PostgreSQL is back; the ledger holds each batch exactly once."""
    o = pg_outage
    pg, engine, keys, topics, store = o.pg, o.engine, o.keys, o.topics, o.store
    settings = o.settings.model_copy(update={"receipts_held_max": 5})
    batches = {seq: sealed(make_batch("a", seq, 2), keys["a"]) for seq in range(1, 11)}
    with Bridge(settings) as bridge, o.clients() as (rc, pub):
        bridge.wait_ready()

        def send(seqs: range) -> None:
            for seq in seqs:
                pub.publish(topics.telemetry("a"), batches[seq])
            pub.wait_acked()

        pg.stop()
        send(range(1, 6))
        wait_for(lambda: bridge.metrics.receipts_held._value.get() == 5, 20, what="5 receipts held")
        send(range(6, 11))
        wait_for(lambda: store.count() == 20, 20, what="all 20 points stored")
        wait_for(lambda: bridge.ingest.backlog == 0, 20, what="every message acknowledged")
        # the newest 5 are held; the oldest 5 were given up: nothing told, the device resends them
        assert bridge.metrics.receipts_held._value.get() == 5
        assert bridge.metrics.ledger_rows_dropped._value.get() == 5
        assert rc.stored("a") == set()
        pg.start()
        engine.dispose()
        wait_for(lambda: len(rc.stored("a")) == 5, 30, what="the held receipts once PostgreSQL is back")
        assert rc.stored("a") == {("a", seq) for seq in range(6, 11)}
        send(range(1, 6))  # the device resends what was not receipted
        wait_for(lambda: len(rc.stored("a")) == 10, 20, what="the resends receipted")
        with Session(engine) as s:
            seqs = s.exec(select(BatchLedger.seq).where(BatchLedger.device_id == "a")).all()
        assert sorted(seqs) == list(range(1, 11))
        assert store.count() == 20


def test_postgres_down_a_device_not_cached_is_told_to_retry_and_holds_up_no_one(pg_outage: PgOutage) -> None:
    """Regression: a message from a device the key snapshot does not hold (registered since), arriving
    while PostgreSQL is down, made the writer retry the registry in a loop with that message's unit in
    hand, so no device's batches were stored until the DB was back. Now it is answered with a retry
    receipt (``registry_unavailable``); the cached device's batches are stored meanwhile (their receipts
    held for their ledger rows, as always); once the DB is back they are receipted, and the new
    device's resend is stored."""
    o = pg_outage
    pg, engine, keys, topics, store = o.pg, o.engine, o.keys, o.topics, o.store
    with Bridge(o.settings) as bridge:
        bridge.wait_ready()
        keys |= register_devices(engine, ["b"])  # after the snapshot: the bridge has not cached b
        engine.dispose()
        with o.clients() as (rc, pub):
            b_batch = sealed(make_batch("b", 1, 3), keys["b"])
            pg.stop()
            pub.publish(topics.telemetry("b"), b_batch)
            for seq in range(1, 6):
                pub.publish(topics.telemetry("a"), sealed(make_batch("a", seq, 2), keys["a"]))
            pub.wait_acked()
            wait_for(lambda: store.count(device_id="a") == 10, 20, what="a's batches stored while PostgreSQL is down")
            wait_for(lambda: rc.retries(), 20, what="b told to retry")
            [(device, seq, reason, after_ms)] = rc.retries()
            assert (device, seq, reason) == ("b", 1, "registry_unavailable") and after_ms > 0
            assert store.count(device_id="b") == 0
            wait_for(lambda: bridge.metrics.receipts_held._value.get() == 5, 20, what="a's receipts held")
            assert rc.stored("a") == set()
            pg.start()
            wait_for(lambda: len(rc.stored("a")) == 5, 30, what="a's held receipts once PostgreSQL is back")
            pub.publish(topics.telemetry("b"), b_batch)  # the device resends after after_ms
            pub.wait_acked()
            wait_for(lambda: rc.stored("b") == {("b", 1)}, 30, what="b's resend stored once PostgreSQL is back")
            assert store.count(device_id="b") == 3


def test_a_db_starting_up_fails_the_sink_not_the_row(pg_url) -> None:
    """Regression: a write that failed with "the database system is starting up" (SQLSTATE 57P03), then
    a liveness probe that succeeded (the server had finished starting meanwhile), made the row "refused
    for good": a dead letter was dropped as PostgreSQL came back (seen in the outage test above), and a
    ledger row would have become ``ledger_refused``. A connection-level failure (the driver's
    OperationalError) is the sink's: the rows stay queued for the next round. A trigger raising that
    SQLSTATE while the server answers stands in for the race."""
    engine = make_engine(pg_url)
    create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION t_starting() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION "
                "'the database system is starting up' USING ERRCODE = 'cannot_connect_now'; END $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER t_starting BEFORE INSERT ON rejected_messages "
                "FOR EACH ROW EXECUTE FUNCTION t_starting()"
            )
        )
    queue = DeadLetterQueue(engine, max_buffer=10)
    queue.put(DeadLetter("a", "t/a", "bad_json", None, None, None, datetime.now(UTC), "0" * 64, None))
    with pytest.raises(Exception, match="starting up"):
        queue.flush(alive=lambda: db_alive(engine))
    assert (len(queue), queue.refused) == (1, 0)
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER t_starting ON rejected_messages"))
    assert queue.flush(alive=lambda: db_alive(engine)) == 1
    assert (len(queue), queue.written, queue.refused) == (0, 1, 0)
    engine.dispose()
