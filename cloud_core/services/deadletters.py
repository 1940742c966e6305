"""Reading the bridge's dead letters (``rejected_messages``): a device's recent ones with their
reasons, and counts per device since a moment (the console's fleet page). The bridge writes them
(:mod:`broker_bridge.deadletter`); this module only reads."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import func
from sqlmodel import Session, col, select

from ..models import RejectedMessage

__all__ = ["DeadLetterPublic", "count_by_device", "recent_dead_letters"]


class DeadLetterPublic(BaseModel):
    """One rejection, without the payload bytes."""

    id: int
    device_id: str | None
    topic: str
    reason: str
    detail: str | None
    seq: int | None
    reading_index: int | None
    received_at: datetime
    payload_sha256: str


def recent_dead_letters(session: Session, *, device_id: str, limit: int = 50) -> list[DeadLetterPublic]:
    """The device's newest dead letters first."""
    rows = session.exec(
        select(RejectedMessage)
        .where(RejectedMessage.device_id == device_id)
        .order_by(col(RejectedMessage.received_at).desc(), col(RejectedMessage.id).desc())
        .limit(limit)
    ).all()
    return [DeadLetterPublic.model_validate(r, from_attributes=True) for r in rows]


def count_by_device(session: Session, *, since: datetime, device_ids: Collection[str] | None = None) -> dict[str, int]:
    """Dead letters received since ``since``, per device (only ``device_ids`` when given)."""
    stmt = (
        select(RejectedMessage.device_id, func.count())
        .where(col(RejectedMessage.received_at) >= since, col(RejectedMessage.device_id).is_not(None))
        .group_by(col(RejectedMessage.device_id))
    )
    if device_ids is not None:
        stmt = stmt.where(col(RejectedMessage.device_id).in_(list(device_ids)))
    return {str(d): int(n) for d, n in session.exec(stmt)}
