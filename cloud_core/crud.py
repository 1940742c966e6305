"""Keyword-only create/read/update functions on the metadata tables. They add and flush; the caller
owns the transaction (commit or roll back)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from .models import (
    ApiToken,
    Device,
    DeviceConfig,
    DeviceCreate,
    DevicePermission,
    EnrollmentToken,
    User,
    utcnow,
)

__all__ = [
    "count_users",
    "create_api_token",
    "create_config",
    "create_device",
    "create_enrollment_token",
    "create_user",
    "get_config",
    "get_device",
    "get_enrollment_token",
    "get_user_by_token",
    "get_user_by_username",
    "grant_permission",
    "latest_config",
    "list_devices",
    "list_permissions",
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


# ---- users, API tokens, permissions --------------------------------------------------------------


def count_users(session: Session) -> int:
    return int(session.exec(select(func.count()).select_from(User)).one())


def create_user(session: Session, *, username: str, password_hash: str, role: str) -> User:
    user = User(username=username, password_hash=password_hash, role=role)
    session.add(user)
    session.flush()
    return user


def get_user_by_username(session: Session, *, username: str) -> User | None:
    return session.exec(select(User).where(User.username == username)).first()


def create_api_token(session: Session, *, user_id: int, token_hash: str, name: str = "default") -> ApiToken:
    token = ApiToken(token_hash=token_hash, user_id=user_id, name=name)
    session.add(token)
    session.flush()
    return token


def get_user_by_token(session: Session, *, token_hash: str) -> User | None:
    """The active user owning the API token with this hash, or None."""
    row = session.get(ApiToken, token_hash)
    if row is None:
        return None
    user = session.get(User, row.user_id)
    if user is None or not user.is_active:
        return None
    return user


def grant_permission(session: Session, *, user_id: int, device_id: str, permission: str) -> DevicePermission:
    row = session.get(DevicePermission, (user_id, device_id))
    if row is None:
        row = DevicePermission(user_id=user_id, device_id=device_id, permission=permission)
    else:
        row.permission = permission
    session.add(row)
    session.flush()
    return row


def list_permissions(session: Session, *, user_id: int) -> Sequence[DevicePermission]:
    return session.exec(select(DevicePermission).where(DevicePermission.user_id == user_id)).all()
