"""What the gates are fed: ``measure`` over real metadata databases (SQLite and PostgreSQL) holding
the rows the bridge, the analytics worker and the device-events consumer write: ledger batches,
dead letters, anomaly episodes, liveness, and readings in the time-series store for field guards."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from cloud_core.analytics.models import Anomaly
from cloud_core.core.config import CloudSettings
from cloud_core.core.db import create_all, make_engine
from cloud_core.models import BatchLedger, Device, RejectedMessage, utcnow
from cloud_core.rollouts.gates import evaluate, parse_abort_if
from cloud_core.rollouts.measure import measure
from cloud_core.rollouts.models import Rollout, RolloutDevice
from cloud_core.tsdb import Point, open_tsdb


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.mark.integration
def test_measure_counts_the_cohort_and_the_control_over_the_wave(db_url: str, tmp_path: Path) -> None:
    engine = make_engine(db_url)
    create_all(engine)
    tsdb = open_tsdb(f"sqlite:///{tmp_path / 'readings.db'}")
    settings = CloudSettings(state_dir=tmp_path, stale_after_s=30, offline_after_s=60)
    now = utcnow()
    since = now - timedelta(minutes=5)
    before = since - timedelta(minutes=5)  # rows from before the wave must not count
    cohort_ids, control_ids = ["c0", "c1", "c2", "c3"], ["k0", "k1", "k2", "k3"]
    try:
        with Session(engine, expire_on_commit=False) as s:
            for d in cohort_ids + control_ids:
                silent = d in ("c3", "k3")  # one of each went quiet 2 minutes ago
                s.add(
                    Device(
                        id=d,
                        status="active",
                        presence="online",
                        last_health_at=now - timedelta(minutes=2 if silent else 0),
                    )
                )
            s.add(Rollout(id=1, name="r", kind="config", waves=[50.0, 100.0]))
            s.commit()
            states = {"c0": "applied", "c1": "applied", "c2": "failed", "c3": "applied"}
            rows = [RolloutDevice(rollout_id=1, device_id=d, wave=0, rank=i, state=states[d], online_at_start=True,
                                  error="config v2 rejected: x" if d == "c2" else None)
                    for i, d in enumerate(cohort_ids)]  # fmt: skip
            rows += [RolloutDevice(rollout_id=1, device_id=d, wave=1, rank=4 + i, online_at_start=True)
                     for i, d in enumerate(control_ids)]  # fmt: skip
            s.add_all(rows)
            for d in cohort_ids + control_ids:  # 100 readings stored per device in the wave, 50 before
                s.add(
                    BatchLedger(
                        device_id=d, seq=1, batch_id=f"{d}-1", payload_sha256="0" * 64, readings=50, stored_at=before
                    )
                )
                s.add(BatchLedger(device_id=d, seq=2, batch_id=f"{d}-2", payload_sha256="0" * 64, readings=100,
                                  rejected_readings=10 if d == "c0" else 0, stored_at=now))  # fmt: skip
            s.add(
                RejectedMessage(
                    device_id="c1", topic="t", reason="bad_signature", payload_sha256="0" * 64, received_at=now
                )
            )
            s.add(
                RejectedMessage(
                    device_id="c1", topic="t", reason="bad_signature", payload_sha256="0" * 64, received_at=before
                )
            )
            for d, at in (("c0", now), ("c1", now), ("c0", before), ("k0", now)):
                s.add(Anomaly(device_id=d, field="temperature", detector="robust_z", start_ms=0, end_ms=0, peak_ms=0,
                              peak_score=2.0, created_at=at))  # fmt: skip
            s.commit()
            devices = {d.id: d for d in s.exec(select(Device)).all()}
        ms = int(now.timestamp() * 1000)
        tsdb.write([Point("c1", "environment", "x", ms - 1000, {"temperature": 50.0}),
                    Point("c0", "environment", "x", ms - 1000, {"temperature": 20.0}),
                    Point("k0", "environment", "x", ms - 1000, {"temperature": 60.0})])  # fmt: skip
        gates = parse_abort_if(["temperature>45"])
        with Session(engine) as s:
            kw = {"since": since, "now": now, "timings": settings, "gates": gates, "tsdb": tsdb}
            c = measure(s, rows=rows[:4], devices=devices, cohort=True, **kw)  # type: ignore[arg-type]
            k = measure(s, rows=rows[4:], devices=devices, cohort=False, **kw)  # type: ignore[arg-type]
        assert (c.devices, c.failed, c.failures) == (4, 1, ("c2: config v2 rejected: x",))
        assert (c.online_base, c.offline) == (3, 1)  # done devices online at the start; c3 went stale
        assert (c.messages, c.rejected) == (4 * 100 + 10 + 1, 10 + 1)  # readings and whole messages, in the wave only
        assert (c.anomalies, c.anomaly_base) == (2, 4)
        assert (c.guard_base, dict(c.guard_violations)) == (2, {"temperature": 1})  # c1 sent 50 > 45; k0 is control
        assert (k.devices, k.online_base, k.offline, k.rejected, k.anomalies) == (4, 4, 1, 0, 1)
        verdict = evaluate(gates, c, k)
        assert verdict is not None and verdict.gate == "failed"  # 1 of 4 failed: 25% > 10%
    finally:
        tsdb.close()
        engine.dispose()
