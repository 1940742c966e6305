"""The fleet page's rows: every device a person may see with its liveness, type, location, firmware
and config (desired vs reported), readings per second, recent rejections and ledger verdict, plus
the classes they teach. A handful of grouped queries, whatever the fleet's size (500 devices in tens
of milliseconds): the registry's rows, the desired configs, the dead-letter counts, the ledger
verdicts, and one windowed count from the time-series store."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from .. import crud
from ..auth.access import Principal, device_level, visible_device_ids
from ..auth.models import Classroom, User
from ..core.config import CloudSettings
from ..liveness import liveness
from ..services.deadletters import count_by_device
from ..services.ledger import ledger_verdicts
from ..tsdb import StoreError, TimeSeriesStore
from .settings import ConsoleSettings

__all__ = ["FleetRow", "FleetView", "fleet_view"]


class FleetRow(BaseModel):
    id: str
    device_type: str
    location: str
    status: str = Field(description="pending, active or inactive (registry).")
    state: str = Field(description="online, stale or offline (liveness).")
    last_seen_age_s: float | None
    firmware_reported: str | None
    firmware_desired: str | None
    config_desired: int
    config_reported: int
    config_status: str | None
    config_error: str | None
    readings_per_s: float | None = Field(description="None: the store did not answer.")
    rejections: int = Field(description="Dead letters in the rejections window.")
    verdict: str = Field(description="Ledger verdict: no-health, balanced, in-flight, lost or excess.")
    in_flight: int
    owner: str | None
    class_id: int | None
    access: str = Field(description="read or write: what you may do with it.")


class ClassInfo(BaseModel):
    id: int
    name: str


class FleetView(BaseModel):
    devices: list[FleetRow]
    classes: list[ClassInfo] = Field(description="The classes you teach (admins: every class).")
    rate_window_s: int
    rejections_window_s: float
    store_error: str | None = None
    generated_at: datetime


def _firmware_version(settings: dict[str, Any]) -> str | None:
    fw = settings.get("firmware")
    if isinstance(fw, dict) and isinstance(fw.get("version"), str):
        return str(fw["version"])
    return None


def _rates(store: TimeSeriesStore, window_s: int) -> dict[str, float]:
    """Readings per second per device stamped in the last ``window_s`` seconds (one query; the window
    straddles at most two of the store's epoch-aligned buckets, whose counts add up)."""
    end = int(time.time() * 1000)
    rows = store.query(device_id=None, fields=None, start_ms=end - window_s * 1000, end_ms=end, window_s=window_s,
                       agg="count", resolution="raw")  # fmt: skip
    out: dict[str, float] = {}
    for r in rows:
        n = max((v for v in r.values.values() if v is not None), default=0.0)
        out[r.device_id] = out.get(r.device_id, 0.0) + float(n) / window_s  # n: the field with most readings
    return out


def _level(session: Session, p: Principal, device: Any) -> str:
    """``write`` or ``read``: the common cases without a query, the rest by the access rules."""
    if p.key_devices is None and (
        p.is_admin
        or p.fleet_access == "write"
        or device.owner_id == p.user_id
        or (device.class_id is not None and device.class_id in p.teacher_of)
    ):
        return "write"
    return device_level(session, p, device) or "read"


def fleet_view(
    session: Session,
    *,
    principal: Principal,
    cloud: CloudSettings,
    console: ConsoleSettings,
    store: TimeSeriesStore,
) -> FleetView:
    now = datetime.now(UTC)
    visible = visible_device_ids(session, principal)
    devices = [d for d in crud.list_devices(session) if visible is None or d.id in visible]
    ids = [d.id for d in devices]
    desired = crud.desired_settings(session, device_ids=ids if visible is not None else None)
    rejections = count_by_device(
        session,
        since=now - timedelta(seconds=console.rejections_window_s),
        device_ids=ids if visible is not None else None,
    )
    verdicts = ledger_verdicts(session, devices)
    store_error = None
    try:
        rates: dict[str, float] | None = _rates(store, console.rate_window_s)
    except (StoreError, ValueError) as exc:
        rates, store_error = None, f"the time-series store did not answer: {exc}"
    owner_ids = {d.owner_id for d in devices if d.owner_id is not None}
    owners = (
        {u.id: u.username for u in session.exec(select(User).where(col(User.id).in_(owner_ids)))} if owner_ids else {}
    )
    if principal.is_admin:
        classes = list(session.exec(select(Classroom).order_by(col(Classroom.id))))
    elif principal.teacher_of:
        classes = list(session.exec(select(Classroom).where(col(Classroom.id).in_(principal.teacher_of))))
    else:
        classes = []
    rows = []
    for d in devices:
        state, age = liveness(d, now, cloud)
        books = verdicts[d.id]
        level = _level(session, principal, d)
        rows.append(
            FleetRow(
                id=d.id,
                device_type=d.device_type,
                location=d.location,
                status=d.status,
                state=state.value,
                last_seen_age_s=age,
                firmware_reported=d.firmware,
                firmware_desired=_firmware_version(desired.get(d.id, {})),
                config_desired=d.desired_config_version,
                config_reported=d.reported_config_version,
                config_status=d.reported_config_status,
                config_error=d.reported_config_error,
                readings_per_s=None if rates is None else round(rates.get(d.id, 0.0), 3),
                rejections=rejections.get(d.id, 0),
                verdict=books.verdict,
                in_flight=books.in_flight,
                owner=owners.get(d.owner_id) if d.owner_id is not None else None,
                class_id=d.class_id,
                access=level,
            )
        )
    return FleetView(
        devices=rows,
        classes=[ClassInfo(id=c.id, name=c.name) for c in classes if c.id is not None],
        rate_window_s=console.rate_window_s,
        rejections_window_s=console.rejections_window_s,
        store_error=store_error,
        generated_at=now,
    )
