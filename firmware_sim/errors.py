"""Errors of the simulator.

SimError                 root
├── ScenarioError        a scenario file is unreadable or breaks the schema (``field`` names where)
└── FleetError           the fleet could not start (broker unreachable, registration failed)
    └── DeviceIdTaken    a device id the fleet would use is already registered (``device_ids``)
"""

from __future__ import annotations

__all__ = ["DeviceIdTaken", "FleetError", "ScenarioError", "SimError"]


class SimError(Exception):
    retryable = False


class ScenarioError(SimError):
    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class FleetError(SimError):
    retryable = True


class DeviceIdTaken(FleetError):
    """The registry already has devices with these ids: another fleet or a real device uses them.
    Taking them over (rotating their keys) would cut that device off, so it is never silent."""

    retryable = False

    def __init__(self, message: str, *, device_ids: tuple[str, ...]) -> None:
        super().__init__(message)
        self.device_ids = device_ids
