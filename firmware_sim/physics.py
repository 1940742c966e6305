"""Sensor physics of one simulated device: temperature, humidity, pressure, battery, signal.

Every value is a pure function of (device seed, simulated time), except the battery, which is
integrated forward in fixed steps from the simulation start (still deterministic: the same seed,
start and query times give the same values, whatever order devices are sampled in).

Model, per device:
- temperature: climate mean + diurnal sine (peak mid-afternoon, local solar time) + weather
  fronts (smooth noise over days) + sensor noise + the device's calibration offset;
- humidity: from a slowly varying dew point through the Magnus formula, so it falls when the
  temperature rises (anti-correlated) and never exceeds 100 %;
- pressure: a slow random walk (smooth noise of several octaves) around a mean, kept in 980-1040 hPa;
- battery: drains at a constant rate, optionally charges by day (solar), clamped to 0-100 %;
- signal strength: a per-device base dBm, slow variation, noise and occasional deep drops.

All outputs lie inside :data:`iot_protocol.validation.FIELD_RANGES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from iot_protocol import FIELD_RANGES

__all__ = [
    "FIELDS",
    "PROFILES",
    "TIME_FUNCTIONS",
    "DevicePhysics",
    "Profile",
    "clamp_field",
    "hash01",
    "normal",
    "smooth",
]

_MASK = (1 << 64) - 1
_HOUR_MS = 3_600_000
_DAY_MS = 86_400_000


def _mix(x: int) -> int:
    """splitmix64 finaliser: a fast, well-distributed 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _stream_id(name: str) -> int:
    h = 1469598103934665603
    for ch in name.encode():
        h = ((h ^ ch) * 1099511628211) & _MASK
    return h


