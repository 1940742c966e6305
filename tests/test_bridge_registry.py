"""Registry changes take effect at once (registry events invalidate the key cache), and the loss
ledger balances a device's books and names the missing seqs."""

from __future__ import annotations

import orjson
import pytest
from sqlmodel import Session

from broker_bridge import Bridge, BridgeSettings, compute_ledger
from broker_bridge.testing import Publisher, ReceiptCollector, make_batch, register_devices, sealed, wait_for
from cloud_core.core.db import make_engine
from cloud_core.models import Device
from iot_protocol import Topics, generate_private_key, public_key_b64

pytestmark = pytest.mark.integration


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
