"""The liveness state machine (online / stale / offline) as the pure function the API and CLI use."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cloud_core.core.config import CloudSettings
from cloud_core.liveness import Liveness, liveness

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
SETTINGS = CloudSettings(stale_after_s=90, offline_after_s=300, state_dir="/tmp/unused")


@dataclass
class Dev:
    status: str = "active"
    presence: str | None = None
    presence_at: datetime | None = None
    last_health_at: datetime | None = None
    last_seen: datetime | None = None


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def test_never_heard_from_is_offline_with_no_age() -> None:
    assert liveness(Dev(), NOW, SETTINGS) == (Liveness.OFFLINE, None)


def test_silence_moves_online_to_stale_to_offline_at_the_configured_ages() -> None:
    assert liveness(Dev(last_health_at=ago(90)), NOW, SETTINGS) == (Liveness.ONLINE, 90.0)
    assert liveness(Dev(last_health_at=ago(91)), NOW, SETTINGS) == (Liveness.STALE, 91.0)
    assert liveness(Dev(last_health_at=ago(300)), NOW, SETTINGS) == (Liveness.STALE, 300.0)
    assert liveness(Dev(last_health_at=ago(301)), NOW, SETTINGS) == (Liveness.OFFLINE, 301.0)


def test_the_latest_of_heartbeat_telemetry_and_online_presence_counts() -> None:
    dev = Dev(presence="online", presence_at=ago(500), last_health_at=ago(200), last_seen=ago(10))
    assert liveness(dev, NOW, SETTINGS) == (Liveness.ONLINE, 10.0)
    dev = Dev(presence="online", presence_at=ago(5), last_health_at=ago(400))
    assert liveness(dev, NOW, SETTINGS) == (Liveness.ONLINE, 5.0)


def test_offline_status_or_last_will_is_offline_at_once() -> None:
    dev = Dev(presence="offline", presence_at=ago(1), last_health_at=ago(3))
    assert liveness(dev, NOW, SETTINGS) == (Liveness.OFFLINE, 3.0)


def test_activity_after_an_offline_status_counts_again() -> None:
    dev = Dev(presence="offline", presence_at=ago(60), last_seen=ago(2))
    assert liveness(dev, NOW, SETTINGS) == (Liveness.ONLINE, 2.0)


def test_deactivated_and_pending_devices_are_offline() -> None:
    assert liveness(Dev(status="inactive", last_seen=ago(1)), NOW, SETTINGS)[0] is Liveness.OFFLINE
    assert liveness(Dev(status="pending"), NOW, SETTINGS)[0] is Liveness.OFFLINE


def test_naive_database_times_are_read_as_utc() -> None:
    naive = (NOW - timedelta(seconds=30)).replace(tzinfo=None)
    assert liveness(Dev(last_seen=naive), NOW, SETTINGS) == (Liveness.ONLINE, 30.0)
