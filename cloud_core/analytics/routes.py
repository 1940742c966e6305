"""FastAPI routes of analytics: ``GET /v1/analytics/summary`` and ``GET /v1/analytics/anomalies``.

The app includes :data:`router` and provides, on ``app.state``: ``tsdb`` (a TimeSeriesStore),
``cache`` (a Cache) and ``ctx.engine`` (the metadata engine); ``analytics_summary_ttl_s`` is
optional (default 60 s).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from sqlmodel import Session, col, select

from iot_protocol.errors import TopicError
from iot_protocol.topics import validate_device_id

from .models import Anomaly
from .summary import summary

__all__ = ["router"]

router = APIRouter(prefix="/v1/analytics", tags=["analytics"])


@router.get("/summary")
def get_summary(
    request: Request,
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
    device_id: str | None = Query(None),
    limit: int = Query(100, gt=0, le=1000),
) -> list[dict[str, Any]]:
    with Session(request.app.state.ctx.engine) as session:
        stmt = select(Anomaly).order_by(col(Anomaly.start_ms).desc()).limit(limit)
        if device_id:
            stmt = stmt.where(Anomaly.device_id == device_id)
        return [a.to_public() for a in session.exec(stmt)]
