"""FastAPI routes of analytics: ``GET /v1/analytics/summary``; anomaly episodes: ``GET
/v1/analytics/anomalies`` (list), ``GET /v1/analytics/anomalies/{id}`` (one, with its explanation,
links and label), ``GET /v1/analytics/anomalies/{id}/readings`` (the readings around it), ``POST
/v1/analytics/anomalies/{id}/label`` (a true or a false alarm) and ``GET /v1/analytics/feedback``
(the precision those labels give per device type).

The app includes :data:`router` and provides, on ``app.state``: ``tsdb`` (a TimeSeriesStore),
``cache`` (a Cache) and ``ctx.engine`` (the metadata engine); ``analytics_summary_ttl_s`` is
optional (default 60 s).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from iot_protocol.errors import TopicError
from iot_protocol.topics import validate_device_id

from ..api.deps import P, require
from ..auth.access import Principal, authorize_device, visible_device_ids
from .errors import AnomalyNotFound
from .explain import CONTEXT_MS
from .feedback import anomaly_detail, feedback_precision, label_anomaly
from .models import DEVICE_FIELD, Anomaly
from .summary import summary

__all__ = ["router"]

router = APIRouter(prefix="/v1/analytics", tags=["analytics"])


@router.get("/summary")
def get_summary(
    request: Request,
    _p: Annotated[Principal, Depends(require(P.READ_DATA, device="device_id"))],
    device_id: str = Query(..., description="Device id"),
    hours: float = Query(24.0, gt=0, le=24 * 366, description="Look back this many hours"),
) -> dict[str, Any]:
    try:
        validate_device_id(device_id)
    except TopicError as exc:
        raise HTTPException(422, f"invalid device_id: {exc}") from None
    state = request.app.state
    ttl = float(getattr(state, "analytics_summary_ttl_s", 60.0))
    return asdict(summary(state.tsdb, state.cache, device_id, hours, ttl_s=ttl))


@router.get("/anomalies")
def list_anomalies(
    request: Request,
    p: Annotated[Principal, Depends(require(P.READ_DATA))],
    device_id: str | None = Query(None, max_length=64),
    limit: int = Query(100, gt=0, le=1000),
) -> list[dict[str, Any]]:
    """Anomaly episodes, newest first, of the devices you may read (or of ``device_id``)."""
    with Session(request.app.state.ctx.engine) as session:
        stmt = select(Anomaly).order_by(col(Anomaly.start_ms).desc()).limit(limit)
        if device_id:
            authorize_device(session, p, device_id, P.READ_DATA)
            stmt = stmt.where(Anomaly.device_id == device_id)
        else:
            visible = visible_device_ids(session, p)
            if visible is not None:
                stmt = stmt.where(col(Anomaly.device_id).in_(visible))
        return [a.to_public() for a in session.exec(stmt)]


@router.get("/anomalies/{anomaly_id}", dependencies=[Depends(require(P.READ_DATA, anomaly="anomaly_id"))])
def get_anomaly(request: Request, anomaly_id: int) -> dict[str, Any]:
    """One episode with its explanation, links to the readings around it, and its label."""
    with Session(request.app.state.ctx.engine) as session:
        try:
            return anomaly_detail(session, anomaly_id=anomaly_id)
        except AnomalyNotFound as exc:
            raise HTTPException(404, str(exc)) from None


@router.get("/anomalies/{anomaly_id}/readings", dependencies=[Depends(require(P.READ_DATA, anomaly="anomaly_id"))])
def anomaly_readings(request: Request, anomaly_id: int, limit: int = Query(2000, gt=0, le=20_000)) -> dict[str, Any]:
    """The device's readings from an hour before the episode to an hour after it (the episode's
    field only, unless it is a device episode), oldest first."""
    with Session(request.app.state.ctx.engine) as session:
        row = session.get(Anomaly, anomaly_id)
    if row is None:
        raise HTTPException(404, str(AnomalyNotFound(anomaly_id)))
    fields = None if row.field == DEVICE_FIELD else [row.field]
    start, end = row.start_ms - CONTEXT_MS, row.end_ms + CONTEXT_MS
    store = request.app.state.tsdb
    rows = store.query(device_id=row.device_id, fields=fields, start_ms=start, end_ms=end + 1, limit=limit)
    return {
        "anomaly_id": anomaly_id, "device_id": row.device_id, "start_ms": start, "end_ms": end,
        "readings": [{"ts_ms": r.ts_ms, "values": dict(r.values)} for r in rows],
    }  # fmt: skip


class LabelIn(BaseModel):
    """A person's verdict on an episode."""

    true_alarm: bool = Field(description="true: a real problem; false: a false alarm.")
    note: str = Field("", max_length=500)


# Labelling changes what the platform records about a device's alerts: it needs write access to the
# device (its owner, its class's teacher, an operator), not only reading it.
@router.post("/anomalies/{anomaly_id}/label", dependencies=[Depends(require(P.WRITE_DEVICES, anomaly="anomaly_id"))])
def label_episode(request: Request, anomaly_id: int, body: LabelIn) -> dict[str, Any]:
    """Mark an episode a true or a false alarm (labelling again replaces the label); returns the episode."""
    with Session(request.app.state.ctx.engine) as session:
        try:
            label_anomaly(session, anomaly_id=anomaly_id, true_alarm=body.true_alarm, note=body.note, source="api")
            return anomaly_detail(session, anomaly_id=anomaly_id)
        except AnomalyNotFound as exc:
            raise HTTPException(404, str(exc)) from None


@router.get("/feedback")
def feedback(
    request: Request,
    p: Annotated[Principal, Depends(require(P.READ_DATA))],
    hours: float | None = Query(None, gt=0, le=24 * 3660, description="Only episodes of the last hours"),
) -> list[dict[str, Any]]:
    """Precision of the labelled alerts per device type, over the devices you may read."""
    import time

    since = int(time.time() * 1000 - hours * 3_600_000) if hours is not None else None
    with Session(request.app.state.ctx.engine) as session:
        rows = feedback_precision(session, since_ms=since, device_ids=visible_device_ids(session, p))
    return [{**asdict(r), "precision": r.precision} for r in rows]
