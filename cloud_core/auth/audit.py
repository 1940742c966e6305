"""The audit log: every change to devices, configs, users, grants, keys, classes and quotas, with who,
what, when, and the state before and after. Append-only: database triggers (migration 0002) refuse
UPDATE and DELETE on ``audit_log``.

An entry is written in the same transaction as its change: :func:`stage` adds it when the session
commits (so a service that commits on its own, like the device registry, still carries the entry
with its change), and drops it when the session rolls back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import event
from sqlmodel import Session, col, select

from .access import Principal
from .models import AuditEntry

__all__ = ["list_entries", "record", "snapshot", "stage"]

_PENDING = "edu_audit_pending"
_SECRETS = {"password_hash", "token", "token_hash", "private_pem", "public_key", "payload"}

Snapshot = dict[str, Any] | None


def snapshot(obj: Any, *, fields: Sequence[str] | None = None) -> dict[str, Any] | None:
    """A JSON-able picture of a row for before/after (secrets left out)."""
    if obj is None:
        return None
    data = obj.model_dump(mode="json") if hasattr(obj, "model_dump") else dict(obj)
    keep = fields or [k for k in data if k not in _SECRETS]
    return {k: data.get(k) for k in keep}


def _actor(actor: Principal | str | None) -> tuple[int | None, str]:
    if isinstance(actor, Principal):
        return actor.user_id, actor.actor
    return None, actor or "system"


def record(
    session: Session,
    *,
    actor: Principal | str | None,
    action: str,
    target_type: str,
    target_id: str | int,
    before: Snapshot = None,
    after: Snapshot = None,
) -> AuditEntry:
    """Add an entry to ``session`` now (the caller commits it with the change)."""
    actor_id, name = _actor(actor)
    entry = AuditEntry(
        actor_id=actor_id,
        actor=name[:160],
        action=action,
        target_type=target_type,
        target_id=str(target_id)[:128],
        before=before,
        after=after,
    )
    session.add(entry)
    return entry


def _before_commit(session: Session) -> None:
    pending: list[Callable[[], None]] = session.info.pop(_PENDING, [])
    for add in pending:
        add()


def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


def stage(
    session: Session,
    *,
    actor: Principal | str | None,
    action: str,
    target_type: str,
    target_id: str | int,
    before: Snapshot = None,
    after: Callable[[], Snapshot] | Snapshot = None,
) -> None:
    """Add an entry when ``session`` next commits (``after`` may be a function, called then, to
    picture the row as committed); nothing when it rolls back first."""
    if not event.contains(session, "before_commit", _before_commit):
        event.listen(session, "before_commit", _before_commit)
        event.listen(session, "after_rollback", _after_rollback)

    def add() -> None:
        record(
            session,
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            before=before,
            after=after() if callable(after) else after,
        )

    session.info.setdefault(_PENDING, []).append(add)


def list_entries(
    session: Session,
    *,
    since: datetime | None = None,
    action: str | None = None,
    actor: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    limit: int = 100,
) -> Sequence[AuditEntry]:
    """Newest first."""
    query = select(AuditEntry).order_by(col(AuditEntry.id).desc()).limit(limit)
    if since is not None:
        query = query.where(col(AuditEntry.at) >= since)
    if action:
        query = query.where(col(AuditEntry.action).startswith(action))
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if target_type:
        query = query.where(AuditEntry.target_type == target_type)
    if target_id:
        query = query.where(AuditEntry.target_id == target_id)
    return session.exec(query).all()
