"""Users and their grants: create, list, disable, reset a password, change a role; grant and revoke
access to a device or to a whole class's devices. Every change is audited. Functions add and flush;
the caller commits."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlmodel import Session, col, select

from ..models import Device
from . import audit
from .access import Principal
from .credentials import revoke_user_sessions
from .errors import AuthConflict, AuthInvalid, Forbidden, NotVisible
from .models import Classroom, DevicePermission, GroupPermission, Organisation, User
from .passwords import check_password_policy, hash_password
from .permissions import LEVELS, ROLES

__all__ = [
    "USERNAME_RE",
    "count_users",
    "create_user",
    "default_org",
    "get_user",
    "grant",
    "list_grants",
    "list_users",
    "revoke_grant",
    "set_password",
    "update_user",
]

USERNAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}\Z")
_USER_FIELDS = ["id", "username", "role", "fleet_access", "is_teacher", "org_id", "is_active"]


def _snap(user: User) -> dict[str, object] | None:
    return audit.snapshot(user, fields=_USER_FIELDS)


def default_org(session: Session) -> Organisation:
    """The organisation users land in when none is named (created on first use)."""
    org = session.exec(select(Organisation).order_by(col(Organisation.id))).first()
    if org is None:
        org = Organisation(name="default")
        session.add(org)
        session.flush()
    return org


def count_users(session: Session) -> int:
    return len(session.exec(select(User.id)).all())


def get_user(session: Session, *, user_id: int | None = None, username: str | None = None) -> User:
    """Raises NotVisible when there is no such user."""
    if user_id is not None:
        user = session.get(User, user_id)
    else:
        user = session.exec(select(User).where(User.username == username)).first()
    if user is None:
        raise NotVisible(f"no user {username or user_id!r}")
    return user


def list_users(session: Session, *, ids: set[int] | None = None) -> Sequence[User]:
    query = select(User).order_by(col(User.id))
    if ids is not None:
        query = query.where(col(User.id).in_(ids))
    return session.exec(query).all()


def create_user(
    session: Session,
    *,
    actor: Principal | str | None,
    username: str,
    password: str,
    role: str = "user",
    fleet_access: str | None = None,
    is_teacher: bool = False,
    org_id: int | None = None,
) -> User:
    """Raises AuthInvalid (bad name, password, role) or AuthConflict (the name is taken)."""
    if not USERNAME_RE.match(username):
        raise AuthInvalid(f"invalid username {username!r}: 1-128 letters, digits, '_', '.', '@' or '-'")
    if role not in ROLES:
        raise AuthInvalid(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    if fleet_access is not None and fleet_access not in LEVELS:
        raise AuthInvalid(f"fleet_access must be read or write, not {fleet_access!r}")
    check_password_policy(password)
    if session.exec(select(User).where(User.username == username)).first() is not None:
        raise AuthConflict(f"user {username!r} already exists")
    if org_id is None:
        org_id = default_org(session).id
    elif session.get(Organisation, org_id) is None:
        raise NotVisible(f"no organisation {org_id}")
    user = User(
        username=username,
        password_hash=hash_password(password),
        role=role,
        fleet_access=fleet_access,
        is_teacher=is_teacher,
        org_id=org_id,
    )
    session.add(user)
    session.flush()
    audit.record(session, actor=actor, action="user.create", target_type="user", target_id=username, after=_snap(user))
    return user


def update_user(
    session: Session,
    *,
    actor: Principal,
    user: User,
    role: str | None = None,
    fleet_access: str | bool | None = False,
    is_teacher: bool | None = None,
    is_active: bool | None = None,
) -> User:
    """Change a user's role, fleet access (``False``: unchanged), teacher flag or active flag.
    Disabling revokes their sessions at once. Raises AuthInvalid, or AuthConflict for disabling or
    demoting yourself."""
    before = _snap(user)
    if role is not None:
        if role not in ROLES:
            raise AuthInvalid(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        if user.id == actor.user_id and role != user.role:
            raise AuthConflict("you cannot change your own role")
        user.role = role
    if fleet_access is not False:
        if fleet_access is not None and fleet_access not in LEVELS:
            raise AuthInvalid(f"fleet_access must be read, write or null, not {fleet_access!r}")
        user.fleet_access = fleet_access  # type: ignore[assignment]
    if is_teacher is not None:
        user.is_teacher = is_teacher
    if is_active is not None:
        if user.id == actor.user_id and not is_active:
            raise AuthConflict("you cannot disable yourself")
        user.is_active = is_active
        if not is_active:
            assert user.id is not None
            revoke_user_sessions(session, user_id=user.id)
    session.add(user)
    session.flush()
    action = "user.disable" if is_active is False else "user.enable" if is_active else "user.update"
    audit.record(
        session,
        actor=actor,
        action=action,
        target_type="user",
        target_id=user.username,
        before=before,
        after=_snap(user),
    )
    return user


def set_password(session: Session, *, actor: Principal, user: User, password: str) -> None:
    """Set a new password and close the user's sessions."""
    check_password_policy(password)
    user.password_hash = hash_password(password)
    session.add(user)
    assert user.id is not None
    revoke_user_sessions(session, user_id=user.id)
    session.flush()
    audit.record(session, actor=actor, action="user.password", target_type="user", target_id=user.username)


