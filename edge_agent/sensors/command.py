"""A sensor that runs a program each sample and parses its JSON output: any probe a student
writes in any language becomes a sensor. stdout is ``{"field": number, ...}`` or
``{"values": {...}, "quality": 0..1, "flags": [...]}``."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Sequence

import orjson

from .base import Sample, Sensor, SensorError

__all__ = ["CommandSensor"]

_MAX_OUTPUT = 64 * 1024


class CommandSensor(Sensor):
    def __init__(self, *, command: Sequence[str], sensor_type: str, timeout_s: float = 5.0) -> None:
        self.command = list(command)
        self.sensor_type = sensor_type
        self.timeout_s = timeout_s
        self.fields = ()

    def read(self, now_ms: int) -> Sample:
        try:
            proc = subprocess.run(
                self.command,
                capture_output=True,
                timeout=self.timeout_s,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise SensorError(f"{self.command[0]} did not finish in {self.timeout_s}s", flag="timeout") from None
        except OSError as exc:
            raise SensorError(f"cannot run {self.command[0]}: {exc.strerror}", flag="unavailable") from None
        if proc.returncode != 0:
            raise SensorError(f"{self.command[0]} exited with {proc.returncode}", flag="exit_status")
        return parse_output(proc.stdout[:_MAX_OUTPUT])


def parse_output(out: bytes) -> Sample:
    """Parse a command sensor's stdout; SensorError(flag="bad_output") when it is not of the form."""
    try:
        obj = orjson.loads(out)
    except orjson.JSONDecodeError:
        raise SensorError("output is not JSON", flag="bad_output") from None
    if not isinstance(obj, dict):
        raise SensorError("output is not a JSON object", flag="bad_output")
    values = obj.get("values", obj) if "values" in obj else obj
    quality = obj.get("quality", 1.0) if "values" in obj else 1.0
    flags = obj.get("flags", []) if "values" in obj else []
    if not isinstance(values, dict) or not values:
        raise SensorError("output holds no values", flag="bad_output")
    clean: dict[str, float] = {}
    for k, v in values.items():
        if not isinstance(k, str) or not 0 < len(k) <= 64:
            raise SensorError("output has a bad field name", flag="bad_output")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise SensorError(f"output field {k!r} is not a finite number", flag="bad_output")
        clean[k] = float(v)
    if isinstance(quality, bool) or not isinstance(quality, int | float) or not 0 <= quality <= 1:
        raise SensorError("output quality must be a number in 0..1", flag="bad_output")
    if not isinstance(flags, list) or not all(isinstance(f, str) and 0 < len(f) <= 64 for f in flags):
        raise SensorError("output flags must be a list of short strings", flag="bad_output")
    return Sample(clean, float(quality), tuple(flags))
