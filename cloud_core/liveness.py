"""Device liveness: one state machine (online / stale / offline), as a pure function of what the
cloud last heard from a device.

Inputs (kept on the ``devices`` row by :mod:`cloud_core.services.device_events` and the bridge,
all stamped with the cloud's receive time, so device clock errors do not matter):

- ``presence`` / ``presence_at``: the last retained ``status`` message: ``online`` (published by the
  device on connect) or ``offline`` (published by the device on a clean stop, or by the broker as
  the device's last will when its connection is lost).
- ``last_health_at``: the last heartbeat (``health``; expected every ``heartbeat_interval_s``).
- ``last_seen``: the last telemetry batch accepted by the bridge.

Let *activity* be the latest of ``last_health_at``, ``last_seen`` and (if presence is
``online``) ``presence_at``; *age* is ``now - activity``. Then, in order:

1. never enrolled (``pending``), deactivated (``inactive``), or no activity ever -> **offline**;
2. presence is ``offline`` and no activity came after it -> **offline** (clean stop or last will);
3. age <= ``stale_after_s`` (default 90 s, three missed 30 s heartbeats) -> **online**;
4. age <= ``offline_after_s`` (default 300 s) -> **stale** (connected perhaps, but silent);
5. otherwise -> **offline** (silent too long, even if no last will arrived).

Transitions: offline -> online on any activity; online -> stale after ``stale_after_s`` of silence;
stale -> offline after ``offline_after_s`` of silence; online/stale -> offline at once when the
``offline`` status (clean or last will) arrives. A device that dies without a clean disconnect is
shown offline within 1.5 x its MQTT keepalive (when the broker fires the last will) plus the
events flush interval, and in any case within ``offline_after_s`` of its last activity.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Liveness", "liveness"]


class Liveness(enum.StrEnum):
    ONLINE = "online"
    STALE = "stale"
    OFFLINE = "offline"


class _DeviceLike(Protocol):
    status: str
    presence: str | None
    presence_at: datetime | None
    last_health_at: datetime | None
    last_seen: datetime | None


class _Timings(Protocol):
    stale_after_s: float
    offline_after_s: float


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def liveness(device: _DeviceLike, now: datetime, settings: _Timings) -> tuple[Liveness, float | None]:
    """(state, seconds since the last activity, or None if never heard from). See the module docstring."""
    now = _utc(now) or now
    presence_at = _utc(device.presence_at)
    candidates = [_utc(device.last_health_at), _utc(device.last_seen)]
    if device.presence == "online":
        candidates.append(presence_at)
    heard = [t for t in candidates if t is not None]
    activity = max(heard) if heard else None
    age = max(0.0, (now - activity).total_seconds()) if activity is not None else None
    if device.status in ("pending", "inactive") or activity is None:
        return Liveness.OFFLINE, age
    if device.presence == "offline" and presence_at is not None and presence_at >= activity:
        return Liveness.OFFLINE, age
    assert age is not None
    if age <= settings.stale_after_s:
        return Liveness.ONLINE, age
    if age <= settings.offline_after_s:
        return Liveness.STALE, age
    return Liveness.OFFLINE, age
