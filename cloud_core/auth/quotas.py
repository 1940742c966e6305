"""Class quotas as the rest of the platform reads them: the device-count checks at registration, and
the per-device view the bridge enforces (readings per second per device and per class, stored bytes
per class), with the bridge's additions to what each class has stored.

The bridge reads this through :func:`load_device_quotas` and writes through :func:`add_stored_bytes`
only; it never sees users or grants.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from ..models import Device
from .errors import QuotaExceeded
from .models import Classroom, ClassUsage

__all__ = ["DeviceQuota", "add_stored_bytes", "check_device_quota", "load_device_quotas"]


@dataclass(frozen=True, slots=True)
class DeviceQuota:
    """What limits one device's telemetry: its own rate, its class's rate and stored-bytes limit
    (None: unlimited), and the bytes its class has stored so far."""

    device_id: str
    class_id: int
    device_rate: float | None
    class_rate: float | None
    class_bytes_limit: int | None


def load_device_quotas(session: Session) -> tuple[dict[str, DeviceQuota], dict[int, int]]:
    """(device id -> its quota, for every device in a class; class id -> bytes stored so far)."""
    rows = session.exec(select(Device.id, Classroom).join(Classroom, col(Classroom.id) == col(Device.class_id))).all()
    quotas = {
        device_id: DeviceQuota(
            device_id,
            c.id,  # type: ignore[arg-type]
            c.readings_per_s_per_device,
            c.readings_per_s,
            c.stored_bytes,
        )
        for device_id, c in rows
    }
    stored = {u.class_id: u.stored_bytes for u in session.exec(select(ClassUsage)).all()}
    return quotas, stored


def add_stored_bytes(session: Session, deltas: Mapping[int, int]) -> None:
    """Add to classes' stored bytes (atomic per row: replicas add concurrently). Caller commits."""
    now = datetime.now(UTC)
    for class_id, delta in deltas.items():
        if not delta:
            continue
        result = session.execute(
            update(ClassUsage)
            .where(col(ClassUsage.class_id) == class_id)
            .values(stored_bytes=ClassUsage.stored_bytes + delta, updated_at=now)
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            session.add(ClassUsage(class_id=class_id, stored_bytes=delta, updated_at=now))
            session.flush()


def check_device_quota(session: Session, *, classroom: Classroom, owner_id: int | None, is_student: bool) -> None:
    """Raise QuotaExceeded when one more device would pass the class's or the student's limit."""
    if classroom.max_devices is not None:
        n = session.exec(select(func.count()).select_from(Device).where(Device.class_id == classroom.id)).one()
        if n >= classroom.max_devices:
            raise QuotaExceeded(f"class {classroom.name!r} has its {classroom.max_devices} devices already")
    if is_student and owner_id is not None and classroom.max_devices_per_student is not None:
        n = session.exec(
            select(func.count()).select_from(Device).where(Device.class_id == classroom.id, Device.owner_id == owner_id)
        ).one()
        if n >= classroom.max_devices_per_student:
            raise QuotaExceeded(
                f"a student of class {classroom.name!r} may register {classroom.max_devices_per_student} devices"
            )
