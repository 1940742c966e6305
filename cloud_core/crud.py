"""Keyword-only create/read/update functions on the registry's tables (users, keys and grants:
:mod:`cloud_core.auth`). They add and flush; the caller
owns the transaction (commit or roll back)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_
from sqlmodel import Session, col, select

from .models import Device, DeviceConfig, DeviceCreate, EnrollmentToken, utcnow

__all__ = [
    "create_config",
    "create_device",
    "create_enrollment_token",
    "desired_settings",
    "get_config",
    "get_device",
    "get_enrollment_token",
    "latest_config",
    "list_devices",
    "revoke_enrollment_tokens",
]


# ---- devices -------------------------------------------------------------------------------------


def get_device(session: Session, *, device_id: str) -> Device | None:
    return session.get(Device, device_id)


def list_devices(session: Session, *, status: str | None = None) -> Sequence[Device]:
    query = select(Device).order_by(col(Device.id))
    if status is not None:
        query = query.where(Device.status == status)
    return session.exec(query).all()


def create_device(session: Session, *, device_in: DeviceCreate) -> Device:
    device = Device.model_validate(device_in)
    session.add(device)
    session.flush()
    return device


# ---- enrollment tokens ---------------------------------------------------------------------------


def create_enrollment_token(
    session: Session, *, device_id: str, token_hash: str, expires_at: datetime
) -> EnrollmentToken:
    token = EnrollmentToken(token_hash=token_hash, device_id=device_id, expires_at=expires_at)
    session.add(token)
    session.flush()
    return token


def get_enrollment_token(session: Session, *, token_hash: str) -> EnrollmentToken | None:
    return session.get(EnrollmentToken, token_hash)


def revoke_enrollment_tokens(session: Session, *, device_id: str, at: datetime | None = None) -> int:
    """Mark every unused token of ``device_id`` as used; returns how many."""
    tokens = session.exec(
        select(EnrollmentToken).where(
            EnrollmentToken.device_id == device_id, col(EnrollmentToken.used_at).is_(None)
        )
    ).all()
    for token in tokens:
        token.used_at = at or utcnow()
        session.add(token)
    session.flush()
    return len(tokens)


# ---- configs -------------------------------------------------------------------------------------


def latest_config(session: Session, *, device_id: str) -> DeviceConfig | None:
    return session.exec(
        select(DeviceConfig)
        .where(DeviceConfig.device_id == device_id)
        .order_by(col(DeviceConfig.version).desc())
    ).first()


def desired_settings(session: Session, *, device_ids: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
    """Each device's current desired settings (its ``desired_config_version``), in one query."""
    current = and_(
        col(Device.id) == col(DeviceConfig.device_id),
        col(Device.desired_config_version) == col(DeviceConfig.version),
    )
    stmt = select(DeviceConfig.device_id, DeviceConfig.settings).join(Device, current)
    if device_ids is not None:
        stmt = stmt.where(col(DeviceConfig.device_id).in_(list(device_ids)))
    return {d: dict(s or {}) for d, s in session.exec(stmt)}


def get_config(session: Session, *, device_id: str, version: int) -> DeviceConfig | None:
    return session.exec(
        select(DeviceConfig).where(DeviceConfig.device_id == device_id, DeviceConfig.version == version)
    ).first()


def create_config(
    session: Session,
    *,
    device_id: str,
    version: int,
    settings: dict[str, object],
    token: str,
    created_by: str | None = None,
) -> DeviceConfig:
    row = DeviceConfig(
        device_id=device_id, version=version, settings=settings, token=token, created_by=created_by
    )
    session.add(row)
    session.flush()
    return row
