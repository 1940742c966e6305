"""FastAPI routes of analytics: ``GET /v1/analytics/summary`` and ``GET /v1/analytics/anomalies``.

The app includes :data:`router` and provides, on ``app.state``: ``tsdb`` (a TimeSeriesStore),
``cache`` (a Cache) and ``ctx.engine`` (the metadata engine); ``analytics_summary_ttl_s`` is
optional (default 60 s).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from sqlmodel import Session, col, select

from iot_protocol.errors import TopicError
from iot_protocol.topics import validate_device_id

from ..api.deps import P, require
from ..auth.access import Principal, authorize_device, visible_device_ids
from .models import Anomaly
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
