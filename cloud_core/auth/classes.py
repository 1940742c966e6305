"""Organisations and classes: create a class (its creator teaches it), add and remove members
(teacher or student; a teacher may create a student account on the spot), share a device with the
class, set quotas (admins), and read what a class uses against its quotas. Audited; functions add
and flush, the caller commits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func
from sqlmodel import Session, col, select

from ..models import Device, RejectedMessage
from . import audit
from .access import Principal
from .errors import AuthConflict, AuthInvalid, Forbidden, NotVisible
from .models import ClassMember, Classroom, ClassUsage, Organisation, User
from .permissions import CLASS_ROLES
from .users import create_user, default_org

__all__ = [
    "QUOTA_FIELDS",
    "ClassUsageView",
    "add_member",
    "class_devices",
    "class_usage",
    "create_class",
    "create_org",
    "list_classes",
    "members",
    "remove_member",
    "set_quota",
    "share_device",
]

_QUOTA_MAX = {"max_devices": 2**31 - 1, "max_devices_per_student": 2**31 - 1, "stored_bytes": 2**63 - 1}
QUOTA_FIELDS = ("max_devices", "max_devices_per_student", "readings_per_s_per_device", "readings_per_s", "stored_bytes")


def create_org(session: Session, *, actor: Principal, name: str) -> Organisation:
    if not name.strip() or len(name) > 128:
        raise AuthInvalid("organisation name must be 1-128 characters")
    if session.exec(select(Organisation).where(Organisation.name == name)).first() is not None:
        raise AuthConflict(f"organisation {name!r} already exists")
    org = Organisation(name=name)
    session.add(org)
    session.flush()
    audit.record(
        session, actor=actor, action="org.create", target_type="org", target_id=org.id or 0, after=audit.snapshot(org)
    )
    return org


def create_class(session: Session, *, actor: Principal, name: str, quotas: dict[str, float | int | None]) -> Classroom:
    """A class in the actor's organisation, taught by the actor. Needs an admin or a teacher."""
    if not (actor.is_admin or actor.is_teacher):
        raise Forbidden("only teachers and admins may create classes")
    if not name.strip() or len(name) > 128:
        raise AuthInvalid("class name must be 1-128 characters")
    org_id = actor.org_id if actor.org_id is not None else default_org(session).id
    if session.exec(select(Classroom).where(Classroom.org_id == org_id, Classroom.name == name)).first() is not None:
        raise AuthConflict(f"class {name!r} already exists in this organisation")
    classroom = Classroom(org_id=org_id, name=name, **_checked_quotas(quotas))
    session.add(classroom)
    session.flush()
    assert classroom.id is not None
    session.add(ClassMember(class_id=classroom.id, user_id=actor.user_id, class_role="teacher"))
    session.add(ClassUsage(class_id=classroom.id, stored_bytes=0))
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="class.create",
        target_type="class",
        target_id=classroom.id,
        after=audit.snapshot(classroom),
    )
    return classroom


def _checked_quotas(quotas: dict[str, float | int | None]) -> dict[str, float | int | None]:
    out: dict[str, float | int | None] = {}
    for key, value in quotas.items():
        if key not in QUOTA_FIELDS:
            raise AuthInvalid(f"unknown quota {key!r}: use {', '.join(QUOTA_FIELDS)}")
        if value is not None and (isinstance(value, bool) or value < 0):
            raise AuthInvalid(f"quota {key} must be a number >= 0 or null (unlimited)")
        # The columns' ranges: device counts are 32-bit, stored bytes 64-bit, rates finite floats.
        top = _QUOTA_MAX.get(key)
        if value is not None and (not math.isfinite(value) or (top is not None and value > top)):
            raise AuthInvalid(f"quota {key} must be at most {top if top is not None else 'a finite number'}")
        out[key] = value
    return out


def set_quota(
    session: Session, *, actor: Principal, classroom: Classroom, quotas: dict[str, float | int | None]
) -> Classroom:
    """Admins only (a teacher cannot raise their own limits)."""
    if not actor.is_admin:
        raise Forbidden("only an admin may change quotas")
    before = audit.snapshot(classroom, fields=["id", *QUOTA_FIELDS])
    for key, value in _checked_quotas(quotas).items():
        setattr(classroom, key, value)
    session.add(classroom)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="quota.set",
        target_type="class",
        target_id=classroom.id or 0,
        before=before,
        after=audit.snapshot(classroom, fields=["id", *QUOTA_FIELDS]),
    )
    return classroom


def list_classes(session: Session, *, ids: set[int] | None) -> Sequence[Classroom]:
    query = select(Classroom).order_by(col(Classroom.id))
    if ids is not None:
        query = query.where(col(Classroom.id).in_(ids))
    return session.exec(query).all()


