"""The rollout engine: every ``tick_s``, the replica holding the database lease steps each rollout.

A step reads everything from the database and writes every decision back before acting on the next,
so an API restart (or another replica taking the lease over) continues where the last step left off:

1. refresh each touched device's state from what it reported (config reports with firmware
   progress, heartbeats) and from its liveness; time out devices that do not apply;
2. aborting: send each touched device its previous settings (and firmware), then wait for it to
   report them; done -> ``aborted``;
3. running or paused: measure the cohort (devices updated so far) and the control (devices not yet
   updated) over the current wave and check the gates; a failing gate aborts (with its reason);
4. running: send the current wave's devices their update (a signed desired config, the only way the
   engine reaches a device); when every device of the waves so far is done (or failed within the
   gates, or waiting offline) and the wave's wait is over, start the next wave, or complete.

Sending is idempotent: each desired config a rollout writes is marked ``created_by = rollout:<id>``,
so a step that crashed between storing and recording a version finds it and does not send another.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from iot_protocol import FirmwareTarget, compare_versions, firmware_version

from .. import crud
from ..core.config import CloudSettings
from ..liveness import Liveness, liveness
from ..models import Device, utcnow
from ..services.config import ConfigService
from ..services.errors import ServiceError, Unavailable
from ..services.registry import as_utc
from ..tsdb import TimeSeriesStore
from . import history
from .gates import GateFailure, Gates, evaluate
from .lease import Lease
from .measure import measure
from .metrics import RolloutMetrics
from .models import ACTIVE_STATUSES, FirmwareEvent, Release, Rollout, RolloutDevice
from .releases import ReleaseService
from .service import set_status
from .settings import RolloutSettings

__all__ = ["LEASE_NAME", "RolloutEngine"]

log = logging.getLogger(__name__)

LEASE_NAME = "rollout-engine"
IN_PROGRESS = ("pending", "updating", "downloading", "installed")
TRACKED = ("updating", "downloading", "installed", "waiting", "rolling_back")


def _marker(rollout_id: int, rollback: bool = False) -> str:
    return f"rollout:{rollout_id}" + (":rollback" if rollback else "")


class RolloutEngine:
    """Args:
    db: the metadata database.
    cloud: the cloud's settings (liveness thresholds).
    settings: tick, lease, defaults.
    configs: signs, stores and publishes desired configs.
    releases: firmware targets for releases.
    tsdb: readings, for field guards (None: guards measure nothing).
    metrics: where aborts, waves and updates are counted.
    """

    def __init__(
        self,
        *,
        db: Engine,
        cloud: CloudSettings,
        settings: RolloutSettings,
        configs: ConfigService,
        releases: ReleaseService,
        tsdb: TimeSeriesStore | None = None,
        metrics: RolloutMetrics | None = None,
    ) -> None:
        self.db = db
        self.cloud = cloud
        self.settings = settings
        self.configs = configs
        self.releases = releases
        self.tsdb = tsdb
        self.metrics = metrics
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = Lease(db, LEASE_NAME, self.holder, settings.lease_ttl_s)
        self.active = False
        self.steps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="rollout-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.active:
            try:
                self.lease.release()
            except Exception:
                log.exception("rollout engine lease not released (it expires by itself)")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("rollout engine step failed; trying again at the next tick")
            self._stop.wait(self.settings.tick_s)

    # -- one step ---------------------------------------------------------------------------------

    def step(self) -> bool:
        """Step every rollout if this replica holds (or takes) the lease; returns whether it did."""
        held = self.lease.acquire()
        if held != self.active:
            log.info("rollout engine %s", "active" if held else "standing by", extra={"holder": self.holder})
        self.active = held
        if self.metrics is not None:
            self.metrics.engine_active.set(1 if held else 0)
        if not held:
            return False
        with Session(self.db) as session:
            active = set(session.exec(select(Rollout.id).where(col(Rollout.status).in_(ACTIVE_STATUSES))).all())
            tracked = set(
                session.exec(select(RolloutDevice.rollout_id).where(col(RolloutDevice.state).in_(TRACKED))).all()
            )
        for rollout_id in sorted(active | tracked):
            if self._stop.is_set():
                break
            try:
                self._step_rollout(rollout_id)
            except Exception:
                log.exception("rollout step failed", extra={"rollout_id": rollout_id})
        self.steps += 1
        return True

    def _step_rollout(self, rollout_id: int) -> None:
        with Session(self.db, expire_on_commit=False) as s:
            r = s.get(Rollout, rollout_id)
            if r is None:
                return
            rows = list(s.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)).all())
            ids = [x.device_id for x in rows]
            devices = {d.id: d for d in s.exec(select(Device).where(col(Device.id).in_(ids))).all()}
            gates = Gates.model_validate(r.gates)
            now = utcnow()
            self._refresh(s, r, rows, devices, gates, now)
            s.commit()
            if r.status == "aborting":
                self._roll_back(s, r, rows, devices, gates, now)
                return
            if r.status not in ("running", "paused"):
                return
            failure = self._check_gates(s, r, rows, devices, gates, now)
            if failure is not None:
                self._abort(s, r, failure)
                s.refresh(r)
                if r.status == "aborting":
                    self._roll_back(s, r, rows, devices, gates, utcnow())
                return
            if r.status != "running":
                return
            current = [x for x in rows if x.wave == r.current_wave]
            for x in current:
                if x.state == "pending" or (x.state == "updating" and x.target_config_version is None):
                    s.refresh(r)
                    if r.status != "running":  # aborted or paused meanwhile: send no more
                        return
                    self._send(s, r, x, devices[x.device_id], utcnow())
            self._maybe_advance(s, r, rows, utcnow())

    # -- device states ----------------------------------------------------------------------------

    def _apply_timeout(self, gates: Gates) -> timedelta:
        return timedelta(seconds=gates.apply_timeout_s or self.settings.default_apply_timeout_s)

    def _set(
        self, s: Session, r: Rollout, x: RolloutDevice, state: str, now: datetime, error: str | None = None
    ) -> None:
        if x.state == state and x.error == error:
            return
        before = x.state
        x.state, x.state_at, x.error = state, now, error
        s.add(x)
        history.record(
            s,
            kind="device_state",
            actor=history.ENGINE,
            rollout_id=r.id,
            device_id=x.device_id,
            state=state,
            before=before,
            **({"error": error} if error else {}),
        )

    def _firmware_events(self, s: Session, ids: Sequence[str]) -> dict[str, list[FirmwareEvent]]:
        out: dict[str, list[FirmwareEvent]] = {}
        if not ids:
            return out
        for ev in s.exec(
            select(FirmwareEvent).where(col(FirmwareEvent.device_id).in_(ids)).order_by(col(FirmwareEvent.id))
        ).all():
            out.setdefault(ev.device_id, []).append(ev)
        return out

    def _refresh(
        self,
        s: Session,
        r: Rollout,
        rows: Sequence[RolloutDevice],
        devices: Mapping[str, Device],
        gates: Gates,
        now: datetime,
    ) -> None:
        live = [x for x in rows if x.state in TRACKED]
        if not live:
            return
        events = self._firmware_events(s, [x.device_id for x in live]) if r.kind == "firmware" else {}
        timeout = self._apply_timeout(gates)
        for x in live:
            dev = devices.get(x.device_id)
            if dev is None:
                continue
            if x.state == "rolling_back":
                self._refresh_rollback(s, r, x, dev, events.get(x.device_id, []), now)
                continue
            target = x.target_config_version
            if target is None:
                continue
            sent = as_utc(x.updated_at or now)
            state, error = x.state, x.error
            rv, rs = dev.reported_config_version, dev.reported_config_status
            config_applied = rv >= target and rs == "applied"
            if rv == target and rs == "rejected":
                self._set(
                    s,
                    r,
                    x,
                    "failed",
                    now,
                    f"config v{target} rejected: {dev.reported_config_error or 'no reason given'}",
                )
                continue
            if r.kind == "config":
                if config_applied:
                    self._set(s, r, x, "applied", now)
                    continue
            else:
                assert r.release_version is not None
                # steps about this release, reported for the config that asked for it (or a later one)
                mine = [
                    e
                    for e in events.get(x.device_id, [])
                    if e.version == r.release_version and e.config_version >= target
                ]
                self._learn_previous(s, x, mine, r.release_version)
                # A verdict (failed, rolled back, confirmed) outranks progress reported around it: a report
                # queued before a reboot may arrive after the verdict of the boots that followed.
                verdicts = [e for e in mine if e.state in ("failed", "rolled_back", "confirmed")]
                last = verdicts[-1] if verdicts else (mine[-1] if mine else None)
                if last is not None and last.state in ("failed", "rolled_back"):
                    verb = "rolled back by the device" if last.state == "rolled_back" else "failed"
                    self._set(
                        s, r, x, "failed", now, f"firmware {last.version} {verb}: {last.error or 'no reason given'}"
                    )
                    continue
                if last is not None and last.state == "confirmed" and config_applied:
                    self._set(s, r, x, "confirmed", now)
                    continue
                if last is not None and last.state in ("downloading", "installed"):
                    state = last.state
                # Only the device's own "confirmed" counts: running a release is not passing its health check.
            online = liveness(dev, now, self.cloud)[0] is Liveness.ONLINE
            if state in ("downloading", "installed"):
                if now - sent > timeout:
                    self._set(
                        s, r, x, "failed", now, f"not confirmed within {timeout.total_seconds():g}s (stuck {state})"
                    )
                else:
                    self._set(s, r, x, state, now, error)
                continue
            if not online:
                if r.offline_policy == "fail" and now - sent > timedelta(seconds=r.device_deadline_s):
                    self._set(s, r, x, "failed", now, f"offline past the deadline of {r.device_deadline_s:g}s")
                else:
                    self._set(s, r, x, "waiting", now, "offline: applies the change when it is back")
                continue
            if x.state == "waiting":
                self._set(s, r, x, "updating", now)
                continue
            if now - max(sent, as_utc(x.state_at)) > timeout:
                self._set(s, r, x, "failed", now, f"connected but did not apply within {timeout.total_seconds():g}s")

    def _refresh_rollback(
        self, s: Session, r: Rollout, x: RolloutDevice, dev: Device, events: Sequence[FirmwareEvent], now: datetime
    ) -> None:
        version = x.rollback_config_version
        if version is None:
            return
        sent = as_utc(x.state_at)
        rv, rs = dev.reported_config_version, dev.reported_config_status
        if rv == version and rs == "rejected":
            self._set(s, r, x, "rolling_back", now, f"rollback config v{version} rejected: {dev.reported_config_error}")
            return
        if not (rv >= version and rs == "applied"):
            return
        if r.kind == "firmware" and x.previous_firmware:
            after = [e for e in events if e.config_version >= version and e.running]
            running = after[-1].running if after else None
            if running is None and dev.last_health_at is not None and as_utc(dev.last_health_at) > sent:
                running = firmware_version(dev.firmware)
            if running is None or compare_versions(running, x.previous_firmware) != 0:
                return
        self._set(s, r, x, "rolled_back", now)

    # -- gates ------------------------------------------------------------------------------------

    def _check_gates(
        self,
        s: Session,
        r: Rollout,
        rows: Sequence[RolloutDevice],
        devices: Mapping[str, Device],
        gates: Gates,
        now: datetime,
    ) -> GateFailure | None:
        cohort = [x for x in rows if x.wave <= r.current_wave]
        if not any(x.state != "pending" for x in cohort):
            return None
        control = [x for x in rows if x.wave > r.current_wave]
        since = as_utc(r.wave_started_at or now)
        kw = {"since": since, "now": now, "timings": self.cloud, "gates": gates, "tsdb": self.tsdb}
        c = measure(s, rows=cohort, devices=devices, cohort=True, **kw)  # type: ignore[arg-type]
        k = measure(s, rows=control, devices=devices, cohort=False, **kw) if control else None  # type: ignore[arg-type]
        label = "canary" if r.current_wave == 0 else "updated"
        return evaluate(gates, c, k, label=label)

    def _abort(self, s: Session, r: Rollout, failure: GateFailure) -> None:
        wave = "the canary wave" if r.current_wave == 0 else f"wave {r.current_wave}"
        reason = f"gate '{failure.gate}' failed in {wave}: {failure.reason}"
        assert r.id is not None
        if set_status(s, r.id, expected=("running", "paused"), new="aborting", abort_reason=reason):
            history.record(
                s,
                kind="aborted",
                actor=history.ENGINE,
                rollout_id=r.id,
                reason=reason,
                gate=failure.gate,
                wave=r.current_wave,
            )
            if self.metrics is not None:
                self.metrics.aborts.labels(failure.gate.split(":")[0]).inc()
            log.warning("rollout aborted", extra={"rollout_id": r.id, "reason": reason})
        s.commit()

    # -- sending ----------------------------------------------------------------------------------

    def _update_changes(self, s: Session, r: Rollout) -> dict[str, object]:
        if r.kind == "config":
            return dict(r.settings)
        assert r.release_version is not None
        release = self.releases.get(s, r.release_version)
        return {"firmware": self.releases.target(release, max_bytes_per_s=r.max_bytes_per_s).to_dict()}

    def _send(self, s: Session, r: Rollout, x: RolloutDevice, dev: Device, now: datetime) -> None:
        assert r.id is not None
        if x.state == "pending":
            latest = crud.latest_config(s, device_id=x.device_id)
            x.previous_settings = dict(latest.settings) if latest else {}
            x.previous_config_version = latest.version if latest else 0
            x.previous_firmware = self._running(s, dev)
            x.updated_at = now
            self._set(s, r, x, "updating", now)
            s.commit()
        marker = _marker(r.id)
        latest = crud.latest_config(s, device_id=x.device_id)
        try:
            if latest is not None and latest.created_by == marker and latest.version > (x.previous_config_version or 0):
                version = self.configs.republish(s, device_id=x.device_id)
            else:
                version = self.configs.set_desired(
                    s, device_id=x.device_id, changes=self._update_changes(s, r), created_by=marker
                ).desired_version
        except Unavailable as exc:
            log.warning("rollout update not published; retrying", extra={"device_id": x.device_id, "error": str(exc)})
            s.rollback()
            return
        except ServiceError as exc:  # deactivated meanwhile, or the merged settings are invalid for it
            s.rollback()
            self._set(s, r, x, "failed", utcnow(), f"update not sent: {exc}")
            s.commit()
            return
        x.target_config_version = version
        s.add(x)
        history.record(
            s,
            kind="device_updated",
            actor=history.ENGINE,
            rollout_id=r.id,
            device_id=x.device_id,
            config_version=version,
        )
        s.commit()
        if self.metrics is not None:
            self.metrics.updates.labels("update").inc()

    @staticmethod
    def _learn_previous(s: Session, x: RolloutDevice, mine: Sequence[FirmwareEvent], release: str) -> None:
        """The version a device ran before the update, from its own first report about it, when its
        heartbeat had not told us yet (a rollback must know what to go back to)."""
        if x.previous_firmware is not None or not mine:
            return
        running = mine[0].running
        if running and compare_versions(running, release) != 0:
            x.previous_firmware = running
            s.add(x)

    def _running(self, s: Session, dev: Device) -> str | None:
        """The version the device runs: from its newest firmware report or heartbeat, whichever is later."""
        event = s.exec(
            select(FirmwareEvent)
            .where(FirmwareEvent.device_id == dev.id, col(FirmwareEvent.running).is_not(None))
            .order_by(col(FirmwareEvent.id).desc())
            .limit(1)
        ).first()
        from_health = firmware_version(dev.firmware)
        if event is None:
            return from_health
        if from_health is None or dev.last_health_at is None or as_utc(event.at) >= as_utc(dev.last_health_at):
            return event.running
        return from_health

    def _maybe_advance(self, s: Session, r: Rollout, rows: Sequence[RolloutDevice], now: datetime) -> None:
        assert r.id is not None
        s.refresh(r)
        if r.status != "running":
            return
        so_far = [x for x in rows if x.wave <= r.current_wave]
        # policy "fail": a device offline in its wave holds the wave until it applies or its deadline passes
        busy = IN_PROGRESS + (("waiting",) if r.offline_policy == "fail" else ())
        if any(x.state in busy for x in so_far):
            return
        in_wave = [x for x in rows if x.wave == r.current_wave]
        started = as_utc(r.wave_started_at or now)
        if in_wave and now - started < timedelta(seconds=r.wave_wait_s):
            return
        last = len(r.waves) - 1
        if r.current_wave >= last:
            if set_status(s, r.id, expected=("running",), new="completed", finished_at=now):
                counts: dict[str, int] = {}
                for x in rows:
                    counts[x.state] = counts.get(x.state, 0) + 1
                history.record(s, kind="completed", actor=history.ENGINE, rollout_id=r.id, counts=counts)
            s.commit()
            return
        r.current_wave += 1
        r.wave_started_at = now
        r.updated_at = now
        s.add(r)
        history.record(
            s,
            kind="wave_started",
            actor=history.ENGINE,
            rollout_id=r.id,
            wave=r.current_wave,
            percent=r.waves[r.current_wave],
            devices=sum(1 for x in rows if x.wave == r.current_wave),
        )
        s.commit()
        if self.metrics is not None:
            self.metrics.waves.inc()

    # -- rolling back -----------------------------------------------------------------------------

    def _restore(self, s: Session, r: Rollout, x: RolloutDevice) -> dict[str, object]:
        restore: dict[str, object] = dict(x.previous_settings or {})
        prev_version = x.previous_firmware
        if r.kind != "firmware" or not prev_version or not r.release_version:
            return restore
        if compare_versions(prev_version, r.release_version) != 0:
            prev = s.get(Release, prev_version)
            if prev is not None and prev.status == "ready":
                restore["firmware"] = self.releases.target(prev, max_bytes_per_s=r.max_bytes_per_s).to_dict()
            else:  # not a release this cloud knows: the device still has it in its other slot
                restore["firmware"] = FirmwareTarget(prev_version).to_dict()
        return restore

    def _roll_back(
        self,
        s: Session,
        r: Rollout,
        rows: Sequence[RolloutDevice],
        devices: Mapping[str, Device],
        gates: Gates,
        now: datetime,
    ) -> None:
        assert r.id is not None
        events = (
            self._firmware_events(s, [x.device_id for x in rows if x.state != "pending"])
            if r.kind == "firmware"
            else {}
        )
        for x in rows:
            if x.state in ("pending", "rolled_back", "rolling_back"):
                continue
            if r.kind == "firmware" and r.release_version and x.target_config_version is not None:
                mine = [
                    e
                    for e in events.get(x.device_id, [])
                    if e.version == r.release_version and e.config_version >= x.target_config_version
                ]
                self._learn_previous(s, x, mine, r.release_version)
            latest = crud.latest_config(s, device_id=x.device_id)
            if x.target_config_version is None and (latest is None or latest.created_by != _marker(r.id)):
                self._set(s, r, x, "rolled_back", now, "nothing was sent")  # it never got the update
                s.commit()
                continue
            try:
                view = self.configs.set_desired(
                    s,
                    device_id=x.device_id,
                    changes=self._restore(s, r, x),
                    created_by=_marker(r.id, rollback=True),
                    replace=True,
                )
            except Unavailable as exc:
                log.warning("rollback not published; retrying", extra={"device_id": x.device_id, "error": str(exc)})
                s.rollback()
                continue
            except ServiceError as exc:
                s.rollback()
                self._set(s, r, x, "rolling_back", utcnow(), f"rollback not sent: {exc}")
                s.commit()
                continue
            x.rollback_config_version = view.desired_version
            self._set(s, r, x, "rolling_back", utcnow())
            history.record(
                s,
                kind="rollback_sent",
                actor=history.ENGINE,
                rollout_id=r.id,
                device_id=x.device_id,
                config_version=view.desired_version,
                previous_config_version=x.previous_config_version,
                previous_firmware=x.previous_firmware,
            )
            s.commit()
            if self.metrics is not None:
                self.metrics.updates.labels("rollback").inc()
        pending = [x for x in rows if x.state == "rolling_back"]
        s.refresh(r)
        aborting_since = as_utc(r.updated_at)
        if not pending or now - aborting_since > self._apply_timeout(gates):
            if set_status(s, r.id, expected=("aborting",), new="aborted", finished_at=now):
                history.record(
                    s,
                    kind="rolled_back",
                    actor=history.ENGINE,
                    rollout_id=r.id,
                    rolled_back=sum(1 for x in rows if x.state == "rolled_back"),
                    still_rolling_back=[x.device_id for x in pending],
                )
            s.commit()
