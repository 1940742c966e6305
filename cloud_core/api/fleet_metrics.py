"""Fleet gauges for the dashboards, computed from the registry at scrape time (cached briefly):
devices by liveness, and the fleet's books (readings the devices say they produced, buffered and
dropped, against what the ledger says was stored and rejected).

Every API replica exports the same numbers (they come from the shared database): aggregate them
with ``max``, not ``sum``. ``edu_fleet_ledger_imbalance_readings`` is produced - stored - rejected -
buffered - dropped over the fleet, counting every ledger row (a device re-enrolled with a fresh
buffer makes it negative until its old rows age out); per-device truth is ``iotctl devices ledger``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from ..core.config import CloudSettings
from ..liveness import Liveness, liveness
from ..models import BatchLedger, Device

__all__ = ["FleetCollector"]


class FleetCollector(Collector):
    """``edu_devices{state}``, ``edu_fleet_readings{kind}`` and ``edu_fleet_ledger_imbalance_readings``."""

    def __init__(self, engine: Engine, settings: CloudSettings, *, cache_s: float = 10.0) -> None:
        self._engine = engine
        self._settings = settings
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._at = 0.0
        self._values: tuple[dict[str, int], dict[str, int]] | None = None

    def _compute(self) -> tuple[dict[str, int], dict[str, int]]:
        now = datetime.now(UTC)
        states = {s.value: 0 for s in Liveness}
        books = {"produced": 0, "buffered": 0, "dropped": 0, "stored": 0, "rejected": 0}
        with Session(self._engine) as session:
            for device in session.exec(select(Device).where(Device.status == "active")):
                states[liveness(device, now, self._settings)[0].value] += 1
                health = device.health or {}
                books["produced"] += int(health.get("produced", 0) or 0)
                books["buffered"] += int(health.get("buffer_depth", 0) or 0)
                books["dropped"] += int(health.get("dropped", 0) or 0)
            totals = select(
                func.coalesce(func.sum(BatchLedger.readings), 0),
                func.coalesce(func.sum(BatchLedger.rejected_readings), 0),
            )
            stored, rejected = session.exec(totals).one()
        books["stored"], books["rejected"] = int(stored), int(rejected)
        return states, books

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if self._values is None or time.monotonic() - self._at > self._cache_s:
                try:
                    self._values = self._compute()
                    self._at = time.monotonic()
                except Exception:  # the database is down: /ready says so; export nothing stale
                    self._values = None
            values = self._values
        if values is None:
            return
        states, books = values
        devices = GaugeMetricFamily(
            "edu_devices", "Active devices by liveness (online, stale, offline).", labels=["state"]
        )
        for state, n in states.items():
            devices.add_metric([state], n)
        yield devices
        readings = GaugeMetricFamily(
            "edu_fleet_readings",
            "Fleet readings: produced, buffered, dropped (devices' health) and stored, rejected (ledger).",
            labels=["kind"],
        )
        for kind, n in books.items():
            readings.add_metric([kind], n)
        yield readings
        imbalance = books["produced"] - books["stored"] - books["rejected"] - books["buffered"] - books["dropped"]
        yield GaugeMetricFamily(
            "edu_fleet_ledger_imbalance_readings",
            "Readings produced but neither stored, rejected, buffered nor dropped: in flight, or lost.",
            value=imbalance,
        )
