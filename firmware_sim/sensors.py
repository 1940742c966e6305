"""Modelled sensors: :class:`edge_agent.sensors.base.Sensor` implementations over the physics,
with the device's injected sensor faults applied, so the real agent pipeline samples them."""

from __future__ import annotations

from collections.abc import Callable

from edge_agent.sensors.base import Sample, Sensor, SensorError

from .faults import DropoutError, SensorFaultInjector
from .physics import FIELDS, DevicePhysics
from .scenario import DevicePlan

__all__ = ["ModelledSensor"]


class ModelledSensor(Sensor):
    """Reads ``fields`` from ``physics`` at the time the agent asks for, then applies ``faults``.

    ``time_source`` (optional) maps the agent's timestamp to the physical time it measures: a
    device with a skewed clock stamps readings wrongly but still measures the real world.
    """

    def __init__(
        self,
        physics: DevicePhysics,
        *,
        sensor_type: str = "environment",
        fields: tuple[str, ...] = FIELDS,
        faults: SensorFaultInjector | None = None,
        time_source: Callable[[int], int] | None = None,
    ) -> None:
        self.physics = physics
        self.sensor_type = sensor_type
        self.fields = tuple(fields)
        self.faults = faults if faults is not None else SensorFaultInjector(physics.seed, physics=physics)
        self.time_source = time_source
        self.dead = False  # battery death: every read fails
        # A firmware build's effect on what the device sends (firmware_sim/ota.py): (t, values) -> values.
        self.effect: Callable[[int, dict[str, float]], dict[str, float]] | None = None

    @classmethod
    def for_device(cls, dev: DevicePlan, start_ms: int, time_source: Callable[[int], int]) -> ModelledSensor:
        """The sensor of a planned device: its own physics (seeded, from ``start_ms``) and fault
        injector, as both the live fleet and the offline generator build it."""
        g = dev.group
        physics = DevicePhysics(dev.seed, start_ms, g.physics_profile(), g.utc_offset_h)
        return cls(
            physics,
            sensor_type=g.sensor_type,
            fields=g.fields,
            faults=SensorFaultInjector(dev.seed, physics=physics),
            time_source=time_source,
        )

    def read(self, now_ms: int) -> Sample:
        t = self.time_source(now_ms) if self.time_source is not None else now_ms
        if self.dead:
            raise SensorError("no power", flag="power_loss")
        values = self.physics.sample(t, self.fields)
        try:
            faulted, flags = self.faults.apply(t, values)
        except DropoutError as exc:
            raise SensorError(str(exc), flag="dropout") from None
        if self.effect is not None:
            faulted = self.effect(t, faulted)
        return Sample(faulted, 1.0, flags)
