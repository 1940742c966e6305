"""The SoC temperature of a Linux board (Raspberry Pi included) from thermal sysfs."""

from __future__ import annotations

from pathlib import Path

from .base import Sample, Sensor, SensorError

__all__ = ["CpuTempSensor"]


class CpuTempSensor(Sensor):
    fields = ("cpu_temperature",)

    def __init__(self, *, path: Path | str = "/sys/class/thermal/thermal_zone0/temp", sensor_type: str = "cpu"):
        self.path = Path(path)
        self.sensor_type = sensor_type

    def read(self, now_ms: int) -> Sample:
        try:
            raw = self.path.read_text().strip()
        except OSError as exc:
            raise SensorError(f"cannot read {self.path}: {exc.strerror}", flag="unavailable") from None
        try:
            millideg = int(raw)
        except ValueError:
            raise SensorError(f"{self.path} holds {raw[:20]!r}, not millidegrees", flag="bad_output") from None
        return Sample({"cpu_temperature": millideg / 1000.0})
