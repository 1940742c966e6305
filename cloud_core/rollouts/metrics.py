"""Prometheus metrics of rollouts, on the API's registry: rollouts by status, devices by state per
active rollout (read from the database at scrape time), aborts by gate, waves started, artifact
bytes served, and whether this replica runs the engine."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from .models import ACTIVE_STATUSES, Rollout, RolloutDevice

__all__ = ["RolloutMetrics"]


class _StateCollector(Collector):
    def __init__(self, db: Engine) -> None:
        self._db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_status = GaugeMetricFamily("edu_rollouts", "Rollouts by status.", labels=["status"])
        devices = GaugeMetricFamily(
            "edu_rollout_devices", "Devices of active rollouts by state.", labels=["rollout_id", "state"]
        )
        try:
            with Session(self._db) as session:
                for status, n in session.exec(select(Rollout.status, func.count()).group_by(Rollout.status)).all():
                    by_status.add_metric([status], n)
                active = select(Rollout.id).where(col(Rollout.status).in_(ACTIVE_STATUSES))
                rows = session.exec(
                    select(RolloutDevice.rollout_id, RolloutDevice.state, func.count())
                    .where(col(RolloutDevice.rollout_id).in_(active))
                    .group_by(RolloutDevice.rollout_id, RolloutDevice.state)
                ).all()
                for rollout_id, state, n in rows:
                    devices.add_metric([str(rollout_id), state], n)
        except Exception:  # a scrape must not fail because the database blinked
            pass
        yield by_status
        yield devices


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry, db: Engine) -> None:
        self.aborts = Counter(
            "edu_rollout_aborts", "Rollouts aborted, by the gate that failed.", ["gate"], registry=registry
        )
        self.waves = Counter("edu_rollout_waves_started", "Rollout waves started.", registry=registry)
        self.updates = Counter(
            "edu_rollout_device_updates",
            "Desired configs sent by rollouts, by purpose.",
            ["purpose"],
            registry=registry,
        )
        self.artifact_bytes = Counter(
            "edu_release_artifact_bytes_served", "Artifact bytes sent to devices.", registry=registry
        )
        self.downloads = Counter(
            "edu_release_downloads", "Artifact download requests by outcome.", ["outcome"], registry=registry
        )
        self.engine_active = Gauge(
            "edu_rollout_engine_active", "1 while this replica holds the rollout engine's lease.", registry=registry
        )
        registry.register(_StateCollector(db))
