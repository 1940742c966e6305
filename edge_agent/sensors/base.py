"""The one interface every sensor implements; the agent reads sensors through it in a thread.

A sensor returns a :class:`Sample` (field name -> value). A read that fails raises
:class:`SensorError`; the agent turns that into a reading with quality 0 and a flag, never a crash.
The simulator's modelled sensors implement this same interface, so firmware_sim runs the real agent.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Sample", "Sensor", "SensorError"]


class SensorError(Exception):
    """A sensor could not be read. ``flag`` becomes the reading's quality flag."""

    def __init__(self, message: str, *, flag: str = "read_error") -> None:
        super().__init__(message)
        self.flag = flag


@dataclass(frozen=True, slots=True)
class Sample:
    values: Mapping[str, float]
    quality: float = 1.0
    flags: tuple[str, ...] = field(default=())


class Sensor(abc.ABC):
    """A source of samples. ``sensor_type`` is the InfluxDB tag; ``fields`` what ``read`` returns."""

    sensor_type: str
    fields: tuple[str, ...]

    @abc.abstractmethod
    def read(self, now_ms: int) -> Sample:
        """Take one sample. Blocking is allowed (the agent calls this in a worker thread)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most sensors hold nothing
        """Release hardware handles."""