def grant(
    session: Session,
    *,
    actor: Principal,
    user: User,
    permission: str,
    device_id: str | None = None,
    class_id: int | None = None,
) -> DevicePermission | GroupPermission:
    """Grant ``read`` or ``write`` on one device or on every device of a class."""
    if permission not in LEVELS:
        raise AuthInvalid(f"permission must be read or write, not {permission!r}")
    if (device_id is None) == (class_id is None):
        raise AuthInvalid("name exactly one of device_id and class_id")
    assert user.id is not None
    row: DevicePermission | GroupPermission | None
    if device_id is not None:
        if session.get(Device, device_id) is None:
            raise NotVisible(f"no device {device_id!r}")
        row = session.get(DevicePermission, (user.id, device_id))
        before = audit.snapshot(row)
        row = row or DevicePermission(user_id=user.id, device_id=device_id)
        target = f"{user.username}:device:{device_id}"
    else:
        assert class_id is not None
        if session.get(Classroom, class_id) is None:
            raise NotVisible(f"no class {class_id}")
        row = session.get(GroupPermission, (user.id, class_id))
        before = audit.snapshot(row)
        row = row or GroupPermission(user_id=user.id, class_id=class_id)
        target = f"{user.username}:class:{class_id}"
    row.permission = permission
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="grant.set",
        target_type="grant",
        target_id=target,
        before=before,
        after=audit.snapshot(row),
    )
    return row


def revoke_grant(
    session: Session, *, actor: Principal, user: User, device_id: str | None = None, class_id: int | None = None
) -> None:
    assert user.id is not None
    row: DevicePermission | GroupPermission | None
    if device_id is not None:
        row = session.get(DevicePermission, (user.id, device_id))
        target = f"{user.username}:device:{device_id}"
    else:
        row = session.get(GroupPermission, (user.id, class_id))
        target = f"{user.username}:class:{class_id}"
    if row is None:
        raise NotVisible(f"no such grant for {user.username!r}")
    before = audit.snapshot(row)
    session.delete(row)
    session.flush()
    audit.record(session, actor=actor, action="grant.revoke", target_type="grant", target_id=target, before=before)


def list_grants(session: Session, *, user_id: int) -> tuple[Sequence[DevicePermission], Sequence[GroupPermission]]:
    return (
        session.exec(select(DevicePermission).where(DevicePermission.user_id == user_id)).all(),
        session.exec(select(GroupPermission).where(GroupPermission.user_id == user_id)).all(),
    )


def require_admin(actor: Principal) -> None:
    if not actor.is_admin:
        raise Forbidden("only an admin may do this")