# hash01 = _u01(_mix(seed) ^ _stream_id(stream), i). The simulator samples every device every few
# seconds: DevicePhysics keeps its seed's mix and uses the stream ids below, computed once, so a sample
# costs about half the integer work (bit-identical values: tests/test_sim_physics_golden.py).
def _u01(base: int, i: int) -> float:
    """Uniform [0, 1) from ``base`` (seed mix ^ stream id) and ``i``: ``_mix(base ^ _mix(i))`` inlined."""
    x = ((i & _MASK) + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    x = ((base ^ x ^ (x >> 31)) + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return (x ^ (x >> 31)) / 2.0**64


def _normal(base: int, i: int) -> float:
    u1 = max(_u01(base, 2 * i), 1e-12)
    u2 = _u01(base, 2 * i + 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def _smooth(base: int, t_ms: float, period_ms: float) -> float:
    x = t_ms / period_ms
    i = math.floor(x)
    f = x - i
    a = _u01(base, i) * 2.0 - 1.0
    b = _u01(base, i + 1) * 2.0 - 1.0
    w = (1.0 - math.cos(math.pi * f)) / 2.0
    return a + (b - a) * w


def hash01(seed: int, stream: str, i: int) -> float:
    """Deterministic uniform number in [0, 1) for (seed, stream, i)."""
    return _u01(_mix(seed & _MASK) ^ _stream_id(stream), i)


def normal(seed: int, stream: str, i: int) -> float:
    """Deterministic standard normal number (Box-Muller on two hashes)."""
    return _normal(_mix(seed & _MASK) ^ _stream_id(stream), i)


def smooth(seed: int, stream: str, t_ms: float, period_ms: float) -> float:
    """Value noise in [-1, 1]: random lattice values every ``period_ms``, cosine-interpolated."""
    return _smooth(_mix(seed & _MASK) ^ _stream_id(stream), t_ms, period_ms)


_S = {
    name: _stream_id(name)
    for name in (
        "calibration", "signal_base", "cloud", "front", "front2", "temp_noise", "spread", "rh_noise",
        "p1", "p2", "p3", "p_noise", "sig", "sig_noise", "sig_drop", "sig_drop_depth",
    )
}  # fmt: skip


def clamp_field(name: str, value: float) -> float:
    """Clamp ``value`` into the contract's plausible range for ``name`` (unchanged if unlisted)."""
    bounds = FIELD_RANGES.get(name)
    if bounds is None:
        return value
    return min(max(value, bounds[0]), bounds[1])


@dataclass(frozen=True, slots=True)
class Profile:
    """Climate and power parameters of a kind of device; a scenario may override any of them."""

    temp_mean_c: float = 14.0
    diurnal_amplitude_c: float = 5.0
    front_amplitude_c: float = 4.0
    temp_noise_c: float = 0.08
    dewpoint_spread_c: float = 6.0  # mean gap between temperature and dew point
    pressure_mean_hpa: float = 1013.0
    pressure_amplitude_hpa: float = 18.0
    drain_pct_per_h: float = 0.15
    solar_charge_pct_per_h: float = 0.0  # at noon in full sun; 0 means no solar panel
    battery_start_pct: float = 95.0
    mains_powered: bool = False  # battery stays at 100 %
    signal_base_dbm: float = -70.0
    signal_drop_probability: float = 0.02  # per 10-minute slot


PROFILES: dict[str, Profile] = {
    "outdoor": Profile(solar_charge_pct_per_h=1.2),
    "indoor": Profile(
        temp_mean_c=21.0,
        diurnal_amplitude_c=1.2,
        front_amplitude_c=0.8,
        dewpoint_spread_c=11.0,
        drain_pct_per_h=0.05,
        signal_base_dbm=-62.0,
        signal_drop_probability=0.005,
    ),
    "greenhouse": Profile(
        temp_mean_c=24.0,
        diurnal_amplitude_c=7.0,
        front_amplitude_c=1.5,
        dewpoint_spread_c=3.5,
        mains_powered=True,
        signal_base_dbm=-78.0,
    ),
}


@dataclass(slots=True)
class DevicePhysics:
    """The physical world one device sees. ``utc_offset_h`` places the device's solar noon."""

    seed: int
    start_ms: int
    profile: Profile = field(default_factory=Profile)
    utc_offset_h: float = 1.0
    calibration_c: float = field(init=False)
    _battery_t: int = field(init=False)
    _battery_pct: float = field(init=False)
    _signal_base: float = field(init=False)
    _seed_mix: int = field(init=False)  # _mix(seed): what every hash of this device starts from
    _tt_at: float = field(init=False, default=math.nan)  # the last true_temperature computed, and its time
    _tt: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._seed_mix = _mix(self.seed & _MASK)
        # Per-device manufacturing spread: a calibration offset and a radio placement.
        self.calibration_c = 0.3 * _normal(self._seed_mix ^ _S["calibration"], 0)
        self._signal_base = self.profile.signal_base_dbm + 8.0 * _normal(self._seed_mix ^ _S["signal_base"], 0)
        self._battery_t = self.start_ms
        self._battery_pct = self.profile.battery_start_pct

    # --- sun ------------------------------------------------------------------------------------

    def local_hour(self, t_ms: float) -> float:
        return ((t_ms / _HOUR_MS) + self.utc_offset_h) % 24.0

    def daylight(self, t_ms: float) -> float:
        """0 at night, up to 1 at solar noon (06:00-18:00 local)."""
        h = self.local_hour(t_ms)
        return max(0.0, math.sin(math.pi * (h - 6.0) / 12.0)) if 6.0 <= h <= 18.0 else 0.0

    def cloudiness(self, t_ms: float) -> float:
        return 0.5 + 0.5 * _smooth(self._seed_mix ^ _S["cloud"], t_ms, 5 * _HOUR_MS)

    # --- fields ---------------------------------------------------------------------------------

    def true_temperature(self, t_ms: float) -> float:
        """Air temperature without sensor noise or calibration offset."""
        if t_ms == self._tt_at:  # one sample asks three times (temperature, humidity, dew point)
            return self._tt
        p = self.profile
        h = self.local_hour(t_ms)
        diurnal = p.diurnal_amplitude_c * math.cos(2.0 * math.pi * (h - 15.0) / 24.0)
        front = p.front_amplitude_c * (
            0.7 * _smooth(self._seed_mix ^ _S["front"], t_ms, 3 * _DAY_MS)
            + 0.3 * _smooth(self._seed_mix ^ _S["front2"], t_ms, _DAY_MS)
        )
        self._tt_at, self._tt = t_ms, p.temp_mean_c + diurnal + front
        return self._tt

    def temperature(self, t_ms: int) -> float:
        noise = self.profile.temp_noise_c * _normal(self._seed_mix ^ _S["temp_noise"], t_ms)
        return clamp_field("temperature", self.true_temperature(t_ms) + noise + self.calibration_c)

    def dew_point(self, t_ms: float) -> float:
        # The dew point follows the daily mean, not the diurnal cycle: that is what makes the
        # relative humidity fall in the afternoon.
        p = self.profile
        daily_mean = self.true_temperature(t_ms) - p.diurnal_amplitude_c * math.cos(
            2.0 * math.pi * (self.local_hour(t_ms) - 15.0) / 24.0
        )
        spread = p.dewpoint_spread_c * (1.0 + 0.5 * _smooth(self._seed_mix ^ _S["spread"], t_ms, 18 * _HOUR_MS))
        return daily_mean - max(spread, 0.5)

    def humidity(self, t_ms: int) -> float:
        a, b = 17.625, 243.04  # Magnus coefficients (Alduchov & Eskridge 1996)
        t = self.true_temperature(t_ms)
        td = min(self.dew_point(t_ms), t)
        rh = 100.0 * math.exp(a * td / (b + td) - a * t / (b + t))
        rh += 0.8 * _normal(self._seed_mix ^ _S["rh_noise"], t_ms)
        return min(max(rh, 3.0), 100.0)

    def pressure(self, t_ms: int) -> float:
        p = self.profile
        walk = (
            0.55 * _smooth(self._seed_mix ^ _S["p1"], t_ms, 4 * _DAY_MS)
            + 0.30 * _smooth(self._seed_mix ^ _S["p2"], t_ms, 30 * _HOUR_MS)
            + 0.15 * _smooth(self._seed_mix ^ _S["p3"], t_ms, 6 * _HOUR_MS)
        )
        value = (
            p.pressure_mean_hpa + p.pressure_amplitude_hpa * walk + 0.05 * _normal(self._seed_mix ^ _S["p_noise"], t_ms)
        )
        # Soft bounds: stay within the weather range 980-1040 hPa.
        centre, half = 1010.0, 30.0
        return centre + half * math.tanh((value - centre) / half)

    def battery_level(self, t_ms: int) -> float:
        """Battery %: integrated in 60 s steps from the start (forward only; rewinds recompute)."""
        p = self.profile
        if p.mains_powered:
            return 100.0
        if t_ms < self._battery_t:
            self._battery_t, self._battery_pct = self.start_ms, p.battery_start_pct
        step = 60_000
        level, t = self._battery_pct, self._battery_t
        while t + step <= t_ms:
            charge = p.solar_charge_pct_per_h * self.daylight(t) * (1.0 - 0.7 * self.cloudiness(t))
            level = min(100.0, max(0.0, level + (charge - p.drain_pct_per_h) / 60.0))
            t += step
        self._battery_t, self._battery_pct = t, level
        return round(level, 2)

    def signal_strength(self, t_ms: int) -> float:
        slot = t_ms // 600_000
        value = self._signal_base + 6.0 * _smooth(self._seed_mix ^ _S["sig"], t_ms, 30 * 60_000)
        value += 1.5 * _normal(self._seed_mix ^ _S["sig_noise"], t_ms)
        if _u01(self._seed_mix ^ _S["sig_drop"], slot) < self.profile.signal_drop_probability:
            value -= 20.0 + 15.0 * _u01(self._seed_mix ^ _S["sig_drop_depth"], slot)
        return round(min(max(value, -125.0), -30.0), 1)

    def sample(self, t_ms: int, fields: tuple[str, ...]) -> dict[str, float]:
        """The true values of ``fields`` at ``t_ms`` (before injected sensor faults)."""
        out: dict[str, float] = {}
        for name in fields:
            getter = _FIELD_GETTERS.get(name)
            if getter is None:
                raise KeyError(f"no physics model for field {name!r}; known: {sorted(_FIELD_GETTERS)}")
            value = getter(self, t_ms)
            out[name] = round(value, 3)
        return out


_FIELD_GETTERS = {
    "temperature": DevicePhysics.temperature,
    "humidity": DevicePhysics.humidity,
    "pressure": DevicePhysics.pressure,
    "battery_level": DevicePhysics.battery_level,
    "signal_strength": DevicePhysics.signal_strength,
}
FIELDS: tuple[str, ...] = tuple(_FIELD_GETTERS)

TIME_FUNCTIONS: frozenset[str] = frozenset({"temperature", "humidity", "pressure", "signal_strength"})
"""Fields whose value is a pure function of the time: any time may be sampled, in any order (the
battery is integrated forward from the start, so it is not one of them)."""
