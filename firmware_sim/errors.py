"""Errors of the simulator.

SimError                 root
├── ScenarioError        a scenario file is unreadable or breaks the schema (``field`` names where)
└── FleetError           the fleet could not start (broker unreachable, registration failed)
"""

from __future__ import annotations

__all__ = ["FleetError", "ScenarioError", "SimError"]


class SimError(Exception):
    retryable = False


class ScenarioError(SimError):
    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class FleetError(SimError):
    retryable = True
