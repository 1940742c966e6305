"""The settings a desired config may carry, shared by the cloud (which validates before it signs)
and the agent (which validates again before it applies).

A frozen dataclass and a hand-written validator rather than a pydantic model: the agent imports
this module, and on the device pydantic alone costs about 11 MB of RSS (docs/agent.md, Footprint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import ValidationError
from .firmware import FirmwareTarget, parse_firmware_target

__all__ = ["SETTINGS_FIELDS", "DeviceSettings", "SettingSpec", "parse_settings"]


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """One remotely configurable setting: its type (``float``, ``int``, ``bool``, ``dict``: a map
    of field name -> float, or :class:`FirmwareTarget`), inclusive bounds for numbers, and what it does."""

    type: type
    ge: float | None
    le: float | None
    description: str


SETTINGS_FIELDS: dict[str, SettingSpec] = {
    "sampling_interval_s": SettingSpec(float, 0.05, 86_400, "Seconds between samples."),
    "transmission_interval_s": SettingSpec(
        float, 0.05, 86_400, "Seconds between batch publishes (readings wait in the buffer)."
    ),
    "batch_max_readings": SettingSpec(int, 1, 1000, "Readings per batch at most."),
    "calibration_offsets": SettingSpec(
        dict, None, None, "Added to a field's value before it is buffered, e.g. {'temperature': -0.4}."
    ),
    "low_power": SettingSpec(bool, None, None, "Power saving: longer intervals between heartbeats."),
    "heartbeat_interval_s": SettingSpec(float, 1, 86_400, "Seconds between health messages."),
    "firmware": SettingSpec(
        FirmwareTarget,
        None,
        None,
        "Firmware to run: {version, manifest, url, max_bytes_per_s}; the device downloads, verifies and "
        "installs it (A/B), or switches back to an installed version (docs/protocol.md §10).",
    ),
}
"""Every setting a desired config may carry, in document order (docs and ``iotctl config`` list them)."""


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    """Remotely configurable behaviour of an edge agent. Every field is optional in a document:
    what a document leaves out (None) keeps the agent's current value."""

    sampling_interval_s: float | None = None
    transmission_interval_s: float | None = None
    batch_max_readings: int | None = None
    calibration_offsets: dict[str, float] | None = None
    low_power: bool | None = None
    heartbeat_interval_s: float | None = None
    firmware: FirmwareTarget | None = None

    def to_dict(self) -> dict[str, Any]:
        """The settings this document sets (None fields left out), JSON-ready."""
        out: dict[str, Any] = {}
        for name in SETTINGS_FIELDS:
            value = getattr(self, name)
            if isinstance(value, FirmwareTarget):
                out[name] = value.to_dict()
            elif value is not None:
                out[name] = dict(value) if isinstance(value, dict) else value
        return out

    @classmethod
    def fields(cls) -> dict[str, tuple[type, tuple[float | None, float | None], str]]:
        """name -> (type, (ge, le), description) of every setting."""
        return {name: (s.type, (s.ge, s.le), s.description) for name, s in SETTINGS_FIELDS.items()}


class _Bad(Exception):
    """A value is wrong; the message says what was expected (the caller adds the field)."""


def _number(value: Any, *, integer: bool) -> float | int:
    # Same leniency as before (numbers may arrive as numeric strings, 5.0 is an int) except that a
    # bool is never a number: True as an interval is a mistake, not 1 second.
    if isinstance(value, bool):
        raise _Bad(f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value) if not integer else int(value.strip())
        except ValueError:
            raise _Bad(f"must be {'an integer' if integer else 'a number'}, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise _Bad(f"must be {'an integer' if integer else 'a number'}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Bad(f"must be a finite number, got {value!r}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise _Bad(f"must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _check(name: str, spec: SettingSpec, value: Any) -> Any:
    if spec.type is FirmwareTarget:
        try:
            return parse_firmware_target(value)
        except ValueError as exc:
            raise _Bad(str(exc)) from None
    if spec.type is bool:
        if not isinstance(value, bool):
            raise _Bad(f"must be true or false, got {value!r}")
        return value
    if spec.type is dict:
        if not isinstance(value, dict):
            raise _Bad(f"must be a map of field name -> number, got {type(value).__name__}")
        out: dict[str, float] = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise _Bad(f"keys must be field names (strings), got {key!r}")
            try:
                out[key] = _number(v, integer=False)
            except _Bad as exc:
                raise _Bad(f"{key}: {exc}") from None
        return out
    number = _number(value, integer=spec.type is int)
    if spec.ge is not None and number < spec.ge:
        raise _Bad(f"must be >= {spec.ge:g}")
    if spec.le is not None and number > spec.le:
        raise _Bad(f"must be <= {spec.le:g}")
    return number


def parse_settings(data: dict[str, Any]) -> DeviceSettings:
    """Validate ``data`` (a desired config's settings) into :class:`DeviceSettings`.

    Raises:
        ValidationError: reason ``bad_config``; the message names the first bad field, e.g.
            ``config setting sampling_interval_s: must be >= 0.05``.
    """
    if not isinstance(data, dict):
        raise ValidationError(f"config settings must be an object, got {type(data).__name__}", reason="bad_config")
    values: dict[str, Any] = {}
    for name, value in data.items():
        spec = SETTINGS_FIELDS.get(name) if isinstance(name, str) else None
        if spec is None:
            known = ", ".join(SETTINGS_FIELDS)
            raise ValidationError(f"config setting {name}: unknown setting (known: {known})", reason="bad_config")
        if value is None:
            continue
        try:
            values[name] = _check(name, spec, value)
        except _Bad as exc:
            raise ValidationError(f"config setting {name}: {exc}", reason="bad_config") from None
    return DeviceSettings(**values)
