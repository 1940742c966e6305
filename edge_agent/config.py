"""The agent's settings: one typed object loaded from a TOML file (``load_settings``), with every
field documented here; ``docs/agent.md`` and ``agent.example.toml`` are written from these fields.

Environment variables ``EDU_AGENT_<FIELD>`` fill top-level fields the file leaves out. A bad value
raises :class:`edge_agent.errors.SettingsError` naming the field, in one line.

This is a plain pydantic model rather than a pydantic-settings object: on the device every MB counts
and pydantic-settings costs about 5 MB of RSS for the one feature (environment overlay) done here in
ten lines.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as _PydanticError

from .errors import SettingsError

__all__ = [
    "AgentSettings",
    "Bme280Spec",
    "CommandSpec",
    "CpuTempSpec",
    "SensorSpec",
    "SimulatedSpec",
    "load_settings",
    "settings_reference",
]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulatedSpec(_Spec):
    """A modelled environment sensor (daily sine plus seeded noise); firmware_sim uses the same class."""

    type: Literal["simulated"]
    sensor_type: str = Field("environment", min_length=1, max_length=64, description="InfluxDB sensor_type tag.")
    fields: tuple[str, ...] = Field(
        ("temperature", "humidity", "pressure"),
        min_length=1,
        description="Fields to produce (known: temperature, "
        "humidity, pressure, battery_level, signal_strength; others get a generic 0..100 signal).",
    )
    seed: int = Field(0, description="Noise seed: the same seed and timestamps give the same values.")
    noise: float = Field(0.1, ge=0, le=10, description="Standard deviation of the noise, in each field's unit.")
    fail_every: int = Field(0, ge=0, description="Every Nth read fails (0 = never); exercises quality flags.")


class CpuTempSpec(_Spec):
    """The SoC temperature from Linux thermal sysfs (millidegrees C)."""

    type: Literal["cpu_temp"]
    sensor_type: str = Field("cpu", min_length=1, max_length=64, description="InfluxDB sensor_type tag.")
    path: Path = Field(Path("/sys/class/thermal/thermal_zone0/temp"), description="sysfs file to read.")


class CommandSpec(_Spec):
    """Runs a program each sample; its stdout is a JSON object of field -> number, or
    ``{"values": {...}, "quality": 0..1, "flags": [...]}``."""

    type: Literal["command"]
    sensor_type: str = Field(min_length=1, max_length=64, description="InfluxDB sensor_type tag.")
    command: tuple[str, ...] = Field(min_length=1, description="argv of the program (no shell).")
    timeout_s: float = Field(5.0, gt=0, le=300, description="Kill the program and flag the read after this.")


class Bme280Spec(_Spec):
    """Bosch BME280 temperature/humidity/pressure over I2C (needs the ``bme280`` extra: smbus2)."""

    type: Literal["bme280"]
    sensor_type: str = Field("environment", min_length=1, max_length=64, description="InfluxDB sensor_type tag.")
    bus: int = Field(1, ge=0, description="I2C bus number (/dev/i2c-N); 1 on a Raspberry Pi.")
    address: int = Field(0x76, ge=0x03, le=0x77, description="I2C address: 0x76 (SDO low) or 0x77.")


SensorSpec = Annotated[SimulatedSpec | CpuTempSpec | CommandSpec | Bme280Spec, Field(discriminator="type")]


class AgentSettings(BaseModel):
    """Everything the agent needs that is not its identity (which ``iotctl agent enroll`` writes)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # --- where things live
    identity_dir: Path = Field(
        Path("/var/lib/edu-agent/identity"),
        description="Written by `iotctl agent enroll`: device key and credentials (0600), cloud key.",
    )
    buffer_path: Path = Field(
        Path("/var/lib/edu-agent/buffer.db"),
        description="SQLite (WAL) file holding readings until receipted.",
    )
    # --- MQTT
    mqtt_url: str | None = Field(
        None, description="Override the broker URL from enrollment (mqtt://host:port or mqtts://host:port)."
    )
    topic_prefix: str | None = Field(None, description="Override the topic prefix from enrollment.")
    mqtt_keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive; the last will fires ~1.5x after.")
    session_expiry_s: int = Field(
        7 * 86_400,
        ge=0,
        description="MQTT 5 session expiry: how long the broker keeps our session while away.",
    )
    # --- timing
    sampling_interval_s: float = Field(1.0, ge=0.05, le=86_400, description="Seconds between samples of all sensors.")
    transmission_interval_s: float = Field(
        5.0, ge=0.05, le=86_400, description="Seconds between publish cycles (readings wait in the buffer)."
    )
    batch_max_readings: int = Field(100, ge=1, le=1000, description="Readings per batch at most.")
    max_inflight_batches: int = Field(
        8, ge=1, le=1000, description="Batches published but not yet receipted, at most (caps resend work)."
    )
    receipt_timeout_s: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="Resend a batch (identical bytes) if no receipt arrived after this.",
    )
    heartbeat_interval_s: float = Field(60.0, ge=1, le=86_400, description="Seconds between health messages.")
    backoff_initial_s: float = Field(1.0, gt=0, le=3600, description="First reconnect delay.")
    backoff_max_s: float = Field(60.0, gt=0, le=86_400, description="Reconnect delay cap (doubles from initial).")
    backoff_jitter: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Random share of each delay (0.5: wait 50-100% of it), spreads a fleet's retries.",
    )
    # --- buffer
    buffer_max_rows: int = Field(500_000, ge=10, description="Readings the buffer holds at most.")
    buffer_max_bytes: int | None = Field(
        None, ge=4096, description="Bytes of reading payload the buffer holds at most (None: rows only)."
    )
    overflow_policy: Literal["drop_oldest", "drop_newest"] = Field(
        "drop_oldest",
        description="When the buffer is full: drop the oldest readings, or refuse the new one. "
        "Either way the dropped count is persisted and reported in health.",
    )
    buffer_synchronous: Literal["normal", "full"] = Field(
        "full", description="SQLite synchronous mode: full survives power loss; normal only process crashes."
    )
    keep_produced_log: bool = Field(
        False,
        description="Also log every reading produced in a table that is never pruned (tests, ground truth).",
    )
    # --- logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="JSON log level (stderr).")
    # --- sensors
    sensors: tuple[SensorSpec, ...] = Field(
        min_length=1, description="Sensors to sample, as [[sensors]] tables; `type` picks the kind."
    )

    @model_validator(mode="after")
    def _check(self) -> AgentSettings:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        types = [s.sensor_type for s in self.sensors]
        dup = next((t for t in types if types.count(t) > 1), None)
        if dup is not None:  # storage keys a point on (device, sensor_type, ts): two would overwrite
            raise ValueError(f"two sensors share sensor_type {dup!r}; give each its own")
        return self


