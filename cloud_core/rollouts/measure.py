"""Measuring a cohort of devices for the health gates, from what the platform already records:
liveness on the ``devices`` rows, the bridge's batch ledger and dead letters, anomaly episodes,
and (for field guards) the readings in the time-series store."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from ..analytics.models import Anomaly
from ..liveness import Liveness, liveness
from ..models import BatchLedger, Device, RejectedMessage
from ..tsdb import StoreError, TimeSeriesStore
from .gates import CohortStats, Gates
from .models import RolloutDevice

__all__ = ["DONE", "measure"]

log = logging.getLogger(__name__)

DONE = ("applied", "confirmed")
_GUARD_WINDOW_S = 10**7  # one aggregation bucket covering any wave (buckets align to the epoch)
_FUTURE_SKEW_MS = 300_000


def _ids(rows: Sequence[RolloutDevice]) -> list[str]:
    return [r.device_id for r in rows]


def _traffic(session: Session, ids: Collection[str], since: datetime) -> tuple[int, int]:
    """(readings and whole messages seen, of which rejected) for ``ids`` since ``since``."""
    if not ids:
        return 0, 0
    stored, rejected_readings = session.exec(
        select(
            func.coalesce(func.sum(BatchLedger.readings), 0), func.coalesce(func.sum(BatchLedger.rejected_readings), 0)
        ).where(col(BatchLedger.device_id).in_(ids), BatchLedger.stored_at >= since)
    ).one()
    whole = session.exec(
        select(func.count())
        .select_from(RejectedMessage)
        .where(
            col(RejectedMessage.device_id).in_(ids),
            RejectedMessage.received_at >= since,
            col(RejectedMessage.reading_index).is_(None),
        )
    ).one()
    rejected = int(rejected_readings) + int(whole)
    return int(stored) + rejected, rejected


def _anomalies(session: Session, ids: Collection[str], since: datetime) -> int:
    if not ids:
        return 0
    return int(
        session.exec(
            select(func.count())
            .select_from(Anomaly)
            .where(col(Anomaly.device_id).in_(ids), Anomaly.created_at >= since)
        ).one()
    )


def _guards(
    tsdb: TimeSeriesStore | None, gates: Gates, ids: Collection[str], since: datetime, now: datetime
) -> tuple[int, dict[str, int]]:
    """(devices with readings, field -> devices with a reading outside the guard)."""
    if tsdb is None or not gates.guards or not ids:
        return 0, {}
    wanted = set(ids)
    start_ms = int(since.timestamp() * 1000)
    end_ms = int(now.timestamp() * 1000) + _FUTURE_SKEW_MS
    seen: set[str] = set()
    bad: dict[str, int] = {}
    try:
        for guard in gates.guards:
            lows: dict[str, float] = {}
            highs: dict[str, float] = {}
            for agg, into in (("min", lows), ("max", highs)):
                rows = tsdb.query(
                    device_id=None,
                    fields=[guard.field],
                    start_ms=start_ms,
                    end_ms=end_ms,
                    window_s=_GUARD_WINDOW_S,
                    agg=agg,
                )
                for r in rows:
                    v = r.values.get(guard.field)
                    if r.device_id not in wanted or v is None:
                        continue
                    seen.add(r.device_id)
                    prev = into.get(r.device_id)
                    into[r.device_id] = v if prev is None else (min(prev, v) if agg == "min" else max(prev, v))
            out = {
                d
                for d in seen
                if (guard.min is not None and lows.get(d, guard.min) < guard.min)
                or (guard.max is not None and highs.get(d, guard.max) > guard.max)
            }
            bad[guard.field] = len(out)
    except (StoreError, ValueError) as exc:
        log.warning("field guards not measured: %s", exc)
        return 0, {}
    return len(seen), bad


def measure(
    session: Session,
    *,
    rows: Sequence[RolloutDevice],
    devices: Mapping[str, Device],
    cohort: bool,
    since: datetime,
    now: datetime,
    timings: object,
    gates: Gates,
    tsdb: TimeSeriesStore | None,
) -> CohortStats:
    """Stats of ``rows`` (the cohort: devices updated so far; or the control: devices not yet
    updated) over ``[since, now]``. ``timings`` has ``stale_after_s`` and ``offline_after_s``."""
    if cohort:
        counted = [r for r in rows if r.state not in ("pending", "waiting")]
        failed = [r for r in counted if r.state == "failed"]
        base = [r for r in counted if r.state in DONE and r.online_at_start]
    else:
        counted, failed = list(rows), []
        base = [r for r in rows if r.online_at_start]
    offline = 0
    for r in base:
        device = devices.get(r.device_id)
        if device is None or liveness(device, now, timings)[0] is not Liveness.ONLINE:  # type: ignore[arg-type]
            offline += 1
    ids = _ids(counted)
    messages, rejected = _traffic(session, ids, since)
    guard_base, violations = _guards(tsdb, gates, ids, since, now)
    return CohortStats(
        devices=len(counted),
        failed=len(failed),
        online_base=len(base),
        offline=offline,
        messages=messages,
        rejected=rejected,
        anomalies=_anomalies(session, ids, since),
        anomaly_base=len(ids),
        guard_base=guard_base,
        guard_violations=violations,
        failures=tuple(f"{r.device_id}: {r.error or 'failed'}" for r in failed),
    )