def members(session: Session, *, class_id: int) -> list[tuple[User, str]]:
    rows = session.exec(
        select(User, ClassMember.class_role)
        .join(ClassMember, col(ClassMember.user_id) == col(User.id))
        .where(ClassMember.class_id == class_id)
    ).all()
    return [(u, r) for u, r in rows]


def class_devices(session: Session, *, class_id: int) -> Sequence[Device]:
    return session.exec(select(Device).where(Device.class_id == class_id).order_by(col(Device.id))).all()


def add_member(
    session: Session,
    *,
    actor: Principal,
    classroom: Classroom,
    class_role: str,
    username: str,
    password: str | None = None,
) -> User:
    """Add a user to the class; with ``password``, create them first (a student account, role
    ``user``, in the class's organisation). Only admins may add teachers."""
    if class_role not in CLASS_ROLES:
        raise AuthInvalid(f"class role must be teacher or student, not {class_role!r}")
    if class_role == "teacher" and not actor.is_admin and classroom.id not in actor.teacher_of:
        raise Forbidden("only an admin or a teacher of the class may add a teacher")
    assert classroom.id is not None
    if password is not None:
        user = create_user(
            session, actor=actor, username=username, password=password, role="user", org_id=classroom.org_id
        )
    else:
        user = session.exec(select(User).where(User.username == username)).first()
        if user is None or (not actor.is_admin and user.org_id != classroom.org_id):
            raise NotVisible(f"no user {username!r} in this organisation")
    assert user.id is not None
    existing = session.get(ClassMember, (classroom.id, user.id))
    before = audit.snapshot(existing)
    row = existing or ClassMember(class_id=classroom.id, user_id=user.id)
    row.class_role = class_role
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="class.member",
        target_type="class",
        target_id=classroom.id,
        before=before,
        after={"user": user.username, "class_role": class_role},
    )
    return user


def remove_member(session: Session, *, actor: Principal, classroom: Classroom, user_id: int) -> None:
    row = session.get(ClassMember, (classroom.id, user_id))
    if row is None:
        raise NotVisible(f"user {user_id} is not in class {classroom.id}")
    if row.class_role == "teacher" and not actor.is_admin:
        raise Forbidden("only an admin may remove a teacher")
    before = audit.snapshot(row)
    session.delete(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="class.member.remove",
        target_type="class",
        target_id=classroom.id or 0,
        before=before,
    )


def share_device(session: Session, *, actor: Principal, device: Device, shared: bool) -> Device:
    """Let the device's class read it (or stop). The device must be in a class."""
    if device.class_id is None:
        raise AuthConflict(f"device {device.id!r} is in no class: there is nobody to share it with")
    before = audit.snapshot(device, fields=["id", "class_id", "shared_with_class"])
    device.shared_with_class = shared
    session.add(device)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="device.share" if shared else "device.unshare",
        target_type="device",
        target_id=device.id,
        before=before,
        after=audit.snapshot(device, fields=["id", "class_id", "shared_with_class"]),
    )
    return device


@dataclass(frozen=True, slots=True)
class ClassUsageView:
    """A class's quotas and what it uses: devices (in total and per student), stored telemetry
    bytes, and ``quota_exceeded`` rejections per device over the last ``window_h`` hours."""

    class_id: int
    quotas: dict[str, float | int | None]
    devices: int
    devices_per_student: dict[str, int]
    stored_bytes: int
    quota_exceeded: dict[str, int]
    window_h: float


def class_usage(session: Session, *, classroom: Classroom, window_h: float = 24.0) -> ClassUsageView:
    assert classroom.id is not None
    devices = class_devices(session, class_id=classroom.id)
    owners = {u.id: u.username for u, _ in members(session, class_id=classroom.id)}
    per_student: dict[str, int] = {}
    for d in devices:
        name = owners.get(d.owner_id, "(no owner)") if d.owner_id is not None else "(no owner)"
        per_student[name] = per_student.get(name, 0) + 1
    usage = session.get(ClassUsage, classroom.id)
    since = datetime.now(UTC) - timedelta(hours=window_h)
    ids = [d.id for d in devices]
    exceeded: dict[str, int] = {}
    if ids:
        rows = session.exec(
            select(RejectedMessage.device_id, func.count())
            .where(
                col(RejectedMessage.device_id).in_(ids),
                RejectedMessage.reason == "quota_exceeded",
                col(RejectedMessage.received_at) >= since,
            )
            .group_by(RejectedMessage.device_id)
        ).all()
        exceeded = {str(d): int(n) for d, n in rows}
    return ClassUsageView(
        class_id=classroom.id,
        quotas={k: getattr(classroom, k) for k in QUOTA_FIELDS},
        devices=len(devices),
        devices_per_student=per_student,
        stored_bytes=usage.stored_bytes if usage is not None else 0,
        quota_exceeded=exceeded,
        window_h=window_h,
    )
