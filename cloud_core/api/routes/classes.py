"""Organisations and classes: create a class (teachers, admins), list and show the classes you are in,
add members (a teacher may create student accounts), remove members, read a class's quotas and usage
(its teachers), set quotas (admins)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from ...auth import classes as classes_service
from ...auth.access import Principal
from ...auth.models import Classroom, ClassroomPublic, Organisation, User
from ..deps import Admin, Authenticated, ContextDep, Id, P, SessionDep, require

router = APIRouter(prefix="/v1", tags=["classes"])

ClassMemberDep = Annotated[Principal, Depends(require(P.READ_DEVICES, klass="class_id"))]
ClassTeacherDep = Annotated[Principal, Depends(require(P.WRITE_DEVICES, klass="class_id", teacher=True))]
ClassTeacherReadDep = Annotated[Principal, Depends(require(P.READ_DEVICES, klass="class_id", teacher=True))]


class Quotas(BaseModel):
    max_devices: int | None = Field(default=None, ge=0)
    max_devices_per_student: int | None = Field(default=None, ge=0)
    readings_per_s_per_device: float | None = Field(default=None, ge=0)
    readings_per_s: float | None = Field(default=None, ge=0)
    stored_bytes: int | None = Field(default=None, ge=0)


class ClassCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    quotas: Quotas = Field(default_factory=Quotas)


class MemberIn(BaseModel):
    username: str = Field(min_length=1, max_length=128)
    class_role: Literal["teacher", "student"] = "student"
    password: str | None = Field(
        default=None, max_length=256, description="Create the user with this password (a student account)."
    )


class MemberOut(BaseModel):
    user_id: int
    username: str
    class_role: str


class DeviceBrief(BaseModel):
    id: str
    owner_id: int | None
    status: str
    shared_with_class: bool


class ClassDetail(BaseModel):
    info: ClassroomPublic
    members: list[MemberOut]
    devices: list[DeviceBrief]


class OrgIn(BaseModel):
    name: str = Field(min_length=1, max_length=128)


class OrgOut(BaseModel):
    id: int
    name: str


def _classroom(request: Request) -> Classroom:
    classroom: Classroom = request.state.classroom
    return classroom


@router.post("/admin/orgs", response_model=OrgOut, status_code=201)
def create_org(body: OrgIn, p: Admin, session: SessionDep) -> OrgOut:
    org = classes_service.create_org(session, actor=p, name=body.name)
    session.commit()
    return OrgOut(id=org.id or 0, name=org.name)


@router.get("/admin/orgs", response_model=list[OrgOut])
def list_orgs(_p: Admin, session: SessionDep) -> list[OrgOut]:
    from sqlmodel import select

    return [OrgOut(id=o.id or 0, name=o.name) for o in session.exec(select(Organisation)).all()]


@router.post("/classes", response_model=ClassroomPublic, status_code=201)
def create_class(
    body: ClassCreate, p: Annotated[Principal, Depends(require(P.WRITE_DEVICES))], session: SessionDep
) -> ClassroomPublic:
    """Create a class you teach (teachers and admins). Quotas left out are unlimited."""
    classroom = classes_service.create_class(
        session, actor=p, name=body.name, quotas=body.quotas.model_dump(exclude_unset=True)
    )
    session.commit()
    return ClassroomPublic.model_validate(classroom)


@router.get("/classes", response_model=list[ClassroomPublic])
def list_classes(p: Authenticated, session: SessionDep) -> list[ClassroomPublic]:
    """The classes you are in (admins: all)."""
    rows = classes_service.list_classes(session, ids=None if p.is_admin else set(p.classes))
    return [ClassroomPublic.model_validate(c) for c in rows]


@router.get("/classes/{class_id}", response_model=ClassDetail)
def get_class(class_id: Id, request: Request, p: ClassMemberDep, session: SessionDep) -> ClassDetail:
    """Members, and the devices you may see in it (teachers: all of them)."""
    classroom = _classroom(request)
    from ...auth.access import visible_device_ids

    visible = visible_device_ids(session, p)
    devices = [
        DeviceBrief(id=d.id, owner_id=d.owner_id, status=d.status, shared_with_class=d.shared_with_class)
        for d in classes_service.class_devices(session, class_id=class_id)
        if visible is None or d.id in visible
    ]
    members = [
        MemberOut(user_id=u.id or 0, username=u.username, class_role=r)
        for u, r in classes_service.members(session, class_id=class_id)
    ]
    return ClassDetail(info=ClassroomPublic.model_validate(classroom), members=members, devices=devices)


@router.post("/classes/{class_id}/members", response_model=MemberOut, status_code=201)
def add_member(
    class_id: Id, body: MemberIn, request: Request, p: ClassTeacherDep, session: SessionDep, ctx: ContextDep
) -> MemberOut:
    """Add a user of the organisation, or (with ``password``) create a student account and add it."""
    user = classes_service.add_member(
        session,
        actor=p,
        classroom=_classroom(request),
        class_role=body.class_role,
        username=body.username,
        password=body.password,
    )
    session.commit()
    ctx.broker_sync.sync_user(session, user)
    return MemberOut(user_id=user.id or 0, username=user.username, class_role=body.class_role)


@router.delete("/classes/{class_id}/members/{user_id}", status_code=204)
def remove_member(
    class_id: Id, user_id: Id, request: Request, p: ClassTeacherDep, session: SessionDep, ctx: ContextDep
) -> Response:
    classes_service.remove_member(session, actor=p, classroom=_classroom(request), user_id=user_id)
    session.commit()
    user = session.get(User, user_id)
    if user is not None:
        ctx.broker_sync.sync_user(session, user)
    return Response(status_code=204)


@router.get("/classes/{class_id}/quota")
def get_quota(class_id: Id, request: Request, _p: ClassTeacherReadDep, session: SessionDep) -> dict[str, Any]:
    """The class's quotas and usage: devices (per student), stored bytes, and quota_exceeded rejections
    per device over the last 24 hours."""
    return asdict(classes_service.class_usage(session, classroom=_classroom(request)))


@router.put("/classes/{class_id}/quota", response_model=ClassroomPublic)
def set_quota(class_id: Id, body: Quotas, request: Request, p: Admin, session: SessionDep) -> ClassroomPublic:
    """Set quotas (admins; fields left out are unchanged, null is unlimited)."""
    from ...auth.access import authorize_class

    classroom = authorize_class(session, p, class_id, teacher=False)
    classes_service.set_quota(session, actor=p, classroom=classroom, quotas=body.model_dump(exclude_unset=True))
    session.commit()
    return ClassroomPublic.model_validate(classroom)
