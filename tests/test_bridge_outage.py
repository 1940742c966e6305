"""InfluxDB stopped and restarted under the bridge: nothing is acknowledged or receipted while it is
down, everything arrives when it is back, and a replica stopped during the outage hands its
unacknowledged messages to its successor through the broker's persistent session.

The outage lasts BRIDGE_OUTAGE_S seconds (default 3); the soak variant holds it for 30 s times
``SOAK_SCALE`` (``iot_testing.soak_scale``).
"""

from __future__ import annotations

import os
import time

import pytest

from broker_bridge import Bridge, BridgeSettings
from broker_bridge.testing import Publisher, ReceiptCollector, make_batch, register_devices, sealed, wait_for
from cloud_core.core.db import make_engine
from cloud_core.tsdb import open_tsdb
from iot_protocol import Topics
from iot_testing import soak_scale

pytestmark = pytest.mark.integration

SCALE = soak_scale()

BRIDGE_BROKER_LIMITS = {"max_queued_messages": 1_000_000, "max_inflight_messages": 1000}


def _outage(mosquitto_factory, influx_factory, pg_url, redis_url, topic_prefix, outage_s: float) -> None:
    broker = mosquitto_factory(**BRIDGE_BROKER_LIMITS)
    influx = influx_factory()
    tsdb_url = influx.url_for("outage")
    engine = make_engine(pg_url)
    keys = register_devices(engine, ["a", "b"])
    topics = Topics(topic_prefix)
    settings = BridgeSettings(
        mqtt_url=broker.url,
        db_url=pg_url,
        tsdb_url=tsdb_url,
        cache_url=redis_url,
        topic_prefix=topic_prefix,
        client_id=f"bridge-{topic_prefix}",
        batch_max_delay_s=0.02,
        retry_initial_s=0.1,
        retry_max_s=0.5,
        effects_interval_s=0.1,
        metrics_port=0,
    )
    store = open_tsdb(tsdb_url)
    seq = {"a": 0, "b": 0}

    def send(pub: Publisher, n: int) -> None:
        for _ in range(n):
            for d in ("a", "b"):
                seq[d] += 1
                pub.publish(topics.telemetry(d), sealed(make_batch(d, seq[d], 10), keys[d]))
        pub.wait_acked()

    rc = ReceiptCollector(broker.host, broker.port, topics)
    with Publisher(broker.host, broker.port) as pub:
        bridge = Bridge(settings).start()
        bridge.wait_ready()
        send(pub, 10)
        wait_for(lambda: len(rc.stored()) == 20, 20, what="20 receipts before the outage")
        assert store.count() == 200

        # Phase 1: the same replica rides out the outage.
        influx.stop()
        send(pub, 10)
        wait_for(lambda: bridge.ingest.backlog == 20, 10, what="20 messages held")
        deadline = time.monotonic() + outage_s
        while time.monotonic() < deadline:
            assert len(rc.stored()) == 20, "a receipt was sent while the store was down"
            assert bridge.metrics.messages_stored._value.get() == 20
            time.sleep(0.1)
        assert bridge.ready()[0] is False
        assert bridge.metrics.write_failures.labels("tsdb")._value.get() >= 1
        influx.start()
        wait_for(lambda: len(rc.stored()) == 40, 30, what="all 40 receipts after recovery")
        assert store.count() == 400

        # Phase 2: the replica is stopped while the store is down; its successor gets everything.
        influx.stop()
        send(pub, 5)
        wait_for(lambda: bridge.ingest.backlog == 10, 10, what="10 messages held")
        bridge.stop(drain_s=0.3)
        assert len(rc.stored()) == 40
        influx.start()
        with Bridge(settings) as successor:
            successor.wait_ready()
            wait_for(lambda: len(rc.stored()) == 50, 30, what="all 50 receipts from the successor")
            assert successor.metrics.messages_stored._value.get() == 10
    assert store.count() == 500
    rc.close()
    store.close()
    engine.dispose()


def test_influx_outage_nothing_acked_then_everything_arrives(
    mosquitto_factory, influx_factory, pg_url, redis_url, topic_prefix
) -> None:
    _outage(
        mosquitto_factory,
        influx_factory,
        pg_url,
        redis_url,
        topic_prefix,
        float(os.environ.get("BRIDGE_OUTAGE_S", "3")),
    )


@pytest.mark.soak
@pytest.mark.timeout(int(300 * max(1.0, SCALE)))
def test_influx_outage_30s(mosquitto_factory, influx_factory, pg_url, redis_url, topic_prefix) -> None:
    _outage(mosquitto_factory, influx_factory, pg_url, redis_url, topic_prefix, 30.0 * SCALE)


def test_broker_restart_mid_stream_exact_counts(mosquitto_factory, pg_url, influx_url, topic_prefix) -> None:
    """The broker restarts while the bridge holds unacknowledged messages: the bridge reconnects to its
    persistent session, gets them again (found stored: duplicates) and everything is stored once."""
    broker = mosquitto_factory(**BRIDGE_BROKER_LIMITS)
    engine = make_engine(pg_url)
    keys = register_devices(engine, ["a", "b"])
    topics = Topics(topic_prefix)
    settings = BridgeSettings(
        mqtt_url=broker.url, db_url=pg_url, tsdb_url=influx_url, cache_url="memory://", topic_prefix=topic_prefix,
        client_id=f"bridge-{topic_prefix}", batch_max_delay_s=0.02, retry_initial_s=0.1, retry_max_s=0.5,
        effects_interval_s=0.1, metrics_port=0,
    )  # fmt: skip
    store = open_tsdb(influx_url)
    with Bridge(settings) as bridge:
        bridge.wait_ready()
        for part in (range(1, 26), range(26, 51)):
            with Publisher(broker.host, broker.port) as pub:
                for seq in part:
                    for d in ("a", "b"):
                        pub.publish(topics.telemetry(d), sealed(make_batch(d, seq, 4), keys[d]))
                pub.wait_acked()
            if part.start == 1:
                broker.restart()
                bridge.wait_ready(20)
        wait_for(lambda: store.count() >= 400, 30, what="400 points")
        wait_for(lambda: bridge.ingest.backlog == 0, 10, what="everything acknowledged")
        assert store.count() == 400
        assert bridge.metrics.messages_stored._value.get() == 100
    store.close()
    engine.dispose()
