"""Device routes: register, enroll (token only, no user), list with liveness, show, deactivate, rotate."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from sqlmodel import Session

from ... import crud
from ...liveness import liveness
from ...models import Device, DeviceCreate, DevicePublic
from ...services.errors import EnrollmentRefused, NotFound, ServiceError
from ...services.registry import EnrollRequest, EnrollResponse, Registration
from ..deps import ContextDep, Operator, SessionDep, Viewer

router = APIRouter(prefix="/v1", tags=["devices"])


class DeviceStatus(DevicePublic):
    """A device with its liveness: ``state`` is online / stale / offline, ``last_seen_age_s`` the
    seconds since anything was heard from it (None: never)."""

    state: str
    last_seen_age_s: float | None
    last_health_at: datetime | None
    presence_at: datetime | None
    reported_config_error: str | None


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


def _get(session: Session, device_id: str) -> Device:
    device = crud.get_device(session, device_id=device_id)
    if device is None:
        raise NotFound(f"no device {device_id!r}", device_id=device_id)
    return device


@router.post("/devices/register", response_model=Registration, status_code=201)
def register_device(
    device_in: DeviceCreate, session: SessionDep, ctx: ContextDep, _user: Operator
) -> Registration:
    """Create a device and its one-time enrollment token (shown once)."""
    registration = ctx.registry.register(session, device_in=device_in)
    ctx.metrics.registry_actions.labels("register").inc()
    return registration


@router.post("/enroll", response_model=EnrollResponse)
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
    return response


@router.get("/devices", response_model=list[DeviceStatus])
def list_devices(
    session: SessionDep, ctx: ContextDep, _user: Viewer, status: str | None = None
) -> list[DeviceStatus]:
    """Every device with its liveness state and last-seen age."""
    now = datetime.now(UTC)
    return [_status(ctx, d, now) for d in crud.list_devices(session, status=status)]


@router.get("/devices/{device_id}", response_model=DeviceStatus)
def get_device(device_id: str, session: SessionDep, ctx: ContextDep, _user: Viewer) -> DeviceStatus:
    return _status(ctx, _get(session, device_id), datetime.now(UTC))


@router.post("/devices/{device_id}/deactivate", response_model=DeviceStatus)
def deactivate_device(device_id: str, session: SessionDep, ctx: ContextDep, _user: Operator) -> DeviceStatus:
    """Refuse the device at the broker (live connection dropped) and in the bridge, at once."""
    device = ctx.registry.deactivate(session, device_id=device_id)
    ctx.metrics.registry_actions.labels("deactivate").inc()
    return _status(ctx, device, datetime.now(UTC))


@router.post("/devices/{device_id}/rotate", response_model=Registration)
def rotate_device(device_id: str, session: SessionDep, ctx: ContextDep, _user: Operator) -> Registration:
    """New enrollment token; the device's current broker credentials are refused from now on."""
    registration = ctx.registry.rotate(session, device_id=device_id)
    ctx.metrics.registry_actions.labels("rotate").inc()
    return registration
