"""The agent's settings: one typed object loaded from a TOML file (``load_settings``), with every
field documented here; ``docs/agent.md`` and ``agent.example.toml`` are written from these fields.

Environment variables ``EDU_AGENT_<FIELD>`` fill top-level fields the file leaves out. A bad value
raises :class:`edge_agent.errors.SettingsError` naming the field, in one line, e.g.
``agent.toml: sensors[1].timeout_s: must be a number > 0 and <= 300, got 'x'``.

Frozen dataclasses checked by the small ``_schema`` layer, not pydantic(-settings) as elsewhere in
the project: on the device every MB counts, and pydantic costs about 11 MB of RSS (docs/agent.md).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ._schema import Invalid, build, describe, format_default, rule_of, setting
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
# ruff's RUF009 cannot tell that setting() is dataclasses.field() with metadata (and Path is immutable)
_STATE = Path("/var/lib/edu-agent")
_THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatedSpec:
    """A modelled environment sensor (daily sine plus seeded noise); firmware_sim uses the same class."""

    type: Literal["simulated"]
    sensor_type: str = setting("environment", "InfluxDB sensor_type tag.", min_len=1, max_len=64)
    fields: tuple[str, ...] = setting(
        ("temperature", "humidity", "pressure"),
        "Fields to produce (known: temperature, "
        "humidity, pressure, battery_level, signal_strength; others get a generic 0..100 signal).",
        min_len=1,
    )
    seed: int = setting(0, "Noise seed: the same seed and timestamps give the same values.")
    noise: float = setting(0.1, "Standard deviation of the noise, in each field's unit.", ge=0, le=10)
    fail_every: int = setting(0, "Every Nth read fails (0 = never); exercises quality flags.", ge=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuTempSpec:
    """The SoC temperature from Linux thermal sysfs (millidegrees C)."""

    type: Literal["cpu_temp"]
    sensor_type: str = setting("cpu", "InfluxDB sensor_type tag.", min_len=1, max_len=64)
    path: Path = setting(_THERMAL, "sysfs file to read.")  # noqa: RUF009 (see _STATE)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandSpec:
    """Runs a program each sample; its stdout is a JSON object of field -> number, or
    ``{"values": {...}, "quality": 0..1, "flags": [...]}``."""

    type: Literal["command"]
    sensor_type: str = setting(description="InfluxDB sensor_type tag.", min_len=1, max_len=64)
    command: tuple[str, ...] = setting(description="argv of the program (no shell).", min_len=1)
    timeout_s: float = setting(5.0, "Kill the program and flag the read after this.", gt=0, le=300)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bme280Spec:
    """Bosch BME280 temperature/humidity/pressure over I2C (needs the ``bme280`` extra: smbus2)."""

    type: Literal["bme280"]
    sensor_type: str = setting("environment", "InfluxDB sensor_type tag.", min_len=1, max_len=64)
    bus: int = setting(1, "I2C bus number (/dev/i2c-N); 1 on a Raspberry Pi.", ge=0)
    address: int = setting(0x76, "I2C address: 0x76 (SDO low) or 0x77.", ge=0x03, le=0x77)


SensorSpec = SimulatedSpec | CpuTempSpec | CommandSpec | Bme280Spec
"""One ``[[sensors]]`` table; its ``type`` picks the kind."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings:
    """Everything the agent needs that is not its identity (which ``iotctl agent enroll`` writes)."""

    # --- where things live
    identity_dir: Path = setting(  # noqa: RUF009 (see _STATE)
        _STATE / "identity",
        "Written by `iotctl agent enroll`: device key and credentials (0600), cloud key.",
    )
    buffer_path: Path = setting(  # noqa: RUF009 (see _STATE)
        _STATE / "buffer.db", "SQLite (WAL) file holding readings until receipted."
    )
    # --- MQTT
    mqtt_url: str | None = setting(
        None, "Override the broker URL from enrollment (mqtt://host:port or mqtts://host:port)."
    )
    topic_prefix: str | None = setting(None, "Override the topic prefix from enrollment.")
    identity_poll_s: float = setting(
        5.0,
        "Seconds between looks at identity_dir for a new identity (after a rotation and re-enrollment), "
        "taken up without a restart; SIGHUP looks at once. 0: only on SIGHUP.",
        ge=0,
        le=3600,
    )
    tls_ca_file: Path | None = setting(  # noqa: RUF009 (see _STATE)
        None,
        "mqtts: trust this CA certificate (PEM) instead of the one pinned at enrollment (identity_dir/ca.crt; "
        "without either, the system's trusted CAs).",
    )
    tls_client_cert: Path | None = setting(  # noqa: RUF009 (see _STATE)
        None, "mqtts with mTLS: this device's client certificate (PEM, from `iotctl pki issue --client`)."
    )
    tls_client_key: Path | None = setting(None, "Its private key (PEM, mode 0600).")  # noqa: RUF009 (see _STATE)
    mqtt_keepalive_s: int = setting(30, "MQTT keepalive; the last will fires ~1.5x after.", ge=5, le=3600)
    session_expiry_s: int = setting(
        7 * 86_400, "MQTT 5 session expiry: how long the broker keeps our session while away.", ge=0
    )
    # --- timing
    sampling_interval_s: float = setting(1.0, "Seconds between samples of all sensors.", ge=0.05, le=86_400)
    transmission_interval_s: float = setting(
        5.0, "Seconds between publish cycles (readings wait in the buffer).", ge=0.05, le=86_400
    )
    batch_max_readings: int = setting(100, "Readings per batch at most.", ge=1, le=1000)
    max_inflight_batches: int = setting(
        8, "Batches published but not yet receipted, at most (caps resend work).", ge=1, le=1000
    )
    receipt_timeout_s: float = setting(
        30.0, "Resend a batch (identical bytes) if no receipt arrived after this.", gt=0, le=86_400
    )
    max_unanswered_sends: int = setting(
        5,
        "Quarantine a batch after this many sends went unreceipted while the cloud receipted others "
        "(it cannot verify it; an outage never counts).",
        ge=1,
        le=1000,
    )
    heartbeat_interval_s: float = setting(60.0, "Seconds between health messages.", ge=1, le=86_400)
    backoff_initial_s: float = setting(1.0, "First reconnect delay.", gt=0, le=3600)
    backoff_max_s: float = setting(60.0, "Reconnect delay cap (doubles from initial).", gt=0, le=86_400)
    backoff_jitter: float = setting(
        0.5, "Random share of each delay (0.5: wait 50-100% of it), spreads a fleet's retries.", ge=0, le=1
    )
    # --- buffer
    buffer_max_rows: int = setting(500_000, "Readings the buffer holds at most.", ge=10)
    buffer_max_bytes: int | None = setting(
        None, "Bytes of reading payload the buffer holds at most (unset: rows only).", ge=4096
    )
    overflow_policy: Literal["drop_oldest", "drop_newest"] = setting(
        "drop_oldest",
        "When the buffer is full: drop the oldest readings, or refuse the new one. "
        "Either way the dropped count is persisted and reported in health.",
    )
    buffer_synchronous: Literal["normal", "full"] = setting(
        "full", "SQLite synchronous mode: full survives power loss; normal only process crashes."
    )
    keep_produced_log: bool = setting(
        False, "Also log every reading produced in a table that is never pruned (tests, ground truth)."
    )
    # --- firmware over the air (docs/agent.md, "Firmware updates")
    ota_dir: Path | None = setting(  # noqa: RUF009 (see _STATE)
        None,
        "A/B OTA directory (slots/, current, state.json; `iotctl agent ota-init`). Unset: OTA is off and "
        "the agent reports any firmware target as failed.",
    )
    device_type: str = setting(
        "environment", "This device's type; it installs only releases built for it.", min_len=1, max_len=64
    )
    ota_confirm_timeout_s: float = setting(
        120.0, "A new release must pass its health check (connected, a batch receipted) this soon after "
        "the switch, or the agent switches back.", gt=0, le=86_400,
    )
    ota_max_boots: int = setting(
        3, "Boots of an unconfirmed release before the boot step switches back (a crash loop).", ge=1, le=100
    )
    ota_download_retries: int = setting(
        5, "Failed download attempts in a row (without progress) before the update fails.", ge=0, le=1000
    )
    ota_retry_delay_s: float = setting(2.0, "First delay between download attempts (doubles to 60 s).", gt=0, le=3600)
    ota_http_timeout_s: float = setting(30.0, "Connect/read timeout of a download request.", gt=0, le=3600)
    ota_max_bytes_per_s: int | None = setting(
        None, "Download bandwidth cap when the desired config gives none (unset: none).", ge=1024
    )
    # --- logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting("INFO", "JSON log level (stderr).")
    # --- sensors
    sensors: tuple[SensorSpec, ...] = setting(
        description="Sensors to sample, as [[sensors]] tables; `type` picks the kind.", min_len=1
    )


