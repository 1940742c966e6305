"""REST routes: ``/v1/rollouts``, ``/v1/releases`` (with resumable artifact downloads), and the
device-side extras rollouts need: ``/v1/devices/{id}/tags`` and ``/v1/devices/{id}/history``.
Each route names its permission (:mod:`.permissions`) in its signature."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import delete
from sqlmodel import Session, col, select

from iot_protocol import ProtocolError
from iot_protocol.firmware import MAX_ARTIFACT_BYTES, parse_version

from .. import crud
from ..api.deps import ContextDep, Id, SessionDep, authenticate, public
from ..auth.access import Principal, require_fleet, require_permission
from ..auth.permissions import Permission
from ..models import DeviceConfig, DeviceTag
from ..services.errors import NotFound
from . import history
from .errors import RolloutInvalid, RolloutNotFound
from .models import DEVICE_STATES, STATUSES, FirmwareEvent, Release
from .permissions import rule
from .releases import DownloadRefused, ReleaseService, ReleaseSpec
from .service import DeviceView, RolloutCreate, RolloutService, RolloutView

__all__ = ["devices_router", "releases_router", "rollouts_router", "routers"]

RolloutsRead = Annotated[Principal, rule("rollouts:read")]
RolloutsWrite = Annotated[Principal, rule("rollouts:write")]
ReleasesRead = Annotated[Principal, rule("releases:read")]
ReleasesWrite = Annotated[Principal, rule("releases:write")]
ReleasesSign = Annotated[Principal, rule("releases:sign")]
DevicesTag = Annotated[Principal, rule("devices:tag")]
DeviceRead = Annotated[Principal, rule("devices:read")]

# What reaches the database is bounded here: ids to 1..2^31-1 (deps.Id), filters to the values that
# exist, versions to what a release may have (a 500 otherwise: out of range, or a NUL byte on PostgreSQL).
StatusFilter = Annotated[
    str | None, Query(pattern=f"^({'|'.join(STATUSES)})$", description="Only rollouts in this status.")
]
StateFilter = Annotated[
    str | None, Query(pattern=f"^({'|'.join(DEVICE_STATES)})$", description="Only devices in this state.")
]
Version = Annotated[
    str,
    Path(max_length=32, pattern=r"^[0-9]{1,9}(\.[0-9]{1,9}){0,3}$", description="A release version, e.g. 1.2.0."),
]

rollouts_router = APIRouter(prefix="/v1/rollouts", tags=["rollouts"])
releases_router = APIRouter(prefix="/v1/releases", tags=["releases"])
devices_router = APIRouter(prefix="/v1/devices", tags=["devices"])


def _service(ctx: ContextDep) -> RolloutService:
    return ctx.rollouts.service  # type: ignore[no-any-return]


def _releases(ctx: ContextDep) -> ReleaseService:
    return ctx.rollouts.releases  # type: ignore[no-any-return]


# ---- rollouts ------------------------------------------------------------------------------------


class AbortRequest(BaseModel):
    reason: str = Field(default="", max_length=500)


class EventPublic(BaseModel):
    id: int
    at: datetime
    kind: str
    actor: str | None
    rollout_id: int | None
    device_id: str | None
    detail: dict[str, Any]


@rollouts_router.post("", response_model=RolloutView, status_code=201)
def create_rollout(body: RolloutCreate, session: SessionDep, ctx: ContextDep, user: RolloutsWrite) -> RolloutView:
    """Create and start a rollout: the engine sends the canary wave at its next step."""
    return _service(ctx).create(session, body=body, actor=user.actor)


@rollouts_router.get("", response_model=list[RolloutView])
def list_rollouts(
    session: SessionDep, ctx: ContextDep, _user: RolloutsRead, status: StatusFilter = None, limit: int = 100
) -> list[RolloutView]:
    return _service(ctx).list(session, status=status, limit=max(1, min(limit, 1000)))


@rollouts_router.get("/{rollout_id}", response_model=RolloutView)
def get_rollout(rollout_id: Id, session: SessionDep, ctx: ContextDep, _user: RolloutsRead) -> RolloutView:
    """Status, counts per device state and per wave, and the abort reason if it stopped."""
    return _service(ctx).view(session, rollout_id)


@rollouts_router.get("/{rollout_id}/devices", response_model=list[DeviceView])
def rollout_devices(
    rollout_id: Id, session: SessionDep, ctx: ContextDep, _user: RolloutsRead, state: StateFilter = None
) -> list[DeviceView]:
    return _service(ctx).devices(session, rollout_id=rollout_id, state=state)


@rollouts_router.get("/{rollout_id}/events", response_model=list[EventPublic])
def rollout_events(rollout_id: Id, session: SessionDep, ctx: ContextDep, _user: RolloutsRead) -> list[Any]:
    return [
        EventPublic.model_validate(e, from_attributes=True)
        for e in _service(ctx).events(session, rollout_id=rollout_id)
    ]


@rollouts_router.post("/{rollout_id}/pause", response_model=RolloutView)
def pause_rollout(rollout_id: Id, session: SessionDep, ctx: ContextDep, user: RolloutsWrite) -> RolloutView:
    return _service(ctx).pause(session, rollout_id=rollout_id, actor=user.actor)


@rollouts_router.post("/{rollout_id}/resume", response_model=RolloutView)
def resume_rollout(rollout_id: Id, session: SessionDep, ctx: ContextDep, user: RolloutsWrite) -> RolloutView:
    return _service(ctx).resume(session, rollout_id=rollout_id, actor=user.actor)


@rollouts_router.post("/{rollout_id}/abort", response_model=RolloutView)
def abort_rollout(
    rollout_id: Id, session: SessionDep, ctx: ContextDep, user: RolloutsWrite, body: AbortRequest | None = None
) -> RolloutView:
    """Stop, and roll every device the rollout touched back to its previous version."""
    return _service(ctx).abort(session, rollout_id=rollout_id, actor=user.actor, reason=(body or AbortRequest()).reason)


# ---- releases ------------------------------------------------------------------------------------


class ReleasePublic(BaseModel):
    version: str
    size: int
    sha256: str
    device_types: list[str]
    min_version: str | None
    notes: str
    status: str
    manifest: str
    created_at: datetime
    created_by: str | None
    uploaded_at: datetime | None


class ReleaseCreate(BaseModel):
    manifest: str = Field(min_length=1, max_length=16_384, description="The signed manifest (JWS).")


class SignRequest(BaseModel):
    version: str = Field(max_length=32)
    size: int = Field(gt=0, le=MAX_ARTIFACT_BYTES)
    sha256: str = Field(min_length=64, max_length=64)
    device_types: list[str] = Field(min_length=1)
    min_version: str | None = Field(default=None, max_length=32)
    notes: str = Field(default="", max_length=1000)


class SignResponse(BaseModel):
    manifest: str


def _public(release: Release) -> ReleasePublic:
    return ReleasePublic.model_validate(release, from_attributes=True)


@releases_router.post("/sign", response_model=SignResponse)
def sign_manifest(body: SignRequest, ctx: ContextDep, _user: ReleasesSign) -> SignResponse:
    """Sign a manifest with the API's release key (only when it holds one)."""
    spec = ReleaseSpec(
        version=body.version,
        size=body.size,
        sha256=body.sha256,
        device_types=tuple(body.device_types),
        min_version=body.min_version,
        notes=body.notes,
    )
    return SignResponse(manifest=_releases(ctx).sign(spec))


