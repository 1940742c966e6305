"""User administration (the ``admin_panel`` permission): list (``GET /v1/admin/users``, as in the
seed), create, show, change role / fleet access / teacher / active, reset a password, and grants on
devices and classes. Every change is audited."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from ...auth import users as users_service
from ...auth.errors import AuthInvalid
from ...auth.models import User, UserPublic
from ..deps import MAX_ID, Admin, ContextDep, Id, SessionDep

router = APIRouter(prefix="/v1", tags=["users"])


class UserCreate(BaseModel):
    username: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=256, description="10-256 characters.")
    role: Literal["admin", "user", "device", "readonly"] = "user"
    fleet_access: Literal["read", "write"] | None = None
    is_teacher: bool = False
    org_id: int | None = None


class UserChange(BaseModel):
    role: Literal["admin", "user", "device", "readonly"] | None = None
    fleet_access: Literal["read", "write", "none"] | None = Field(
        default=None, description="read / write: every device at that level; none: remove; omit: unchanged."
    )
    is_teacher: bool | None = None
    is_active: bool | None = None


class PasswordReset(BaseModel):
    password: str = Field(min_length=1, max_length=256)


class GrantIn(BaseModel):
    permission: Literal["read", "write"]
    device_id: str | None = Field(default=None, max_length=64)
    class_id: int | None = Field(default=None, ge=1, le=MAX_ID)


class GrantOut(BaseModel):
    permission: str
    device_id: str | None = None
    class_id: int | None = None


def _user(session: SessionDep, user_id: int) -> User:
    return users_service.get_user(session, user_id=user_id)


@router.get("/admin/users", response_model=list[UserPublic])
def admin_users(_p: Admin, session: SessionDep) -> list[UserPublic]:
    """Every user (the seed's admin list)."""
    return [UserPublic.model_validate(u) for u in users_service.list_users(session)]


@router.post("/users", response_model=UserPublic, status_code=201)
def create_user(body: UserCreate, p: Admin, session: SessionDep) -> UserPublic:
    user = users_service.create_user(session, actor=p, **body.model_dump())
    session.commit()
    return UserPublic.model_validate(user)


@router.get("/users/{user_id}", response_model=UserPublic)
def get_user(user_id: Id, _p: Admin, session: SessionDep) -> UserPublic:
    return UserPublic.model_validate(_user(session, user_id))


@router.patch("/users/{user_id}", response_model=UserPublic)
def change_user(user_id: Id, body: UserChange, p: Admin, session: SessionDep, ctx: ContextDep) -> UserPublic:
    """Disabling a user refuses their tokens and keys at once and closes their sessions."""
    user = _user(session, user_id)
    fleet: str | bool | None = (
        False if body.fleet_access is None else None if body.fleet_access == "none" else body.fleet_access
    )
    users_service.update_user(
        session,
        actor=p,
        user=user,
        role=body.role,
        fleet_access=fleet,
        is_teacher=body.is_teacher,
        is_active=body.is_active,
    )
    session.commit()
    ctx.broker_sync.sync_user(session, user)
    return UserPublic.model_validate(user)


@router.post("/users/{user_id}/password", status_code=204)
def reset_password(user_id: Id, body: PasswordReset, p: Admin, session: SessionDep) -> Response:
    users_service.set_password(session, actor=p, user=_user(session, user_id), password=body.password)
    session.commit()
    return Response(status_code=204)


@router.get("/users/{user_id}/grants", response_model=list[GrantOut])
def list_grants(user_id: Id, _p: Admin, session: SessionDep) -> list[GrantOut]:
    devices, groups = users_service.list_grants(session, user_id=_user(session, user_id).id or 0)
    return [GrantOut(permission=g.permission, device_id=g.device_id) for g in devices] + [
        GrantOut(permission=g.permission, class_id=g.class_id) for g in groups
    ]


@router.put("/users/{user_id}/grants", response_model=GrantOut)
def put_grant(user_id: Id, body: GrantIn, p: Admin, session: SessionDep, ctx: ContextDep) -> GrantOut:
    """Grant read or write on one device (``device_id``) or on every device of a class (``class_id``)."""
    user = _user(session, user_id)
    users_service.grant(
        session, actor=p, user=user, permission=body.permission, device_id=body.device_id, class_id=body.class_id
    )
    session.commit()
    ctx.broker_sync.sync_user(session, user)
    return GrantOut(**body.model_dump())


@router.delete("/users/{user_id}/grants", status_code=204)
def delete_grant(
    user_id: Id,
    p: Admin,
    session: SessionDep,
    ctx: ContextDep,
    device_id: str | None = Query(None, max_length=64),
    class_id: int | None = Query(None, ge=1, le=MAX_ID),
) -> Response:
    if (device_id is None) == (class_id is None):
        raise AuthInvalid("name exactly one of device_id and class_id")
    user = _user(session, user_id)
    users_service.revoke_grant(session, actor=p, user=user, device_id=device_id, class_id=class_id)
    session.commit()
    ctx.broker_sync.sync_user(session, user)
    return Response(status_code=204)
