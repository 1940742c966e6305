"""The analytics worker against a real Redis stream: episodes stored, published, acked; summary cache."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from sqlmodel import Session, select

from cloud_core.analytics.models import Anomaly
from cloud_core.analytics.settings import AnalyticsSettings
from cloud_core.analytics.worker import AnalyticsWorker
from cloud_core.cache import open_cache
from cloud_core.core.db import make_engine

pytestmark = pytest.mark.integration


def test_worker_scores_stream_and_stores_one_episode_per_spike(redis_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sqlmodel import SQLModel

    engine = make_engine(f"sqlite:///{tmp_path}/meta.db")
    SQLModel.metadata.create_all(engine, tables=[Anomaly.__table__])  # type: ignore[attr-defined]
    cache = open_cache(redis_url)
    published: list[tuple[str, bytes]] = []
    settings = AnalyticsSettings(consumer="w1", batch=200, block_ms=0, cooldown_s=600)
    worker = AnalyticsWorker(settings, cache, engine, publish=lambda t, p: published.append((t, p)))
    worker.ensure_group()
    rng = np.random.default_rng(0)
    values = 21 + rng.normal(0, 0.2, 1000)
    values[700] = 35.0  # one spike
    t0 = 1_700_000_000_000
    for i, v in enumerate(values.tolist()):
        cache.stream_add(
            settings.stream,
            {
                "device_id": "dev-1",
                "sensor_type": "bme280",
                "ts": str(t0 + i * 60_000),
                "values": orjson.dumps({"temperature": v}).decode(),
            },
        )
    while worker.poll(block_ms=0):
        pass
    worker.flush()
    with Session(engine) as s:
        rows = list(s.exec(select(Anomaly)))
    assert len(rows) == 1, [r.model_dump() for r in rows]
    a = rows[0]
    assert (a.device_id, a.field, a.detector, a.status, a.start_ms, a.values) == (
        "dev-1",
        "temperature",
        "robust_z",
        "closed",
        t0 + 700 * 60_000,
        [35.0],
    )
    assert [p[0] for p in published] == ["edu/devices/dev-1/alerts"] * 2  # opened, then closed
    assert orjson.loads(published[0][1])["state"] == "open"
    from iot_protocol import decode_alert

    opened, closed = (decode_alert(p[1]) for p in published)  # the wire contract's Alert
    assert (opened.state, closed.state, opened.id, opened.detector, opened.values) == (
        "open", "closed", a.id, "robust_z", (35.0,)
    )  # fmt: skip
    # everything acked: a second worker of the group gets nothing
    other = AnalyticsWorker(AnalyticsSettings(consumer="w2", block_ms=0), cache, engine)
    assert other.poll(block_ms=0) == 0
    cache.close()


def test_worker_command_runs_in_its_own_process_and_stops_on_sigterm(redis_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`iotctl anomalies worker`, as a production deployment runs it, stores an episode from the stream."""
    import signal
    import subprocess
    import sys
    import time

    db = f"sqlite:///{tmp_path}/meta.db"
    cache = open_cache(redis_url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "iotctl", "anomalies", "worker", "--cache-url", redis_url, "--db", db,
         "--metrics-port", "0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        rng = np.random.default_rng(1)
        values = 21 + rng.normal(0, 0.2, 600)
        values[500] = 35.0
        t0 = 1_700_000_000_000
        for i, v in enumerate(values.tolist()):
            fields = {"device_id": "dev-9", "sensor_type": "bme280", "ts": str(t0 + i * 60_000),
                      "values": orjson.dumps({"temperature": v}).decode()}  # fmt: skip
            cache.stream_add("edu:readings", fields)
        engine = make_engine(db)
        deadline = time.monotonic() + 60
        rows: list[Anomaly] = []
        while time.monotonic() < deadline and not rows:
            time.sleep(0.5)
            try:
                with Session(engine) as s:
                    rows = list(s.exec(select(Anomaly)))
            except Exception:  # the worker has not created the table yet
                rows = []
        assert [(a.device_id, a.start_ms) for a in rows] == [("dev-9", t0 + 500 * 60_000)]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_dead_workers_entries_are_claimed_and_processed_by_another(redis_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Worker A reads a batch and dies before acking; after claim_idle_s worker B claims and scores it."""
    import time

    from sqlmodel import SQLModel

    engine = make_engine(f"sqlite:///{tmp_path}/meta.db")
    SQLModel.metadata.create_all(engine, tables=[Anomaly.__table__])  # type: ignore[attr-defined]
    cache = open_cache(redis_url)
    a = AnalyticsSettings(consumer="a", batch=1000, block_ms=0, cooldown_s=600, claim_idle_s=0.3)
    AnalyticsWorker(a, cache, engine).ensure_group()
    rng = np.random.default_rng(2)
    values = 21 + rng.normal(0, 0.2, 400)
    values[300] = 35.0
    t0 = 1_700_000_000_000
    for i, v in enumerate(values.tolist()):
        cache.stream_add(a.stream, {"device_id": "dev-3", "sensor_type": "bme280", "ts": str(t0 + i * 60_000),
                                    "values": orjson.dumps({"temperature": v}).decode()})  # fmt: skip
    taken = cache.stream_read_group(a.stream, a.group, "a", count=1000)  # A reads, then dies
    assert len(taken) == 400
    b = AnalyticsWorker(AnalyticsSettings(consumer="b", batch=1000, block_ms=0, cooldown_s=600, claim_idle_s=0.3),
                        cache, engine)  # fmt: skip
    assert b.poll(block_ms=0) == 0  # nothing new, and A's entries are not idle long enough yet
    deadline = time.monotonic() + 10
    handled = 0
    while time.monotonic() < deadline and handled < 400:
        handled += b.poll(block_ms=0)
        time.sleep(0.05)
    assert handled == 400
    b.flush()
    with Session(engine) as s:
        rows = list(s.exec(select(Anomaly)))
    assert [(r.device_id, r.start_ms, r.values) for r in rows] == [("dev-3", t0 + 300 * 60_000, [35.0])]
    assert cache.stream_read_group(a.stream, a.group, "a", pending=True) == []  # all acked by B
    assert cache.stream_read_group(a.stream, a.group, "b", pending=True) == []
    cache.close()


def test_parse_entry_reads_both_stream_entry_forms() -> None:
    """The bridge's form (one entry per device per flush, its readings as JSON) and single readings."""
    from cloud_core.analytics.worker import parse_entry

    assert parse_entry({"device_id": "d1", "readings": '[{"ts":5,"sensor_type":"x","values":{"a":1}}]'}) == [
        ("d1", "x", 5, {"a": 1})
    ]
    single = {"device_id": "d1", "sensor_type": "x", "ts": "6", "values": '{"a":2}'}
    assert parse_entry(single) == [("d1", "x", 6, {"a": 2})]
