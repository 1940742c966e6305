"""``GET /v1/audit``: the audit log, newest first (admins)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from ...auth.audit import list_entries
from ..deps import Admin, SessionDep

router = APIRouter(prefix="/v1", tags=["audit"])


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor_id: int | None
    actor: str
    action: str
    target_type: str
    target_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


@router.get("/audit", response_model=list[AuditOut])
def get_audit(
    _p: Admin,
    session: SessionDep,
    since: datetime | None = None,
    action: str | None = Query(None, max_length=64, description="Prefix, e.g. 'device.' or 'user.disable'."),
    actor: str | None = Query(None, max_length=160),
    target_type: str | None = Query(None, max_length=32),
    target_id: str | None = Query(None, max_length=128),
    limit: int = Query(100, gt=0, le=10_000),
) -> list[AuditOut]:
    rows = list_entries(
        session, since=since, action=action, actor=actor, target_type=target_type, target_id=target_id, limit=limit
    )
    return [AuditOut.model_validate(r, from_attributes=True) for r in rows]