def _one_line(exc: _PydanticError, source: str) -> SettingsError:
    first = exc.errors()[0]
    parts = list(first["loc"])
    # pydantic puts the union tag after the sensor's index (sensors.1.command.timeout_s): drop it
    parts = [p for i, p in enumerate(parts) if not (i > 0 and isinstance(parts[i - 1], int) and i < len(parts) - 1)]
    loc = ".".join(str(p) for p in parts)
    msg = first["msg"]
    if first["type"] == "union_tag_invalid":
        msg = "unknown sensor type: use simulated, cpu_temp, command or bme280"
    return SettingsError(f"{source}: {loc or 'settings'}: {msg}", field=loc)


def load_settings(path: Path | str | None = None, **overrides: Any) -> AgentSettings:
    """Build the settings from the TOML file at ``path`` (if any), then ``overrides``.

    Raises:
        SettingsError: the file is missing or not TOML, or a value is bad (the message names the field).
    """
    data: dict[str, Any] = {}
    source = "settings"
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"config file {p} does not exist: copy agent.example.toml there") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"cannot read config file {p}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{p} is not valid TOML: {exc}") from None
        base = p.resolve().parent
        for key in ("identity_dir", "buffer_path"):  # relative paths are relative to the file
            if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
                data[key] = str(base / data[key])
    for name in AgentSettings.model_fields:
        env = os.environ.get(f"EDU_AGENT_{name.upper()}")
        if env is not None and name not in data and name != "sensors":
            data[name] = env
    data.update(overrides)
    try:
        return AgentSettings(**data)
    except _PydanticError as exc:
        raise _one_line(exc, source) from None


def settings_reference() -> str:
    """Markdown table of every setting (top level and per sensor type), from the field descriptions."""

    def rows(model: type[BaseModel], prefix: str = "") -> list[str]:
        out = []
        for name, f in model.model_fields.items():
            if name == "sensors" or (name == "type" and prefix):
                continue
            default = "required" if f.is_required() else repr(f.default)
            out.append(f"| `{prefix}{name}` | `{default}` | {f.description or ''} |")
        return out

    lines = ["| setting | default | meaning |", "|---|---|---|", *rows(AgentSettings)]
    for spec in (SimulatedSpec, CpuTempSpec, CommandSpec, Bme280Spec):
        kind = spec.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
        lines.append(f'| **`[[sensors]] type = "{kind}"`** | | {spec.__doc__ or ""} |')
        lines.extend(rows(spec, "sensors."))
    return "\n".join(lines)
