"""Metadata tables (SQLModel), following the original schema: ``devices``, ``device_configs``,
``users`` and ``device_permissions`` (those two live in :mod:`cloud_core.auth.models`, re-exported
here), plus what the registry needs: enrollment tokens, rejected
messages (dead letters), the batch ledger, anomalies and rollouts.

Each entity has a family: ``XBase`` (shared fields), ``XCreate`` / ``XUpdate`` (API input),
``X(table=True)`` and ``XPublic`` (API output; secrets never appear in ``*Public``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

__all__ = [
    "BatchLedger",
    "Device",
    "DeviceBase",
    "DeviceConfig",
    "DeviceCreate",
    "DevicePermission",
    "DevicePublic",
    "DeviceTag",
    "DeviceUpdate",
    "EnrollmentToken",
    "RejectedMessage",
    "User",
    "UserPublic",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


# ---- devices -------------------------------------------------------------------------------------


class DeviceBase(SQLModel):
    device_type: str = Field(default="environment", max_length=64, description="Kind of device, e.g. 'environment'.")
    location: str = Field(default="unknown", max_length=128, description="Where it is; the InfluxDB 'location' tag.")


class DeviceCreate(DeviceBase):
    id: str = Field(max_length=64, description="Device id: 1-64 of A-Z a-z 0-9 _ -")


class DeviceUpdate(SQLModel):
    device_type: str | None = None
    location: str | None = None


class Device(DeviceBase, table=True):
    __tablename__ = "devices"

    id: str = Field(primary_key=True, max_length=64)
    # pending (registered, not enrolled) | active | inactive (deactivated by an operator)
    status: str = Field(default="pending", max_length=16, index=True)
    public_key: str | None = Field(default=None, description="Ed25519 public key, unpadded base64url of 32 bytes.")
    key_version: int = Field(default=0, description="Increases on every enrollment or rotation.")
    mqtt_username: str | None = Field(default=None, max_length=128)
    firmware: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    enrolled_at: datetime | None = None
    last_seen: datetime | None = Field(default=None, index=True)
    presence: str | None = Field(default=None, max_length=16, description="Last status message: online|offline.")
    presence_at: datetime | None = None
    last_health_at: datetime | None = None
    health: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    desired_config_version: int = 0
    reported_config_version: int = 0
    reported_config_status: str | None = Field(default=None, max_length=16)
    reported_config_error: str | None = None
    owner_id: int | None = Field(default=None, foreign_key="users.id", index=True, description="Who registered it.")
    class_id: int | None = Field(default=None, foreign_key="classes.id", index=True, description="Its class.")
    shared_with_class: bool = Field(default=False, description="Its class's members may read it.")


class DevicePublic(DeviceBase):
    id: str
    status: str
    key_version: int
    firmware: str | None
    created_at: datetime
    enrolled_at: datetime | None
    last_seen: datetime | None
    presence: str | None
    desired_config_version: int
    reported_config_version: int
    reported_config_status: str | None
    owner_id: int | None = None
    class_id: int | None = None
    shared_with_class: bool = False


class DeviceTag(SQLModel, table=True):
    """Free-form labels on a device (``greenhouse``, ``pilot``, ``room-2``) that rollouts target.
    Their own table, so adding tags needs no change to ``devices``."""

    __tablename__ = "device_tags"

    device_id: str = Field(foreign_key="devices.id", primary_key=True, max_length=64)
    tag: str = Field(primary_key=True, max_length=64, index=True)


class EnrollmentToken(SQLModel, table=True):
    """One-time, expiring. Only a SHA-256 of the token is stored."""

    __tablename__ = "enrollment_tokens"

    token_hash: str = Field(primary_key=True, max_length=64)
    device_id: str = Field(foreign_key="devices.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    used_at: datetime | None = None


# ---- configuration -------------------------------------------------------------------------------


class DeviceConfig(SQLModel, table=True):
    """A versioned desired config; ``token`` is the exact signed JWS published (retained) to the device."""

    __tablename__ = "device_configs"
    __table_args__ = (UniqueConstraint("device_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(foreign_key="devices.id", index=True)
    version: int
    settings: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    token: str
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str | None = Field(default=None, max_length=128)


# ---- ingest bookkeeping --------------------------------------------------------------------------


class RejectedMessage(SQLModel, table=True):
    """Dead letter: a message (or some readings of it) that was not stored, and why."""

    __tablename__ = "rejected_messages"

    id: int | None = Field(default=None, primary_key=True)
    device_id: str | None = Field(default=None, index=True, max_length=64)
    topic: str = Field(max_length=512)
    reason: str = Field(index=True, max_length=64)
    detail: str | None = None
    seq: int | None = None
    reading_index: int | None = None
    received_at: datetime = Field(default_factory=utcnow, index=True)
    payload_sha256: str = Field(max_length=64)
    payload: bytes | None = Field(default=None, sa_column=Column(LargeBinary))  # first 4 KiB


class BatchLedger(SQLModel, table=True):
    """Which batches of each device are durably stored: replay detection and loss accounting."""

    __tablename__ = "batch_ledger"

    device_id: str = Field(primary_key=True, max_length=64)
    seq: int = Field(primary_key=True)
    batch_id: str = Field(max_length=128)
    payload_sha256: str = Field(max_length=64)
    readings: int
    rejected_readings: int = 0
    stored_at: datetime = Field(default_factory=utcnow)
    # The signing key's id (first 16 hex of the SHA-256 of its raw bytes): seqs are per key epoch, so a
    # re-enrolled or rotated device may restart them. NULL: stored before epochs were recorded.
    key_id: str | None = Field(default=None, max_length=16)
    # What the device was told, so a byte-identical resend gets the same receipt: the batch's final
    # rejection reason (NULL: stored), and its rejected readings as JSON [[index, reason], ...].
    reason: str | None = Field(default=None, max_length=64)
    rejections: str | None = None


# The people's tables (users, grants, classes, keys, audit) live in the auth package.
from .auth.models import DevicePermission, User, UserPublic  # noqa: E402 - after Device: no import circle
