"""Device routes: register, enroll (token only, no user), list with liveness, show, deactivate, rotate,
share with the class. Each declares its permission; lists show only the devices the caller may see."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from sqlmodel import Session

from ... import crud
from ...auth import audit
from ...auth.access import Principal, authorize_class, visible_device_ids
from ...auth.errors import Forbidden
from ...auth.quotas import check_device_quota
from ...liveness import liveness
from ...models import Device, DeviceCreate, DevicePublic
from ...services.errors import EnrollmentRefused, ServiceError
from ...services.registry import EnrollRequest, EnrollResponse, Registration
from ..deps import MAX_ID, ContextDep, P, SessionDep, public, require

router = APIRouter(prefix="/v1", tags=["devices"])

DeviceReader = Annotated[Principal, Depends(require(P.READ_DEVICES, device="device_id"))]
DeviceWriter = Annotated[Principal, Depends(require(P.WRITE_DEVICES, device="device_id"))]
_AUDITED = ["id", "device_type", "location", "status", "key_version", "owner_id", "class_id", "shared_with_class"]


class DeviceStatus(DevicePublic):
    """A device with its liveness: ``state`` is online / stale / offline, ``last_seen_age_s`` the
    seconds since anything was heard from it (None: never)."""

    state: str
    last_seen_age_s: float | None
    last_health_at: datetime | None
    presence_at: datetime | None
    reported_config_error: str | None


class RegisterRequest(DeviceCreate):
    class_id: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ID,
        description="The class it belongs to (default: your class, when you are a student of one).",
    )


class ShareRequest(BaseModel):
    shared: bool = Field(description="True: every member of the device's class may read it.")


def _status(ctx: ContextDep, device: Device, now: datetime) -> DeviceStatus:
    state, age = liveness(device, now, ctx.settings)
    return DeviceStatus.model_validate(
        {
            **DevicePublic.model_validate(device).model_dump(),
            "state": state.value,
            "last_seen_age_s": age,
            "last_health_at": device.last_health_at,
            "presence_at": device.presence_at,
            "reported_config_error": device.reported_config_error,
        }
    )


def _device(request: Request) -> Device:
    device: Device = request.state.device
    return device


def _snap(session: Session, device_id: str) -> dict[str, object] | None:
    return audit.snapshot(session.get(Device, device_id), fields=_AUDITED)


@router.post("/devices/register", response_model=Registration, status_code=201)
def register_device(
    device_in: RegisterRequest,
    session: SessionDep,
    ctx: ContextDep,
    p: Annotated[Principal, Depends(require(P.WRITE_DEVICES))],
) -> Registration:
    """Create a device (owned by you, in your class) and its one-time enrollment token (shown once).
    Refused with ``quota_exceeded`` when the class or the student has all the devices allowed."""
    if p.key_devices is not None:  # whoever owns it, in a class or not
        raise Forbidden("an API key limited to some devices cannot register new ones")
    class_id = device_in.class_id
    if class_id is None and len(p.student_of) == 1 and not p.teacher_of:
        class_id = next(iter(p.student_of))
    if class_id is not None:
        classroom = authorize_class(session, p, class_id, teacher=False)
        check_device_quota(session, classroom=classroom, owner_id=p.user_id, is_student=class_id in p.student_of)
    audit.stage(
        session,
        actor=p,
        action="device.register",
        target_type="device",
        target_id=device_in.id,
        after=lambda: _snap(session, device_in.id),
    )
    registration = ctx.registry.register(
        session, device_in=DeviceCreate.model_validate(device_in.model_dump(exclude={"class_id"})),
        owner_id=p.user_id, class_id=class_id,
    )  # fmt: skip
    ctx.metrics.registry_actions.labels("register").inc()
    device = session.get(Device, registration.device.id)
    if device is not None:
        ctx.broker_sync.sync_device(session, device)
    return registration


@router.post("/enroll", response_model=EnrollResponse, dependencies=[Depends(public("the one-time enrollment token"))])
def enroll(body: EnrollRequest, session: SessionDep, ctx: ContextDep) -> EnrollResponse:
    """Exchange a one-time enrollment token and the device's public key for its broker credentials."""
    try:
        response = ctx.registry.enroll(session, token=body.token, public_key=body.public_key)
    except EnrollmentRefused as exc:
        ctx.metrics.enrollments.labels(exc.code).inc()
        raise
    except ServiceError as exc:
        ctx.metrics.enrollments.labels(exc.code).inc()
        raise
    ctx.metrics.enrollments.labels("enrolled").inc()
    # The device's own act (its token, its key): recorded just after the registry committed it.
    audit.record(
        session, actor=f"device:{response.device_id}", action="device.enroll", target_type="device",
        target_id=response.device_id, after=_snap(session, response.device_id),
    )  # fmt: skip
    session.commit()
    return response


@router.get("/devices", response_model=list[DeviceStatus])
def list_devices(
    session: SessionDep,
    ctx: ContextDep,
    p: Annotated[Principal, Depends(require(P.READ_DEVICES))],
    status: str | None = None,
) -> list[DeviceStatus]:
    """The devices you may see, with their liveness state and last-seen age."""
    now = datetime.now(UTC)
    visible = visible_device_ids(session, p)
    return [
        _status(ctx, d, now) for d in crud.list_devices(session, status=status) if visible is None or d.id in visible
    ]


@router.get("/devices/{device_id}", response_model=DeviceStatus)
def get_device(device_id: str, request: Request, ctx: ContextDep, _p: DeviceReader) -> DeviceStatus:
    return _status(ctx, _device(request), datetime.now(UTC))


@router.post("/devices/{device_id}/deactivate", response_model=DeviceStatus)
def deactivate_device(device_id: str, session: SessionDep, ctx: ContextDep, p: DeviceWriter) -> DeviceStatus:
    """Refuse the device at the broker (live connection dropped) and in the bridge, at once."""
    before = _snap(session, device_id)
    audit.stage(
        session, actor=p, action="device.deactivate", target_type="device", target_id=device_id, before=before,
        after=lambda: _snap(session, device_id),
    )  # fmt: skip
    device = ctx.registry.deactivate(session, device_id=device_id)
    ctx.metrics.registry_actions.labels("deactivate").inc()
    return _status(ctx, device, datetime.now(UTC))


@router.post("/devices/{device_id}/rotate", response_model=Registration)
def rotate_device(device_id: str, session: SessionDep, ctx: ContextDep, p: DeviceWriter) -> Registration:
    """New enrollment token; the device's current broker credentials are refused from now on."""
    before = _snap(session, device_id)
    audit.stage(
        session, actor=p, action="device.rotate", target_type="device", target_id=device_id, before=before,
        after=lambda: _snap(session, device_id),
    )  # fmt: skip
    registration = ctx.registry.rotate(session, device_id=device_id)
    ctx.metrics.registry_actions.labels("rotate").inc()
    return registration


@router.put("/devices/{device_id}/share", response_model=DeviceStatus)
def share_device(
    device_id: str, body: ShareRequest, request: Request, session: SessionDep, ctx: ContextDep, p: DeviceWriter
) -> DeviceStatus:
    """Share the device read-only with its class (or stop sharing it)."""
    from ...auth.classes import share_device as share

    device = share(session, actor=p, device=_device(request), shared=body.shared)
    session.commit()
    ctx.broker_sync.sync_device(session, device)
    return _status(ctx, device, datetime.now(UTC))
