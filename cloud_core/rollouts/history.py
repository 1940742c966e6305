"""The rollout history and audit trail: every rollout and release event goes through :func:`record`
(one row in ``rollout_events`` and one JSON log line), so forwarding them to a platform-wide audit
log later is a change here only."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlmodel import Session, col, select

from .models import RolloutEvent

__all__ = ["ENGINE", "events", "record"]

log = logging.getLogger("cloud_core.rollouts.audit")

ENGINE = "engine"  # the actor of what the engine does by itself


def record(
    session: Session,
    *,
    kind: str,
    actor: str | None,
    rollout_id: int | None = None,
    device_id: str | None = None,
    **detail: Any,
) -> RolloutEvent:
    """Add one event (the caller commits with the change it describes).

    Args:
        kind: what happened: ``created``, ``wave_started``, ``device_updated``, ``device_state``,
            ``gate_failed``, ``paused``, ``resumed``, ``aborted``, ``rollback_sent``, ``completed``,
            ``release_created``, ``artifact_uploaded``...
        actor: the user who did it, or :data:`ENGINE`.
        detail: JSON-ready facts (reason, wave, state, versions).
    """
    event = RolloutEvent(rollout_id=rollout_id, device_id=device_id, kind=kind, actor=actor, detail=detail)
    session.add(event)
    log.info(
        "rollout event",
        extra={"event": kind, "actor": actor, "rollout_id": rollout_id, "device_id": device_id, "detail": detail},
    )
    return event


def events(
    session: Session, *, rollout_id: int | None = None, device_id: str | None = None, limit: int = 500
) -> Sequence[RolloutEvent]:
    """Events of one rollout and/or one device, oldest first (the last ``limit``)."""
    query = select(RolloutEvent).order_by(col(RolloutEvent.id).desc()).limit(limit)
    if rollout_id is not None:
        query = query.where(RolloutEvent.rollout_id == rollout_id)
    if device_id is not None:
        query = query.where(RolloutEvent.device_id == device_id)
    return list(reversed(session.exec(query).all()))
