"""firmware_sim physics: values physically plausible, deterministic per seed, with the expected structure."""

from __future__ import annotations

import itertools
import statistics

import pytest

from firmware_sim.clock import SimClock
from firmware_sim.physics import FIELDS, PROFILES, DevicePhysics, Profile
from iot_protocol import FIELD_RANGES

START = 1_767_600_000_000  # 2026-01-05T08:00:00Z
HOUR = 3_600_000


def series(p: DevicePhysics, hours: int, step_min: int = 10) -> list[dict[str, float]]:
    return [p.sample(START + i * step_min * 60_000, FIELDS) for i in range(hours * 60 // step_min)]


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("seed", [0, 1, 99, 123456789])
def test_values_stay_physically_plausible_for_ten_days(profile: str, seed: int) -> None:
    rows = series(DevicePhysics(seed, START, PROFILES[profile]), 24 * 10, step_min=30)
    for row in rows:
        for name, value in row.items():
            lo, hi = FIELD_RANGES[name]
            assert lo <= value <= hi, (name, value)
        assert 980.0 <= row["pressure"] <= 1040.0
        assert 0.0 < row["humidity"] <= 100.0
        assert -125.0 <= row["signal_strength"] <= -30.0


def test_same_seed_same_values_whatever_the_sampling_order() -> None:
    times = [START + i * 37_000 for i in range(500)]
    a = DevicePhysics(7, START, PROFILES["outdoor"])
    forward = [a.sample(t, FIELDS) for t in times]
    b = DevicePhysics(7, START, PROFILES["outdoor"])
    backward = [b.sample(t, FIELDS) for t in reversed(times)]
    assert forward == list(reversed(backward))
    c = DevicePhysics(8, START, PROFILES["outdoor"])
    assert [c.sample(t, FIELDS) for t in times] != forward


def test_each_device_has_its_own_calibration_offset() -> None:
    offsets = {DevicePhysics(s, START).calibration_c for s in range(50)}
    assert len(offsets) == 50
    assert 0.05 < statistics.pstdev(offsets) < 1.0


def test_humidity_falls_when_temperature_rises() -> None:
    rows = series(DevicePhysics(3, START, PROFILES["outdoor"]), 24 * 7)
    corr = statistics.correlation([r["temperature"] for r in rows], [r["humidity"] for r in rows])
    assert corr < -0.5


def test_diurnal_cycle_afternoon_warmer_than_night() -> None:
    p = DevicePhysics(5, START, PROFILES["outdoor"], utc_offset_h=0.0)
    day0 = START - START % (24 * HOUR)
    afternoons = [p.temperature(day0 + d * 24 * HOUR + 15 * HOUR) for d in range(1, 15)]
    nights = [p.temperature(day0 + d * 24 * HOUR + 3 * HOUR) for d in range(1, 15)]
    assert statistics.mean(afternoons) - statistics.mean(nights) > 5.0


def test_pressure_is_a_slow_walk() -> None:
    rows = series(DevicePhysics(11, START, PROFILES["outdoor"]), 24 * 14)
    steps = [abs(b["pressure"] - a["pressure"]) for a, b in itertools.pairwise(rows)]
    assert max(steps) < 1.0  # hPa per 10 minutes
    values = [r["pressure"] for r in rows]
    assert max(values) - min(values) > 3.0  # but it does move over two weeks


def test_battery_drains_without_sun_and_charges_by_day_with_solar() -> None:
    no_sun = DevicePhysics(
        1, START, Profile(drain_pct_per_h=0.5, solar_charge_pct_per_h=0.0, battery_start_pct=90)
    )
    assert no_sun.battery_level(START + 10 * HOUR) == pytest.approx(85.0, abs=0.05)
    assert no_sun.battery_level(START + 400 * HOUR) == 0.0
    solar = DevicePhysics(
        1,
        START,
        Profile(drain_pct_per_h=0.1, solar_charge_pct_per_h=3.0, battery_start_pct=50),
        utc_offset_h=0.0,
    )
    day0 = START - START % (24 * HOUR) + 24 * HOUR
    morning, evening = solar.battery_level(day0 + 6 * HOUR), solar.battery_level(day0 + 18 * HOUR)
    assert evening > morning + 5.0
    night_end = solar.battery_level(day0 + 30 * HOUR)
    assert night_end < evening
    assert DevicePhysics(1, START, PROFILES["greenhouse"]).battery_level(START + 50 * HOUR) == 100.0


def test_signal_varies_and_drops() -> None:
    p = DevicePhysics(2, START, Profile(signal_drop_probability=0.1))
    values = [p.signal_strength(START + i * 60_000) for i in range(24 * 60)]
    median = statistics.median(values)
    assert statistics.pstdev(values) > 1.0
    assert min(values) < median - 15.0  # deep drops happen


def test_accelerated_clock_maps_real_to_simulated_time() -> None:
    now = [100.0]
    clock = SimClock(START, speed=60, monotonic=lambda: now[0])
    now[0] += 60.0  # one real minute
    assert clock.now_ms() == START + HOUR
    assert clock.real_at(START + 2 * HOUR) == pytest.approx(220.0)
    with pytest.raises(ValueError):
        SimClock(START, speed=0)
