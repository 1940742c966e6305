"""What operators do with rollouts (create, pause, resume, abort) and what they see (status with
counts per state and per wave, devices, history). The engine (:mod:`.engine`) does the rest.

Rule for overlapping rollouts: **refused**. A device belongs to at most one active (running, paused
or aborting) rollout; creating a second rollout that targets it fails with 409 naming the device and
the rollout that holds it. A database row per device (``rollout_locks``) enforces this even when
two API replicas create rollouts at the same moment.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from iot_protocol import ProtocolError, parse_settings

from ..liveness import Liveness, liveness
from ..models import Device, utcnow
from . import history
from .errors import RolloutConflict, RolloutInvalid, RolloutNotFound
from .gates import parse_abort_if, parse_gates
from .models import ACTIVE_STATUSES, Rollout, RolloutDevice, RolloutEvent, RolloutLock
from .releases import ReleaseService
from .settings import RolloutSettings
from .targets import parse_target, resolve
from .waves import assign, plan_waves

__all__ = ["DeviceView", "RolloutCreate", "RolloutService", "RolloutView", "WaveView", "set_status"]


class RolloutCreate(BaseModel):
    """A new rollout: a config change (``settings``) or a firmware release (``release``)."""

    name: str | None = Field(default=None, max_length=128)
    settings: dict[str, Any] | None = Field(default=None, description="Config changes (merged over each device's).")
    release: str | None = Field(default=None, max_length=32, description="Firmware release version to roll out.")
    target: dict[str, Any] = Field(description='{"devices": [...], "types": [...], "tags": [...], "groups": [...]}')
    canary: str | float = Field(default="5%", description="Share of the devices in the canary wave.")
    waves: list[str | float] = Field(default_factory=lambda: ["25%", "50%", "100%"])
    wave_wait_s: float | None = Field(default=None, ge=0, description="Observation time after each wave starts.")
    gates: dict[str, Any] | None = None
    abort_if: list[str] = Field(
        default_factory=list,
        description="Gate expressions over `gates` (e.g. failed>10%, offline>control+10%, temperature>45).",
    )
    offline_policy: Literal["converge", "fail"] = Field(
        default="converge",
        description="A device offline during its wave: converge (it applies the change when it is back; "
        "not counted) or fail (it counts as failed after device_deadline_s).",
    )
    device_deadline_s: float = Field(default=3600.0, gt=0)
    max_bytes_per_s: int | None = Field(
        default=None, ge=1024, le=2**31 - 1, description="Firmware download bandwidth cap (an INTEGER column)."
    )


class WaveView(BaseModel):
    wave: int
    percent: float
    devices: int
    counts: dict[str, int]


class RolloutView(BaseModel):
    id: int
    name: str
    kind: str
    status: str
    settings: dict[str, Any]
    release: str | None
    target: dict[str, Any]
    waves: list[float]
    wave_wait_s: float
    gates: dict[str, Any]
    offline_policy: str
    current_wave: int
    wave_started_at: datetime | None
    created_at: datetime
    finished_at: datetime | None
    created_by: str | None
    abort_reason: str | None
    devices: int
    counts: dict[str, int]
    per_wave: list[WaveView]


class DeviceView(BaseModel):
    device_id: str
    wave: int
    state: str
    previous_config_version: int | None
    target_config_version: int | None
    rollback_config_version: int | None
    previous_firmware: str | None
    error: str | None
    state_at: datetime


def set_status(session: Session, rollout_id: int, *, expected: tuple[str, ...], new: str, **values: Any) -> bool:
    """Change a rollout's status only if it is one of ``expected`` (one conditional UPDATE: a user's
    abort and the engine's step cannot overwrite each other). True if it changed."""
    result = session.execute(
        update(Rollout)
        .where(Rollout.id == rollout_id, col(Rollout.status).in_(expected))  # type: ignore[arg-type]
        .values(status=new, updated_at=utcnow(), **values)
    )
    if new not in ACTIVE_STATUSES and result.rowcount:  # type: ignore[attr-defined]
        session.execute(delete(RolloutLock).where(RolloutLock.rollout_id == rollout_id))  # type: ignore[arg-type]
    return bool(result.rowcount)  # type: ignore[attr-defined]


