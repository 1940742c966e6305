"""The tables of people and their rights: users, organisations, classes and their members, grants,
API keys, refresh tokens, JWT signing keys, class usage (quotas) and the audit log.

Each entity follows the registry's pattern: ``X(table=True)`` and ``XPublic`` (secrets, hashes and
private keys never appear in ``*Public``). :mod:`cloud_core.models` re-exports ``User``,
``UserPublic`` and ``DevicePermission`` for older imports.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

__all__ = [
    "ApiKey",
    "ApiKeyPublic",
    "AuditEntry",
    "ClassMember",
    "ClassUsage",
    "Classroom",
    "ClassroomPublic",
    "DevicePermission",
    "GroupPermission",
    "Organisation",
    "RefreshToken",
    "SigningKey",
    "User",
    "UserPublic",
]


def _now() -> datetime:
    return datetime.now(UTC)


# ---- users ---------------------------------------------------------------------------------------


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(unique=True, index=True, max_length=128)
    password_hash: str
    role: str = Field(default="user", max_length=16, description="admin | user | device | readonly")
    fleet_access: str | None = Field(
        default=None,
        max_length=8,
        description="read | write: the user reaches every device at this level (operators and viewers "
        "from before users had scopes); None: only their own, granted and class devices.",
    )
    is_teacher: bool = Field(default=False, description="May create classes in their organisation.")
    org_id: int | None = Field(default=None, foreign_key="organisations.id", index=True)
    mqtt_username: str | None = Field(
        default=None, max_length=128, description="Their read-only broker account, once they asked for one."
    )
    is_active: bool = True
    created_at: datetime = Field(default_factory=_now)


class UserPublic(SQLModel):
    id: int
    username: str
    role: str
    fleet_access: str | None = None
    is_teacher: bool = False
    org_id: int | None = None
    mqtt_username: str | None = None
    is_active: bool
    created_at: datetime | None = None


class Organisation(SQLModel, table=True):
    """A school: its users and classes."""

    __tablename__ = "organisations"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=128)
    created_at: datetime = Field(default_factory=_now)


# ---- classes -------------------------------------------------------------------------------------


class Classroom(SQLModel, table=True):
    """A class: a group of users (teachers, students) and their devices, with quotas.

    A quota of None is unlimited."""

    __tablename__ = "classes"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    org_id: int | None = Field(default=None, foreign_key="organisations.id", index=True)
    name: str = Field(max_length=128)
    created_at: datetime = Field(default_factory=_now)
    max_devices: int | None = Field(default=None, description="Devices in the class at most.")
    max_devices_per_student: int | None = Field(default=None, description="Devices one student may register.")
    readings_per_s_per_device: float | None = Field(default=None, description="Token-bucket rate per device.")
    readings_per_s: float | None = Field(default=None, description="Token-bucket rate for the whole class.")
    stored_bytes: int | None = Field(
        default=None, sa_column=Column(BigInteger, nullable=True), description="Telemetry bytes the class may store."
    )


class ClassroomPublic(SQLModel):
    id: int
    org_id: int | None
    name: str
    created_at: datetime
    max_devices: int | None
    max_devices_per_student: int | None
    readings_per_s_per_device: float | None
    readings_per_s: float | None
    stored_bytes: int | None


class ClassMember(SQLModel, table=True):
    __tablename__ = "class_members"

    class_id: int = Field(foreign_key="classes.id", primary_key=True)
    user_id: int = Field(foreign_key="users.id", primary_key=True, index=True)
    class_role: str = Field(default="student", max_length=16, description="teacher | student")
    added_at: datetime = Field(default_factory=_now)


class ClassUsage(SQLModel, table=True):
    """What a class has stored so far (the bridge adds to it; quotas compare against it)."""

    __tablename__ = "class_usage"

    class_id: int = Field(foreign_key="classes.id", primary_key=True)
    stored_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    updated_at: datetime = Field(default_factory=_now)


# ---- grants --------------------------------------------------------------------------------------


class DevicePermission(SQLModel, table=True):
    """A grant on one device."""

    __tablename__ = "device_permissions"

    user_id: int = Field(foreign_key="users.id", primary_key=True)
    device_id: str = Field(foreign_key="devices.id", primary_key=True)
    permission: str = Field(default="read", max_length=16, description="read | write")


class GroupPermission(SQLModel, table=True):
    """A grant on every device of a class (a device group)."""

    __tablename__ = "group_permissions"

    user_id: int = Field(foreign_key="users.id", primary_key=True)
    class_id: int = Field(foreign_key="classes.id", primary_key=True)
    permission: str = Field(default="read", max_length=16, description="read | write")


# ---- credentials ---------------------------------------------------------------------------------


class ApiKey(SQLModel, table=True):
    """A long-lived key for automation: a role (at most its owner's) and optionally a device list.
    Only a SHA-256 of the key is stored; the key is shown once."""

    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True, index=True, max_length=64)
    prefix: str = Field(default="", max_length=16, description="The key's first characters, to recognise it.")
    user_id: int = Field(foreign_key="users.id", index=True)
    name: str = Field(default="default", max_length=64)
    role: str = Field(max_length=16)
    device_ids: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(default_factory=_now)
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class ApiKeyPublic(SQLModel):
    id: int
    prefix: str
    user_id: int
    name: str
    role: str
    device_ids: list[str] | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class RefreshToken(SQLModel, table=True):
    """A refresh token (stored as its SHA-256). Each use replaces it by a new one of the same
    ``family``; presenting a used one again revokes the family (a stolen token was replayed)."""

    __tablename__ = "refresh_tokens"

    token_hash: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="users.id", index=True)
    family: str = Field(index=True, max_length=32)
    created_at: datetime = Field(default_factory=_now)
    expires_at: datetime
    used_at: datetime | None = None
    revoked_at: datetime | None = None


class SigningKey(SQLModel, table=True):
    """An Ed25519 key that signs access tokens. The newest unretired key signs; retired keys still
    verify until the tokens they signed have expired."""

    __tablename__ = "auth_signing_keys"

    kid: str = Field(primary_key=True, max_length=32)
    private_pem: str
    public_pem: str
    created_at: datetime = Field(default_factory=_now)
    retired_at: datetime | None = None


# ---- audit ---------------------------------------------------------------------------------------


class AuditEntry(SQLModel, table=True):
    """One change: who, what, when, before and after. Append-only (database triggers refuse
    UPDATE and DELETE)."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=_now, index=True)
    actor_id: int | None = Field(default=None, index=True)
    actor: str = Field(max_length=160, description="Username, 'key:<id> of <username>', or 'system'.")
    action: str = Field(max_length=64, index=True, description="e.g. device.register, user.disable")
    target_type: str = Field(max_length=32)
    target_id: str = Field(max_length=128, index=True)
    before: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    after: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
