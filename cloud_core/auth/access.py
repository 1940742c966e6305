"""Who is asking (:class:`Principal`) and what they may reach: the access level of a person on a
device, the devices they can see, their place in a class. The rules are in
:mod:`cloud_core.auth.permissions`; this module applies them to the database.

Answers are shaped so that nothing leaks: a device (class, user) the person cannot see at all is
:class:`NotVisible` (404, as if it did not exist); one they can see but may not change is
:class:`Forbidden` (403); a permission their role lacks is Forbidden whatever the target.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from sqlmodel import Session, col, or_, select

from iot_protocol.topics import DEVICE_ID_RE

from ..models import Device
from .errors import Forbidden, NotVisible
from .models import ClassMember, Classroom, DevicePermission, GroupPermission
from .permissions import LEVELS, ROLE_PERMISSIONS, Permission, higher, level_allows

__all__ = [
    "Principal",
    "authorize_class",
    "authorize_device",
    "device_level",
    "principal_for",
    "require_fleet",
    "require_permission",
    "visible_device_ids",
]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated person (or an API key acting for one).

    ``permissions`` is the role's set (for a key: the key's role, never more than its owner's);
    ``key_devices`` limits a key to some devices; ``teacher_of`` / ``student_of`` are class ids."""

    user_id: int
    username: str
    role: str
    permissions: frozenset[Permission]
    fleet_access: str | None = None
    is_teacher: bool = False
    org_id: int | None = None
    key_id: int | None = None
    key_devices: frozenset[str] | None = None
    teacher_of: frozenset[int] = field(default_factory=frozenset)
    student_of: frozenset[int] = field(default_factory=frozenset)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin" and self.key_devices is None

    @property
    def actor(self) -> str:
        """How the audit log names this principal."""
        return self.username if self.key_id is None else f"key:{self.key_id} of {self.username}"

    @property
    def classes(self) -> frozenset[int]:
        return self.teacher_of | self.student_of


def principal_for(
    session: Session,
    *,
    user_id: int,
    username: str,
    role: str,
    fleet_access: str | None,
    is_teacher: bool,
    org_id: int | None,
    key_id: int | None = None,
    key_devices: Collection[str] | None = None,
) -> Principal:
    """A principal with its class memberships read from the database."""
    teacher: set[int] = set()
    student: set[int] = set()
    for m in session.exec(select(ClassMember).where(ClassMember.user_id == user_id)).all():
        (teacher if m.class_role == "teacher" else student).add(m.class_id)
    return Principal(
        user_id=user_id,
        username=username,
        role=role,
        permissions=ROLE_PERMISSIONS.get(role, frozenset()),
        fleet_access=fleet_access,
        is_teacher=is_teacher,
        org_id=org_id,
        key_id=key_id,
        key_devices=frozenset(key_devices) if key_devices is not None else None,
        teacher_of=frozenset(teacher),
        student_of=frozenset(student),
    )


def require_permission(p: Principal, need: Permission) -> None:
    """Raise Forbidden unless ``p``'s role holds ``need``."""
    if need not in p.permissions:
        raise Forbidden(f"role {p.role!r} does not have the {need.value} permission")


def require_fleet(p: Principal, need: Permission) -> None:
    """Raise Forbidden unless ``p`` reaches every device with ``need`` (an admin, or a user with fleet
    access at that level, not through a key limited to some devices): for actions that span the fleet,
    such as rollouts and firmware releases."""
    if p.key_devices is not None:
        raise Forbidden("a key limited to some devices cannot act on the whole fleet")
    if p.role == "admin":
        return
    if p.fleet_access is None or need not in LEVELS.get(p.fleet_access, frozenset()):
        raise Forbidden(
            f"this acts on the whole fleet: it needs {need.value} on every device (an admin, or a user with "
            "fleet access; 'iotctl users add NAME --fleet write')"
        )


def device_level(session: Session, p: Principal, device: Device) -> str | None:
    """``write``, ``read`` or None: how far ``p`` reaches ``device``."""
    if p.key_devices is not None and device.id not in p.key_devices:
        return None
    if p.role == "admin":
        return "write"
    level = p.fleet_access
    if device.owner_id is not None and device.owner_id == p.user_id:
        return "write"
    if device.class_id is not None:
        if device.class_id in p.teacher_of:
            return "write"
        if device.shared_with_class and device.class_id in p.student_of:
            level = higher(level, "read")
        group = session.get(GroupPermission, (p.user_id, device.class_id))
        if group is not None:
            level = higher(level, group.permission)
    grant = session.get(DevicePermission, (p.user_id, device.id))
    if grant is not None:
        level = higher(level, grant.permission)
    return level


def visible_device_ids(session: Session, p: Principal) -> set[str] | None:
    """The ids of the devices ``p`` can see (at least read), or None for every device."""
    if p.role == "admin" or p.fleet_access is not None:
        return set(p.key_devices) if p.key_devices is not None else None
    conditions = [col(Device.owner_id) == p.user_id]
    if p.teacher_of:
        conditions.append(col(Device.class_id).in_(p.teacher_of))
    if p.student_of:
        conditions.append(col(Device.class_id).in_(p.student_of) & col(Device.shared_with_class))
    groups = session.exec(select(GroupPermission.class_id).where(GroupPermission.user_id == p.user_id)).all()
    if groups:
        conditions.append(col(Device.class_id).in_(groups))
    ids = set(session.exec(select(Device.id).where(or_(*conditions))).all())
    ids |= set(session.exec(select(DevicePermission.device_id).where(DevicePermission.user_id == p.user_id)).all())
    if p.key_devices is not None:
        ids &= p.key_devices
    return ids


def authorize_device(session: Session, p: Principal, device_id: str, need: Permission) -> Device:
    """The device, when ``p`` may do what needs ``need`` on it.

    Raises:
        Forbidden: the role lacks ``need``, or the device is visible but only for reading.
        NotVisible: no such device, or not one ``p`` can see.
    """
    require_permission(p, need)
    # What cannot be a device id is no device, without asking the database (PostgreSQL refuses a NUL
    # byte in text with an error, not an empty answer).
    device = session.get(Device, device_id) if DEVICE_ID_RE.match(device_id) else None
    level = device_level(session, p, device) if device is not None else None
    if device is None or level is None:
        raise NotVisible(f"no device {device_id!r}")
    if not level_allows(level, need):
        raise Forbidden(f"{p.username} may only read device {device_id!r}, not change it")
    return device


def authorize_class(session: Session, p: Principal, class_id: int, *, teacher: bool) -> Classroom:
    """The class, when ``p`` is its teacher (or, unless ``teacher``, a member), or an admin.

    Raises:
        NotVisible: no such class, or ``p`` is not in it.
        Forbidden: ``p`` is a student and a teacher is needed.
    """
    classroom = session.get(Classroom, class_id)
    member = p.is_admin or class_id in p.classes
    if classroom is None or not member:
        raise NotVisible(f"no class {class_id}")
    if teacher and not p.is_admin and class_id not in p.teacher_of:
        raise Forbidden(f"only a teacher of class {class_id} may do this")
    return classroom
