"""The rollouts' tables: rollouts and their devices, the rollout history (audit trail), firmware
releases, each device's firmware events, and the engine's lease.

Plain SQLModel tables with explicit names, types and indexes, so that an Alembic autogenerate
against ``SQLModel.metadata`` produces their migration as it stands (revision 0005 creates them; a
change here needs a new revision: tests/test_migrations.py fails until it exists).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Text
from sqlmodel import Field, SQLModel

from ..models import utcnow

__all__ = [
    "ACTIVE_STATUSES",
    "DEVICE_STATES",
    "STATUSES",
    "EngineLease",
    "FirmwareEvent",
    "Release",
    "Rollout",
    "RolloutDevice",
    "RolloutEvent",
    "RolloutLock",
]

# running -> paused -> running ...; running -> completed; running|paused -> aborting -> aborted.
STATUSES = ("running", "paused", "completed", "aborting", "aborted")
ACTIVE_STATUSES = ("running", "paused", "aborting")
# What a device goes through in a rollout (docs/rollouts.md, "Device states"):
#   pending (its wave has not come) -> updating (config sent) -> downloading -> installed
#   -> confirmed (firmware) / applied (config); or failed; or waiting (offline, converges later);
#   after an abort: rolling_back -> rolled_back.
DEVICE_STATES = (
    "pending",
    "updating",
    "downloading",
    "installed",
    "confirmed",
    "applied",
    "waiting",
    "failed",
    "rolling_back",
    "rolled_back",
)


class Rollout(SQLModel, table=True):
    """One staged change to many devices: a config change or a firmware release, wave by wave."""

    __tablename__ = "rollouts"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128)
    kind: str = Field(max_length=16, description="config | firmware")
    status: str = Field(default="running", max_length=16, index=True, description=" | ".join(STATUSES))
    settings: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    release_version: str | None = Field(default=None, max_length=32)
    max_bytes_per_s: int | None = Field(default=None, description="Download bandwidth cap sent to devices.")
    target: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    canary_percent: float = 5.0
    waves: list[float] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    wave_wait_s: float = 600.0
    gates: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    offline_policy: str = Field(default="converge", max_length=16, description="converge | fail")
    device_deadline_s: float = 3600.0
    seed: str = Field(default="", max_length=64, description="Salt of the wave assignment.")
    current_wave: int = 0
    wave_started_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    created_by: str | None = Field(default=None, max_length=128)
    abort_reason: str | None = Field(default=None, sa_column=Column(Text))


class RolloutDevice(SQLModel, table=True):
    """A device's part in a rollout: its (sticky) wave, its state, and what to roll it back to."""

    __tablename__ = "rollout_devices"

    rollout_id: int = Field(foreign_key="rollouts.id", primary_key=True)
    device_id: str = Field(foreign_key="devices.id", primary_key=True, max_length=64, index=True)
    wave: int = Field(description="0 = canary; 1.. = the waves in order.")
    rank: int = Field(description="Position in the rollout's deterministic device order.")
    state: str = Field(default="pending", max_length=16, index=True)
    online_at_start: bool = False
    previous_settings: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    previous_config_version: int | None = None
    previous_firmware: str | None = Field(default=None, max_length=32)
    target_config_version: int | None = None
    rollback_config_version: int | None = None
    updated_at: datetime | None = Field(default=None, description="When its update was sent.")
    state_at: datetime = Field(default_factory=utcnow)
    error: str | None = Field(default=None, sa_column=Column(Text))


class RolloutEvent(SQLModel, table=True):
    """The rollout history and audit trail: created, wave started, gate failed, device state
    changes, paused, aborted, rolled back... (written only through ``rollouts.history.record``)."""

    __tablename__ = "rollout_events"

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int | None = Field(default=None, index=True)
    device_id: str | None = Field(default=None, max_length=64, index=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    kind: str = Field(max_length=32)
    actor: str | None = Field(default=None, max_length=128, description="A user, or 'engine'.")
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Release(SQLModel, table=True):
    """A firmware release: the signed manifest (exactly as devices receive it) and its artifact."""

    __tablename__ = "releases"

    version: str = Field(primary_key=True, max_length=32)
    # BIGINT: a manifest may claim up to 2 GiB (iot_protocol.firmware.MAX_ARTIFACT_BYTES = 2^31), one
    # more than PostgreSQL's INTEGER holds.
    size: int = Field(sa_type=BigInteger)
    sha256: str = Field(max_length=64)
    device_types: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    min_version: str | None = Field(default=None, max_length=32)
    notes: str = Field(default="", sa_column=Column(Text, nullable=False))
    manifest: str = Field(sa_column=Column(Text, nullable=False), description="The signed manifest (JWS).")
    status: str = Field(default="awaiting_artifact", max_length=24, description="awaiting_artifact | ready")
    artifact_key: str | None = Field(default=None, max_length=256)
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str | None = Field(default=None, max_length=128)
    uploaded_at: datetime | None = None


class FirmwareEvent(SQLModel, table=True):
    """A device's firmware history: each update step it reported (downloading, installed,
    confirmed, failed, rolled_back), written by the device-events consumer."""

    __tablename__ = "firmware_events"

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=64, index=True)
    version: str = Field(max_length=32)
    state: str = Field(max_length=16)
    running: str | None = Field(default=None, max_length=32)
    error: str | None = Field(default=None, sa_column=Column(Text))
    config_version: int = 0
    at: datetime = Field(default_factory=utcnow, index=True)


class EngineLease(SQLModel, table=True):
    """Who runs the rollout engine: one row per engine name; the holder renews it, and another
    replica takes it over when it expires (one active engine across API replicas)."""

    __tablename__ = "engine_leases"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    expires_at: datetime
    generation: int = Field(default=0, description="Increases on every write; writes are conditioned on it.")
    acquired_at: datetime = Field(default_factory=utcnow)


class RolloutLock(SQLModel, table=True):
    """A device taken by an active rollout. The primary key refuses a second rollout of the same
    device even when two API replicas create them at the same moment; released when the rollout ends."""

    __tablename__ = "rollout_locks"

    device_id: str = Field(foreign_key="devices.id", primary_key=True, max_length=64)
    rollout_id: int = Field(foreign_key="rollouts.id", index=True)
