"""The settings a desired config may carry, shared by the cloud (which validates before it signs)
and the agent (which validates again before it applies)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as _PydanticError

from .errors import ValidationError

__all__ = ["DeviceSettings", "parse_settings"]


class DeviceSettings(BaseModel):
    """Remotely configurable behaviour of an edge agent. Every field is optional in a document:
    what a document leaves out keeps the agent's current value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sampling_interval_s: float | None = Field(None, ge=0.05, le=86_400, description="Seconds between samples.")
    transmission_interval_s: float | None = Field(
        None, ge=0.05, le=86_400, description="Seconds between batch publishes (readings wait in the buffer)."
    )
    batch_max_readings: int | None = Field(None, ge=1, le=1000, description="Readings per batch at most.")
    calibration_offsets: dict[str, float] | None = Field(
        None, description="Added to a field's value before it is buffered, e.g. {'temperature': -0.4}."
    )
    low_power: bool | None = Field(None, description="Power saving: longer intervals between heartbeats.")
    heartbeat_interval_s: float | None = Field(None, ge=1, le=86_400, description="Seconds between health messages.")


def parse_settings(data: dict[str, Any]) -> DeviceSettings:
    """Validate ``data``; raise ValidationError naming the first bad field."""
    try:
        return DeviceSettings.model_validate(data)
    except _PydanticError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ValidationError(f"config setting {loc}: {first['msg']}", reason="bad_config") from None
