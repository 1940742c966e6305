"""A modelled environment sensor: a daily sine per field plus seeded noise, deterministic in
(seed, timestamp). The agent's default for tests; firmware_sim builds on the same class."""

from __future__ import annotations

import math
import random

from .base import Sample, Sensor, SensorError

__all__ = ["FIELD_MODELS", "SimulatedSensor"]

# field -> (mean, daily amplitude, lower bound, upper bound), in the field's unit
FIELD_MODELS: dict[str, tuple[float, float, float, float]] = {
    "temperature": (21.0, 3.0, -40.0, 85.0),
    "humidity": (45.0, 10.0, 0.0, 100.0),
    "pressure": (1013.0, 2.0, 300.0, 1100.0),
    "battery_level": (80.0, 5.0, 0.0, 100.0),
    "signal_strength": (-60.0, 5.0, -130.0, 0.0),
}
_DAY_MS = 86_400_000


class SimulatedSensor(Sensor):
    def __init__(
        self,
        *,
        sensor_type: str = "environment",
        fields: tuple[str, ...] = ("temperature", "humidity", "pressure"),
        seed: int = 0,
        noise: float = 0.1,
        fail_every: int = 0,
    ) -> None:
        self.sensor_type = sensor_type
        self.fields = tuple(fields)
        self.seed = seed
        self.noise = noise
        self.fail_every = fail_every
        self._reads = 0

    def value(self, name: str, now_ms: int) -> float:
        """The modelled value of ``name`` at ``now_ms`` (pure: the same inputs give the same value)."""
        mean, amp, lo, hi = FIELD_MODELS.get(name, (50.0, 10.0, 0.0, 100.0))
        phase = 2 * math.pi * (now_ms % _DAY_MS) / _DAY_MS
        rnd = random.Random(f"{self.seed}:{name}:{now_ms}")  # str seeds are stable across runs
        v = mean + amp * math.sin(phase) + rnd.gauss(0.0, self.noise)
        return round(min(max(v, lo), hi), 3)

    def read(self, now_ms: int) -> Sample:
        self._reads += 1
        if self.fail_every and self._reads % self.fail_every == 0:
            raise SensorError("simulated read failure", flag="simulated_failure")
        return Sample({name: self.value(name, now_ms) for name in self.fields})
