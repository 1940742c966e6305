"""The agent never loses a reading on the production parts: the real `iotctl agent run`, Mosquitto, an
`iotctl bridge run` subprocess, PostgreSQL, InfluxDB and Redis, each of which a test kills or stops.

Every test ends with ``Rig.drain_and_check`` (tests/durability_rig.py): InfluxDB holds exactly what the
agent committed, and every reading the probe sensor handed over except the one an agent held
uncommitted when it was killed. Faults: kill -9 of the agent and of the bridge process, kill -9 and
stop of InfluxDB, PostgreSQL and Redis stopped under load, a broker that loses what it acknowledged.
The long form of the kill -9 rounds is the embedded soak in test_agent_durability.py (the same agent;
here each round also costs a bridge process start).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from durability_rig import ProductionCloud, Rig, broker_loses_what_it_acknowledged

from iot_testing import wait_for

pytestmark = pytest.mark.integration

BROKER_LIMITS = {"max_queued_messages": 1_000_000, "max_inflight_messages": 1000}


@pytest.fixture
def make_rig(
    tmp_path: Path,
    mosquitto_factory: Any,
    influx_factory: Any,
    redis_factory: Any,
    pg_url: str,
    topic_prefix: str,
) -> Iterator[Callable[..., Rig]]:
    """``make(db_url=None, **broker_conf)``: a rig on a private broker, InfluxDB and Redis, and a fresh
    PostgreSQL database (``db_url`` replaces it, e.g. one on a private server a test stops)."""
    rigs: list[Rig] = []

    def make(db_url: str | None = None, **broker_conf: Any) -> Rig:
        broker = mosquitto_factory(**{**BROKER_LIMITS, **broker_conf})
        cloud = ProductionCloud(
            tmp_path, broker, topic_prefix, pg_url=db_url or pg_url, influx=influx_factory(), redis=redis_factory()
        )
        r = Rig(tmp_path, broker, cloud)
        rigs.append(r)
        return r

    try:
        yield make
    finally:
        for r in rigs:
            r.close()


def _kill9_agent_and_bridge(rig: Rig, rounds: int, seed: int) -> None:
    """kill -9 of the agent at random moments; every second round the bridge process dies too."""
    rng = random.Random(seed)
    cloud = rig.cloud
    assert isinstance(cloud, ProductionCloud)
    cloud.start_bridge()
    produced = 0
    for i in range(rounds):
        rig.start_agent()
        produced = rig.produced_more_than(produced + 10)
        time.sleep(rng.uniform(0.0, 0.6))  # a random moment of the agent's and the bridge's work
        if i % 2:
            cloud.kill_bridge()
            rig.kill_agent()
            cloud.start_bridge()
        else:
            rig.kill_agent()
    rig.drain_and_check()
    assert len(rig.cut_lives) == rounds


def test_kill9_of_agent_and_bridge_process(make_rig: Callable[..., Rig]) -> None:
    _kill9_agent_and_bridge(make_rig(), 6, seed=11)


def test_influxdb_killed_then_stopped_under_load(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    cloud = rig.cloud
    assert isinstance(cloud, ProductionCloud)
    cloud.start_bridge()
    rig.start_agent()
    p = rig.produced_more_than(30)
    for outage in (cloud.influx.kill, cloud.influx.stop):
        before = rig.counts()
        outage()
        p = rig.produced_more_than(p + 60)
        during = rig.counts()
        # nothing is receipted while the store is down (a receipt of an earlier write may be in flight)
        assert during.depth >= during.produced - before.produced >= 60
        cloud.influx.start()
        p = rig.produced_more_than(p + 30)
        wait_for(lambda d=during: rig.counts().stored > d.stored, "receipts again after InfluxDB is back", 60)
    assert cloud.bridge_running, "the bridge died with InfluxDB"
    rig.drain_and_check()


def test_postgres_and_redis_stopped_under_load(make_rig: Callable[..., Rig], postgres_factory: Any) -> None:
    """The metadata DB, then the cache, goes away under load. With PostgreSQL down, readings keep
    reaching InfluxDB but no batch is receipted before its ledger row (its replay state) is written:
    the bridge holds the receipts and the agent keeps the readings; once PostgreSQL is back they are all
    receipted. With Redis down (only a cache) receipts keep coming. In the end every reading is stored
    exactly once and the ledger holds every batch's seq exactly once."""
    pg = postgres_factory()
    rig = make_rig(db_url=pg.create_database("durability"))
    cloud = rig.cloud
    assert isinstance(cloud, ProductionCloud)
    cloud.start_bridge()
    rig.start_agent()
    p = rig.produced_more_than(30)

    points = rig.points()
    pg.stop()
    wait_for(lambda: cloud.metric("bridge_receipts_held") > 0, "receipts held while PostgreSQL is down", 60)
    wait_for(lambda: rig.points() > points, "readings reaching InfluxDB while PostgreSQL is down", 60)
    p = rig.produced_more_than(rig.counts().produced + 60)  # a receipt sent before the hold has landed
    held = rig.counts()
    p = rig.produced_more_than(p + 120)  # longer than the agent's receipt timeout: it resent its batches
    during = rig.counts()
    assert during.stored == held.stored, "a batch was receipted while its ledger row could not be written"
    assert rig.points() > during.stored, "InfluxDB holds no reading the agent still waits to hear about"
    assert cloud.metric("bridge_receipts_held") > 0
    pg.start()
    wait_for(lambda: rig.counts().stored > during.stored, "the held receipts once PostgreSQL is back", 60)
    wait_for(lambda: cloud.metric("bridge_receipts_held") == 0, "no receipt held once PostgreSQL is back", 60)

    cloud.redis.stop()
    before = rig.counts()
    p = rig.produced_more_than(p + 60)
    wait_for(lambda: rig.counts().stored > before.stored + 30, "receipts while Redis is down", 60)
    cloud.redis.start()
    p = rig.produced_more_than(p + 30)

    assert cloud.bridge_running
    rig.drain_and_check()
    seqs = list(range(1, rig.counts().last_seq + 1))
    wait_for(lambda: rig.ledger_seqs() == seqs, f"the ledger holding seqs 1..{len(seqs)} once", 30)


def test_broker_kill9_loses_what_it_acknowledged(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(autosave_interval=3600)
    broker_loses_what_it_acknowledged(rig)
    rig.drain_and_check()
