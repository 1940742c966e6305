"""The anomalies table holds real episodes on both metadata stores (SQLite and PostgreSQL)."""

from __future__ import annotations

import time

import pytest
from sqlmodel import Session, select

from cloud_core.analytics.models import Anomaly
from cloud_core.core.db import create_all, make_engine

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_an_episode_with_todays_timestamps_is_stored_and_read_back(store: str, request, tmp_path) -> None:
    """Timestamps are milliseconds since the epoch (about 1.8e12 today): PostgreSQL refused them in a
    32-bit INTEGER column, so the analytics worker died on its first anomaly there."""
    url = f"sqlite:///{tmp_path / 'meta.db'}" if store == "sqlite" else request.getfixturevalue("pg_url")
    engine = make_engine(url)
    try:
        create_all(engine)
        now = int(time.time() * 1000)
        with Session(engine) as s:
            s.add(Anomaly(device_id="d", field="temperature", detector="robust_z", start_ms=now - 60_000,
                          end_ms=now, peak_ms=now - 30_000, peak_score=3.5, count=2, values=[35.0, 36.0]))  # fmt: skip
            s.commit()
        with Session(engine) as s:
            got = s.exec(select(Anomaly)).one()
        assert (got.start_ms, got.end_ms, got.peak_ms, got.values) == (now - 60_000, now, now - 30_000, [35.0, 36.0])
    finally:
        engine.dispose()