def _cross_check(s: AgentSettings) -> None:
    """Rules that involve more than one field."""
    if s.backoff_max_s < s.backoff_initial_s:
        raise Invalid("backoff_max_s", f"must be >= backoff_initial_s ({s.backoff_initial_s:g})")
    if (s.tls_client_cert is None) != (s.tls_client_key is None):
        raise Invalid("tls_client_key", "tls_client_cert and tls_client_key go together: set both or neither")
    types = [x.sensor_type for x in s.sensors]
    dup = next((i for i, t in enumerate(types) if t in types[:i]), None)
    if dup is not None:  # storage keys a point on (device, sensor_type, ts): two would overwrite
        raise Invalid(f"sensors[{dup}].sensor_type", f"two sensors share sensor_type {types[dup]!r}; give each its own")


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _from_env(name: str, raw: str) -> Any:
    """An environment string for top-level field ``name``; numbers are parsed by the schema."""
    if typing.get_type_hints(AgentSettings)[name] is bool:
        low = raw.strip().lower()
        return True if low in _TRUE else False if low in _FALSE else raw
    return raw


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
        # relative paths are relative to the file
        for key in ("identity_dir", "buffer_path", "tls_ca_file", "tls_client_cert", "tls_client_key", "ota_dir"):
            if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
                data[key] = str(base / data[key])
    from_env: dict[str, str] = {}
    for f in dataclasses.fields(AgentSettings):
        var = f"EDU_AGENT_{f.name.upper()}"
        env = os.environ.get(var)
        if env is not None and f.name not in data and f.name != "sensors":
            data[f.name] = _from_env(f.name, env)
            from_env[f.name] = var
    data.update(overrides)
    for key in overrides:
        from_env.pop(key, None)
    try:
        settings: AgentSettings = build(AgentSettings, data)
        _cross_check(settings)
    except Invalid as exc:
        origin = f" (from {from_env[exc.path]})" if exc.path in from_env else ""
        raise SettingsError(f"{source}: {exc}{origin}", field=exc.path) from None
    return settings


def settings_reference() -> str:
    """Markdown table of every setting (top level and per sensor type): default, what it accepts and
    what it means, from the field definitions above."""

    def rows(cls: type[Any], prefix: str = "") -> list[str]:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            if f.name == "sensors" or (f.name == "type" and prefix):
                continue
            rule = rule_of(f)
            accepts = describe(hints[f.name], rule)
            out.append(f"| `{prefix}{f.name}` | `{format_default(f)}` | {accepts} | {rule.description} |")
        return out

    lines = ["| setting | default | accepts | meaning |", "|---|---|---|---|", *rows(AgentSettings)]
    for spec in (SimulatedSpec, CpuTempSpec, CommandSpec, Bme280Spec):
        kind = typing.get_args(typing.get_type_hints(spec)["type"])[0]
        doc = " ".join((spec.__doc__ or "").split())
        lines.append(f'| **`[[sensors]] type = "{kind}"`** | | | {doc} |')
        lines.extend(rows(spec, "sensors[]."))
    return "\n".join(lines)