class RolloutService:
    """Args: settings (defaults), releases (firmware rollouts), timings (liveness thresholds)."""

    def __init__(self, settings: RolloutSettings, releases: ReleaseService, timings: object) -> None:
        self.settings = settings
        self.releases = releases
        self.timings = timings

    def _get(self, session: Session, rollout_id: int) -> Rollout:
        rollout = session.get(Rollout, rollout_id)
        if rollout is None:
            raise RolloutNotFound(f"no rollout #{rollout_id}: see 'iotctl rollout list'")
        return rollout

    # -- create -----------------------------------------------------------------------------------

    def create(self, session: Session, *, body: RolloutCreate, actor: str | None) -> RolloutView:
        """Resolve the target, assign waves, lock the devices and start (the engine sends the canary).

        Raises:
            RolloutInvalid: bad target, waves, gates or settings; a release not ready or not for a
                target device's type.
            RolloutConflict: a target device is in another active rollout.
        """
        if (body.settings is None) == (body.release is None):
            raise RolloutInvalid("give either settings (a config rollout) or release (a firmware rollout)")
        target = parse_target(body.target)
        plan = plan_waves(body.canary, body.waves)
        gates = parse_abort_if(body.abort_if, base=parse_gates(body.gates))
        release = None
        if body.settings is not None:
            if not body.settings:
                raise RolloutInvalid("settings is empty: give at least one key=value")
            if "firmware" in body.settings:
                raise RolloutInvalid("firmware goes through a release: use --release VERSION, not a setting")
            try:
                parse_settings({k: v for k, v in body.settings.items() if v is not None})
            except ProtocolError as exc:
                raise RolloutInvalid(str(exc)) from None
        else:
            assert body.release is not None
            release = self.releases.get(session, body.release)
            if release.status != "ready":
                raise RolloutInvalid(f"release {release.version} has no artifact yet: 'iotctl release upload' it first")
        ids = resolve(session, target)
        devices = {d.id: d for d in session.exec(select(Device).where(col(Device.id).in_(ids))).all()}
        if release is not None:
            for device_id in ids:
                if devices[device_id].device_type not in release.device_types:
                    raise RolloutInvalid(
                        f"device {device_id!r} is of type {devices[device_id].device_type!r}, but release "
                        f"{release.version} is for {', '.join(release.device_types)}: narrow the target"
                    )
        held = session.exec(select(RolloutLock).where(col(RolloutLock.device_id).in_(ids)).limit(1)).first()
        if held is not None:
            raise self._conflict(session, held)
        now = utcnow()
        name = body.name or (
            f"release {release.version}" if release else ", ".join(f"{k}={v}" for k, v in body.settings.items())[:128]
        )  # type: ignore[union-attr]
        rollout = Rollout(
            name=name,
            kind="firmware" if release else "config",
            status="running",
            settings=body.settings or {},
            release_version=release.version if release else None,
            max_bytes_per_s=body.max_bytes_per_s,
            target=target.to_dict(),
            canary_percent=plan[0],
            waves=plan,
            wave_wait_s=self.settings.default_wave_wait_s if body.wave_wait_s is None else body.wave_wait_s,
            gates=gates.model_dump(),
            offline_policy=body.offline_policy,
            device_deadline_s=body.device_deadline_s,
            current_wave=0,
            wave_started_at=now,
            created_by=actor,
        )
        session.add(rollout)
        session.flush()
        assert rollout.id is not None
        rollout.seed = f"rollout-{rollout.id}"
        # rows in device id order: their foreign keys lock the device rows, and the bridge and the
        # device-events consumer lock them in id order too (any other order can deadlock with them)
        for device_id, (wave, rank) in sorted(assign(rollout.seed, ids, plan).items()):
            online = liveness(devices[device_id], now, self.timings)[0] is Liveness.ONLINE  # type: ignore[arg-type]
            session.add(
                RolloutDevice(rollout_id=rollout.id, device_id=device_id, wave=wave, rank=rank, online_at_start=online)
            )
            session.add(RolloutLock(device_id=device_id, rollout_id=rollout.id))
        history.record(
            session,
            kind="created",
            actor=actor,
            rollout_id=rollout.id,
            devices=len(ids),
            waves=plan,
            target=target.to_dict(),
            **({"release": release.version} if release else {"settings": body.settings}),
        )
        try:
            session.commit()
        except IntegrityError:  # another replica locked one of the devices meanwhile
            session.rollback()
            held = session.exec(select(RolloutLock).where(col(RolloutLock.device_id).in_(ids)).limit(1)).first()
            if held is None:
                raise
            raise self._conflict(session, held) from None
        return self.view(session, rollout.id)

    def _conflict(self, session: Session, held: RolloutLock) -> RolloutConflict:
        other = session.get(Rollout, held.rollout_id)
        status = other.status if other else "active"
        return RolloutConflict(
            f"device {held.device_id!r} is already in rollout #{held.rollout_id} ({status}): "
            "wait for it to finish or abort it (overlapping rollouts are refused)"
        )

    # -- control ----------------------------------------------------------------------------------

    def pause(self, session: Session, *, rollout_id: int, actor: str | None) -> RolloutView:
        """Stop starting waves (gates keep being checked: a failing one still aborts)."""
        rollout = self._get(session, rollout_id)
        if not set_status(session, rollout_id, expected=("running",), new="paused"):
            raise RolloutConflict(f"rollout #{rollout_id} is {rollout.status}: only a running rollout can pause")
        history.record(session, kind="paused", actor=actor, rollout_id=rollout_id, wave=rollout.current_wave)
        session.commit()
        return self.view(session, rollout_id)

    def resume(self, session: Session, *, rollout_id: int, actor: str | None) -> RolloutView:
        """Run again; the current wave's wait starts afresh."""
        rollout = self._get(session, rollout_id)
        if not set_status(session, rollout_id, expected=("paused",), new="running", wave_started_at=utcnow()):
            raise RolloutConflict(f"rollout #{rollout_id} is {rollout.status}: only a paused rollout can resume")
        history.record(session, kind="resumed", actor=actor, rollout_id=rollout_id, wave=rollout.current_wave)
        session.commit()
        return self.view(session, rollout_id)

    def abort(self, session: Session, *, rollout_id: int, actor: str | None, reason: str) -> RolloutView:
        """Stop and roll every touched device back to its previous version (the engine sends it)."""
        rollout = self._get(session, rollout_id)
        why = f"aborted by {actor or 'an operator'}" + (f": {reason}" if reason else "")
        if not set_status(session, rollout_id, expected=("running", "paused"), new="aborting", abort_reason=why):
            raise RolloutConflict(f"rollout #{rollout_id} is {rollout.status}: nothing to abort")
        history.record(session, kind="aborted", actor=actor, rollout_id=rollout_id, reason=why, gate=None)
        session.commit()
        return self.view(session, rollout_id)

    # -- views ------------------------------------------------------------------------------------

    def view(self, session: Session, rollout_id: int) -> RolloutView:
        session.expire_all()
        rollout = self._get(session, rollout_id)
        rows = session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)).all()
        return _view(rollout, rows)

    def list(self, session: Session, *, status: str | None = None, limit: int = 100) -> list[RolloutView]:
        query = select(Rollout).order_by(col(Rollout.id).desc()).limit(limit)
        if status is not None:
            query = query.where(Rollout.status == status)
        out = []
        for rollout in session.exec(query).all():
            rows = session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout.id)).all()
            out.append(_view(rollout, rows))
        return out

    def devices(self, session: Session, *, rollout_id: int, state: str | None = None) -> list[DeviceView]:
        self._get(session, rollout_id)
        query = select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id).order_by(col(RolloutDevice.rank))
        if state is not None:
            query = query.where(RolloutDevice.state == state)
        return [DeviceView.model_validate(r, from_attributes=True) for r in session.exec(query).all()]

    def events(self, session: Session, *, rollout_id: int, limit: int = 500) -> list[RolloutEvent]:
        self._get(session, rollout_id)
        return list(history.events(session, rollout_id=rollout_id, limit=limit))


def _view(rollout: Rollout, rows: Any) -> RolloutView:
    assert rollout.id is not None
    counts = Counter(r.state for r in rows)
    per_wave = []
    for w, pct in enumerate(rollout.waves):
        in_wave = [r for r in rows if r.wave == w]
        per_wave.append(
            WaveView(wave=w, percent=pct, devices=len(in_wave), counts=dict(Counter(r.state for r in in_wave)))
        )
    return RolloutView(
        id=rollout.id,
        name=rollout.name,
        kind=rollout.kind,
        status=rollout.status,
        settings=rollout.settings,
        release=rollout.release_version,
        target=rollout.target,
        waves=rollout.waves,
        wave_wait_s=rollout.wave_wait_s,
        gates=rollout.gates,
        offline_policy=rollout.offline_policy,
        current_wave=rollout.current_wave,
        wave_started_at=_utc(rollout.wave_started_at),
        created_at=_utc(rollout.created_at) or rollout.created_at,
        finished_at=_utc(rollout.finished_at),
        created_by=rollout.created_by,
        abort_reason=rollout.abort_reason,
        devices=len(rows),
        counts=dict(counts),
        per_wave=per_wave,
    )


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
