"""A device whose humidity stops following its temperature, each staying in its normal range: the
simulated device runs the real agent pipeline, the real bridge stores its readings and puts them on
the Redis stream, and the analytics worker (on its own thread, as live) learns the device's normal
operation from its first day, then raises one device-level alert inside the fault, explained by
the fields that broke their relation; no per-field alert fires there."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest
from sqlmodel import Session, select

from broker_bridge import Bridge, BridgeSettings
from cloud_core.analytics.feedback import anomaly_detail
from cloud_core.analytics.models import DEVICE_FIELD, Anomaly
from cloud_core.analytics.multivariate import MultivariateStore, device_model_key
from cloud_core.analytics.settings import AnalyticsSettings
from cloud_core.analytics.worker import AnalyticsWorker
from cloud_core.cache import open_cache
from cloud_core.core.db import make_engine
from cloud_core.tsdb import open_tsdb
from firmware_sim.fleet import Fleet, FleetSettings, device_key
from firmware_sim.labels import LabelWriter, read_labels
from firmware_sim.registration import register_in_db
from firmware_sim.scenario import parse_scenario

pytestmark = pytest.mark.integration

SEED = 5
DEVICE = "gh-000"
SCENARIO = {
    # Two simulated days in about 20 s; a greenhouse (mains powered: a steady battery), 5-minute readings.
    "simulation": {"start": "2026-03-02T00:00:00Z", "duration": "2d", "speed": 10000, "seed": SEED},
    "devices": [
        {"type": "greenhouse", "count": 1, "id_prefix": "gh", "sampling_interval": "5m", "transmission_interval": "1h"}
    ],
    # From 11:00 local on day 2, humidity reports its own value of 12 hours later (the night's),
    # while the temperature stays the afternoon's: each in range, their relation broken.
    "events": [{"kind": "decouple", "device": DEVICE, "at": "1d10h", "duration": "7h", "field": "humidity"}],
}


def test_device_alert_when_two_fields_break_their_relation(
    mosquitto, redis_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    db_url, ts_url = f"sqlite:///{tmp_path}/meta.db", f"sqlite:///{tmp_path}/readings.db"
    plan = parse_scenario(SCENARIO).plan()
    keys = {d.device_id: device_key(SEED, d.device_id) for d in plan.devices}
    register_in_db(db_url, plan.devices, keys)
    stream = f"edu:readings:{topic_prefix}"
    engine = make_engine(db_url)
    published: list[tuple[str, bytes]] = []
    settings = AnalyticsSettings(
        stream=stream, consumer="w1", block_ms=100, multivariate_warmup=288, models_dir=tmp_path / "models"
    )
    cache = open_cache(redis_url)
    worker = AnalyticsWorker(settings, cache, engine, publish=lambda t, p: published.append((t, p)))
    worker.ensure_group()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="analytics-test")
    thread.start()
    try:
        bridge = BridgeSettings(
            mqtt_url=mosquitto.url, db_url=db_url, tsdb_url=ts_url, cache_url=redis_url, stream_name=stream,
            topic_prefix=topic_prefix, metrics_port=None, client_id=f"bridge-{topic_prefix}", sys_topics=False,
            effects_interval_s=0.1,
        )  # fmt: skip
        fleet = FleetSettings(mqtt_url=mosquitto.url, topic_prefix=topic_prefix, drain_timeout_s=30)
        labels = LabelWriter(tmp_path / "labels.csv")
        with Bridge(bridge) as br:
            br.wait_ready()
            report = Fleet(plan, fleet, labels=labels, keys=keys).run()
        assert report.unreceipted == 0, report.summary()
        store = open_tsdb(ts_url)
        stored = store.query(device_id=DEVICE, fields=None, start_ms=plan.start_ms, end_ms=plan.end_ms + 1)
        store.close()
        assert len(stored) == report.per_device[DEVICE].produced == 576
        deadline = time.monotonic() + 120  # the worker catches up with the stream (wait for it, not a time)
        while worker.last_scored_ms(DEVICE) < stored[-1].ts_ms and time.monotonic() < deadline:
            time.sleep(0.1)
        assert worker.last_scored_ms(DEVICE) == stored[-1].ts_ms
    finally:
        stop.set()
        thread.join(30)
    cache.close()

    fault = next(lab for lab in read_labels(tmp_path / "labels.jsonl") if lab.kind == "decouple")
    with Session(engine) as session:
        rows = list(session.exec(select(Anomaly).where(Anomaly.device_id == DEVICE)))
        device_eps = [a for a in rows if a.field == DEVICE_FIELD]
        inside = [a for a in device_eps if fault.start_ms <= a.end_ms and a.start_ms <= fault.end_ms]
        assert len(inside) == 1, [a.model_dump() for a in device_eps]
        ep = inside[0]
        assert fault.start_ms < ep.start_ms <= fault.end_ms and ep.detector == "pca" and ep.peak_score > 1
        # Outside the fault the device model fires only on the record radio drops of the simulated
        # physics (one field far out of its range, which the per-field detector judges too).
        for other in device_eps:
            if other is not ep:
                top = anomaly_detail(session, anomaly_id=other.id)["explanation"]["fields"][0]
                assert top["field"] == "signal_strength" and top["value"] < top["normal_low"], top
        # each field stayed in its range: no per-field alert during the fault
        assert not [a for a in rows if a.field != DEVICE_FIELD and fault.start_ms <= a.start_ms <= fault.end_ms]
        detail = anomaly_detail(session, anomaly_id=ep.id)
    expl = detail["explanation"]
    assert expl["kind"] == "device" and expl["model_version"] == 1
    top = [f["field"] for f in expl["fields"][:2]]
    assert set(top) == {"humidity", "temperature"}, expl
    assert sum(f["contribution"] for f in expl["fields"][:2]) > 0.8
    humidity = next(f for f in expl["fields"] if f["field"] == "humidity")
    assert humidity["normal_low"] <= humidity["value"] <= humidity["normal_high"]  # in range, yet wrong
    assert abs(humidity["value"] - humidity["expected"]) > 5
    assert "humidity" in expl["summary"] and detail["links"]["readings"] == f"/v1/analytics/anomalies/{ep.id}/readings"
    # the alert went out on the device's alerts topic, opened then closed
    mine = [orjson.loads(p) for t, p in published if t == f"edu/devices/{DEVICE}/alerts"]
    states = [(m["id"], m["state"]) for m in mine if m["field"] == DEVICE_FIELD]
    assert states == [(a.id, s) for a in device_eps for s in ("open", "closed")]
    # the model learnt online was persisted as version 1 (a restarted worker loads it)
    assert MultivariateStore(tmp_path / "models").versions(device_model_key(DEVICE)) == [1]
