"""Injected faults: what each kind does to a device, and the sensor-fault injector.

Kinds, by category (the label ``kind`` is the name below):

- sensor (applied to one ``field`` of the modelled sensor's values, clamped to the contract's
  plausible ranges so the readings are stored and the anomaly detector must find them):
  ``spike`` (add ``magnitude``), ``drift`` (add ``magnitude`` per simulated hour since the start),
  ``stuck`` (repeat the first value of the window), ``dropout`` (no reading: the sensor raises
  :class:`~edge_agent.sensors.base.SensorError` with flag ``dropout``), ``noise_burst`` (add
  Gaussian noise of standard deviation ``magnitude``), ``decouple`` (the field reports what its
  physics gives ``magnitude`` hours later, default 12, reached over the window's first
  :data:`DECOUPLE_RAMP_MS` and undone over its last, so there is no step: every value is one the
  field really takes, but its relation to the other fields breaks, e.g. humidity high while the
  temperature is high; only for :data:`~firmware_sim.physics.TIME_FUNCTIONS` fields);
- device: ``reboot`` (silent for the window, then a new MQTT session; the durable buffer keeps
  what was not yet receipted), ``clock_skew`` (timestamps shifted by ``magnitude`` seconds during
  the window), ``battery_death`` (battery reads 0 and the device stops until the window ends, i.e.
  the battery is replaced; no end = never);
- network: ``offline`` (the device keeps sampling into its buffer but cannot publish; when the
  window ends it reconnects and the agent replays the backlog).

Attacks live in :mod:`firmware_sim.attacks`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .physics import TIME_FUNCTIONS, DevicePhysics, clamp_field, normal

__all__ = [
    "ATTACK_KINDS",
    "DECOUPLE_RAMP_MS",
    "DEFAULT_MAGNITUDE",
    "DEVICE_FAULTS",
    "NETWORK_FAULTS",
    "SENSOR_FAULTS",
    "FaultSpec",
    "SensorFaultInjector",
    "category_of",
]

SENSOR_FAULTS = frozenset({"spike", "drift", "stuck", "dropout", "noise_burst", "decouple"})
DEVICE_FAULTS = frozenset({"reboot", "clock_skew", "battery_death"})
NETWORK_FAULTS = frozenset({"offline"})
ATTACK_KINDS = frozenset(
    {
        "tampered_payload",
        "replayed_batch",
        "reused_seq",
        "wrong_key",
        "foreign_topic",
        "oversized",
        "malformed",
        "flood",
    }
)

# Default magnitude per kind and field when a scenario gives none.
DEFAULT_MAGNITUDE: dict[str, dict[str, float]] = {
    "spike": {
        "temperature": 15.0,
        "humidity": 30.0,
        "pressure": -30.0,
        "battery_level": -40.0,
        "signal_strength": -35.0,
    },
    "drift": {
        "temperature": 1.5,
        "humidity": 4.0,
        "pressure": 3.0,
        "battery_level": -5.0,
        "signal_strength": -5.0,
    },
    "noise_burst": {
        "temperature": 3.0,
        "humidity": 8.0,
        "pressure": 4.0,
        "battery_level": 5.0,
        "signal_strength": 8.0,
    },
    # seconds ahead; within the bridge's default 300 s future tolerance, so the readings are stored
    # (mis-stamped); beyond it the bridge rejects them as future_timestamp.
    "clock_skew": {"": 120.3},
    # hours: half a day puts a daily cycle in opposite phase to the fields it depends on
    "decouple": dict.fromkeys(sorted(TIME_FUNCTIONS), 12.0),
}

DECOUPLE_RAMP_MS = 3_600_000
"""A ``decouple`` fault reaches its full time shift over this long (no step in the field)."""


def category_of(kind: str) -> str:
    if kind in SENSOR_FAULTS:
        return "sensor"
    if kind in DEVICE_FAULTS:
        return "device"
    if kind in NETWORK_FAULTS:
        return "network"
    if kind in ATTACK_KINDS:
        return "attack"
    raise ValueError(f"unknown event kind {kind!r}")


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One planned event on one device over [start_ms, end_ms] (simulated time)."""

    kind: str
    device_id: str
    start_ms: int
    end_ms: int
    field: str = ""
    magnitude: float | None = None
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def category(self) -> str:
        return category_of(self.kind)

    def effective_magnitude(self) -> float:
        if self.magnitude is not None:
            return self.magnitude
        return DEFAULT_MAGNITUDE.get(self.kind, {}).get(self.field, 0.0)

    def active(self, t_ms: int) -> bool:
        return self.start_ms <= t_ms <= self.end_ms


class DropoutError(Exception):
    """Raised by the injector for a dropout; the sensor turns it into the agent's SensorError."""


class SensorFaultInjector:
    """Applies a device's sensor faults to true values at a time. Deterministic given the seed."""

    def __init__(
        self, seed: int, faults: list[FaultSpec] | None = None, *, physics: DevicePhysics | None = None
    ) -> None:
        """``physics``: the device's world, which a ``decouple`` fault samples at another time."""
        self.seed = seed
        self.physics = physics
        self.faults: list[FaultSpec] = sorted(faults or [], key=lambda f: f.start_ms)
        self._stuck: dict[tuple[int, str], float] = {}

    def add(self, fault: FaultSpec) -> None:
        if fault.kind not in SENSOR_FAULTS:
            raise ValueError(f"{fault.kind!r} is not a sensor fault")
        if fault.kind == "decouple" and (self.physics is None or fault.field not in TIME_FUNCTIONS):
            raise ValueError(f"decouple needs the device's physics and one of {', '.join(sorted(TIME_FUNCTIONS))}")
        self.faults.append(fault)
        self.faults.sort(key=lambda f: f.start_ms)

    def apply(self, t_ms: int, values: Mapping[str, float]) -> tuple[dict[str, float], tuple[str, ...]]:
        """Return (values with faults applied, flags). Raises DropoutError for a dropout."""
        out = dict(values)
        for i, f in enumerate(self.faults):
            if f.start_ms > t_ms:
                break
            if not f.active(t_ms) or (f.field and f.field not in out):
                continue
            targets = [f.field] if f.field else list(out)
            if f.kind == "dropout":
                raise DropoutError(f"dropout of {','.join(targets)}")
            for name in targets:
                v = out[name]
                if f.kind == "spike":
                    mag = (
                        f.magnitude if f.magnitude is not None else DEFAULT_MAGNITUDE["spike"].get(name, 10.0)
                    )
                    v += mag
                elif f.kind == "drift":
                    mag = (
                        f.magnitude if f.magnitude is not None else DEFAULT_MAGNITUDE["drift"].get(name, 1.0)
                    )
                    v += mag * (t_ms - f.start_ms) / 3_600_000
                elif f.kind == "stuck":
                    v = self._stuck.setdefault((i, name), v)
                elif f.kind == "decouple" and self.physics is not None:
                    ramp = min(1.0, (t_ms - f.start_ms) / DECOUPLE_RAMP_MS, (f.end_ms - t_ms) / DECOUPLE_RAMP_MS)
                    lag_ms = f.effective_magnitude() * 3_600_000 * ramp
                    v = self.physics.sample(t_ms + int(lag_ms), (name,))[name]
                elif f.kind == "noise_burst":
                    mag = (
                        f.magnitude
                        if f.magnitude is not None
                        else DEFAULT_MAGNITUDE["noise_burst"].get(name, 1.0)
                    )
                    v += mag * normal(self.seed, f"burst:{name}", t_ms)
                out[name] = round(clamp_field(name, v), 3)
        return out, ()