@releases_router.post("", response_model=ReleasePublic, status_code=201)
def create_release(body: ReleaseCreate, session: SessionDep, ctx: ContextDep, user: ReleasesWrite) -> ReleasePublic:
    """Register a release from its signed manifest (verified with the release key); upload the artifact next."""
    return _public(_releases(ctx).create(session, manifest=body.manifest, actor=user.actor))


@releases_router.get("", response_model=list[ReleasePublic])
def list_releases(session: SessionDep, ctx: ContextDep, _user: ReleasesRead) -> list[ReleasePublic]:
    return [_public(r) for r in _releases(ctx).list(session)]


@releases_router.get("/{version}", response_model=ReleasePublic)
def get_release(version: Version, session: SessionDep, ctx: ContextDep, _user: ReleasesRead) -> ReleasePublic:
    return _public(_releases(ctx).get(session, version))


def _check_version(version: str) -> None:
    try:
        parse_version(version)
    except ProtocolError as exc:
        raise RolloutInvalid(str(exc)) from None


@releases_router.put("/{version}/artifact", response_model=ReleasePublic)
async def upload_artifact(version: Version, request: Request, ctx: ContextDep, user: ReleasesWrite) -> ReleasePublic:
    """The artifact's bytes as the request body; kept only if its size and SHA-256 are the manifest's."""
    _check_version(version)
    releases = _releases(ctx)
    engine = ctx.engine

    def _exists() -> None:
        with Session(engine) as s:
            releases.get(s, version)

    await run_in_threadpool(_exists)
    temp: FilePath = releases.store.temp_path(f"release-{version}")
    size = 0
    try:
        with open(temp, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > releases.max_artifact_bytes:
                    raise HTTPException(413, f"artifact larger than {releases.max_artifact_bytes} bytes")
                f.write(chunk)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise

    def _accept() -> ReleasePublic:
        with Session(engine, expire_on_commit=False) as s:
            return _public(releases.accept_artifact(s, version=version, temp=temp, actor=user.actor))

    return await run_in_threadpool(_accept)


_RANGE_RE = re.compile(r"\Abytes=(\d*)-(\d*)\Z")
_CHUNK = 64 * 1024


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single ``Range: bytes=a-b``; None: send it all. Raises 416 if unsatisfiable."""
    if not header:
        return None
    m = _RANGE_RE.match(header.strip())
    if m is None:  # several ranges or another unit: RFC 9110 lets us answer with the whole body
        return None
    a, b = m.groups()
    if not a and not b:
        return None
    if not a:  # the last b bytes
        first, last = max(0, size - int(b)), size - 1
    else:
        first, last = int(a), min(int(b), size - 1) if b else size - 1
    if first >= size or first > last:
        raise HTTPException(
            416, f"range {header} is outside the artifact's {size} bytes", headers={"Content-Range": f"bytes */{size}"}
        )
    return first, last


@releases_router.get(
    "/{version}/artifact",
    dependencies=[Depends(public("a device's request signed by its key, or a fleet reader's bearer token"))],
)
def download_artifact(
    version: Version,
    request: Request,
    session: SessionDep,
    ctx: ContextDep,
    authorization: Annotated[str | None, Header()] = None,
    range_: Annotated[str | None, Header(alias="Range")] = None,
) -> Response:
    """The artifact, whole or one byte range (``Range: bytes=N-``: resume after a cut). Devices
    authenticate with a request signed by their key (``Authorization: Device <jws>``), users with
    their bearer token."""
    releases = _releases(ctx)
    metrics = ctx.rollouts.metrics
    auth = (authorization or "").strip()
    scheme, _, credential = auth.partition(" ")
    if scheme == "Device":
        try:
            releases.authorize_device(session, token=credential.strip(), version=version)
        except DownloadRefused as exc:
            metrics.downloads.labels("refused").inc()
            raise HTTPException(exc.status, str(exc)) from None
    elif scheme == "Bearer" and credential:
        person = authenticate(request, session, ctx)  # raises NotAuthenticated (401) for a bad token
        require_permission(person, Permission.READ_DEVICES)
        require_fleet(person, Permission.READ_DEVICES)
    else:
        raise HTTPException(401, "missing credentials: a device's signed request or a bearer token")
    release = releases.get(session, version)
    if release.status != "ready" or release.artifact_key is None or not releases.store.exists(release.artifact_key):
        raise RolloutNotFound(f"release {version} has no artifact yet")
    size = release.size
    span = _parse_range(range_, size)
    first, last = span if span is not None else (0, size - 1)
    key = release.artifact_key

    def body() -> Iterator[bytes]:
        with releases.store.open(key) as f:
            f.seek(first)
            left = last - first + 1
            while left > 0:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                metrics.artifact_bytes.inc(len(chunk))
                yield chunk

    headers = {
        "Accept-Ranges": "bytes",
        "Content-Length": str(last - first + 1),
        "ETag": f'"{release.sha256}"',
    }
    metrics.downloads.labels("partial" if span is not None else "full").inc()
    if span is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        return StreamingResponse(body(), status_code=206, media_type="application/octet-stream", headers=headers)
    return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)


# ---- device tags and history ---------------------------------------------------------------------


class TagsBody(BaseModel):
    tags: list[str] = Field(max_length=64, description="The device's tags (replaces the current ones).")


class TagsView(BaseModel):
    device_id: str
    tags: list[str]


class ConfigVersionView(BaseModel):
    version: int
    created_at: datetime
    created_by: str | None
    settings: dict[str, Any]


class FirmwareEventView(BaseModel):
    at: datetime
    version: str
    state: str
    running: str | None
    error: str | None
    config_version: int


class DeviceHistory(BaseModel):
    device_id: str
    firmware: str | None
    config: list[ConfigVersionView]
    firmware_events: list[FirmwareEventView]
    rollout_events: list[EventPublic]


def _device_or_404(session: Session, device_id: str) -> Any:
    device = crud.get_device(session, device_id=device_id)
    if device is None:
        raise NotFound(f"no device {device_id!r}", device_id=device_id)
    return device


_TAG_RE = re.compile(r"\A[A-Za-z0-9_.:-]{1,64}\Z")


@devices_router.put("/{device_id}/tags", response_model=TagsView)
def set_tags(device_id: str, body: TagsBody, session: SessionDep, user: DevicesTag) -> TagsView:
    """Replace the device's tags (rollouts target them with ``tag:NAME``)."""
    _device_or_404(session, device_id)
    tags = list(dict.fromkeys(t.strip() for t in body.tags))
    for tag in tags:
        if not _TAG_RE.match(tag):
            raise RolloutInvalid(f"bad tag {tag[:70]!r}: 1-64 of letters, digits, '_', '-', '.', ':'")
    session.execute(delete(DeviceTag).where(DeviceTag.device_id == device_id))  # type: ignore[arg-type]
    for tag in tags:
        session.add(DeviceTag(device_id=device_id, tag=tag))
    history.record(session, kind="tags_set", actor=user.actor, device_id=device_id, tags=tags)
    session.commit()
    return TagsView(device_id=device_id, tags=sorted(tags))


@devices_router.get("/{device_id}/tags", response_model=TagsView)
def get_tags(device_id: str, session: SessionDep, _user: DeviceRead) -> TagsView:
    _device_or_404(session, device_id)
    tags = session.exec(select(DeviceTag.tag).where(DeviceTag.device_id == device_id)).all()
    return TagsView(device_id=device_id, tags=sorted(tags))


@devices_router.get("/{device_id}/history", response_model=DeviceHistory)
def device_history(device_id: str, session: SessionDep, _user: DeviceRead, limit: int = 100) -> DeviceHistory:
    """The device's config versions (who set each), its firmware steps, and its rollout events."""
    device = _device_or_404(session, device_id)
    limit = max(1, min(limit, 1000))
    configs = session.exec(
        select(DeviceConfig)
        .where(DeviceConfig.device_id == device_id)
        .order_by(col(DeviceConfig.version).desc())
        .limit(limit)
    ).all()
    firmware = session.exec(
        select(FirmwareEvent)
        .where(FirmwareEvent.device_id == device_id)
        .order_by(col(FirmwareEvent.id).desc())
        .limit(limit)
    ).all()
    return DeviceHistory(
        device_id=device_id,
        firmware=device.firmware,
        config=[ConfigVersionView.model_validate(c, from_attributes=True) for c in reversed(configs)],
        firmware_events=[FirmwareEventView.model_validate(e, from_attributes=True) for e in reversed(firmware)],
        rollout_events=[
            EventPublic.model_validate(e, from_attributes=True)
            for e in history.events(session, device_id=device_id, limit=limit)
        ],
    )


routers = (rollouts_router, releases_router, devices_router)
