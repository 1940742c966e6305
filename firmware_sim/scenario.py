"""Scenario files: a fleet, its timing and its injected events, in TOML (or YAML), validated by pydantic.

Schema (every table and key; durations are ``"90s"``, ``"10m"``, ``"2h"``, ``"1d12h"``, ``"500ms"``
or a number of seconds; times inside the run are offsets from ``simulation.start``)::

    [simulation]
    name = "classroom"              # free text, shown in logs
    seed = 42                       # everything random derives from it: same seed, same run
    start = "2026-01-05T08:00:00Z"  # simulated start (ISO 8601); omitted: the run ends when it finishes
                                    # (now - duration * (1 - 1/speed): history, never the future)
    duration = "6h"                 # simulated time to run
    speed = 60                      # simulated seconds per real second (60: an hour per minute)
    topic_prefix = "edu"            # MQTT topic prefix shared with the bridge
    broker = "mqtt://127.0.0.1:1883"  # optional; the CLI's --broker wins

    [[devices]]                     # one table per group of identical devices
    type = "outdoor"                # physics profile: outdoor | indoor | greenhouse
    count = 5
    id_prefix = "yard"              # ids yard-000, yard-001, ...
    location = "schoolyard"         # the InfluxDB location tag
    sensor_type = "environment"     # the InfluxDB sensor_type tag
    fields = ["temperature", "humidity", "pressure", "battery_level", "signal_strength"]
    sampling_interval = "1m"
    transmission_interval = "5m"    # how often buffered readings are sealed and published
    batch_max_readings = 100
    utc_offset_h = 1.0              # places solar noon (diurnal cycle, solar charging)
    profile = { temp_mean_c = 9.0 } # overrides of the physics profile's parameters

    [[events]]                      # an event at a given time
    kind = "spike"                  # see firmware_sim.faults and firmware_sim.attacks
    device = "yard-001"             # a device id, or a glob ("yard-*", "*"): one event per match
    at = "1h30m"
    duration = "0s"                 # 0: one sampling interval (a single reading for sensor faults)
    field = "temperature"           # sensor faults: the field hit ("" = every field)
    magnitude = 12.0                # per kind: spike/drift(per hour)/noise sd in field units; skew in s;
                                    # decouple: hours the field runs ahead of the others
    count = 1                       # flood: batches sent; oversized/replayed: messages

    [[random_events]]               # events at a random rate, per device
    kind = "dropout"
    devices = "*"
    rate_per_day = 2.0              # Poisson rate per device per simulated day
    duration = "10m"
    field = "humidity"

    [[firmware]]                    # how a firmware build behaves on a simulated device (OTA)
    version = "2.0.0"               # a release of this version, rolled out, makes devices ...
    behaviour = "crash_after_boot"  # good | crash_after_boot | stop_sending | drift | out_of_range | reject_config
    after = "0s"                    # ... misbehave this long after booting it (0: at once)
    field = "temperature"           # drift / out_of_range: the field hit
    magnitude = 30.0                # drift: change per simulated minute; out_of_range: the value sent

Devices start on their group's ``firmware`` version (default 1.0.0); see firmware_sim/ota.py.
"""

from __future__ import annotations

import fnmatch
import math
import random
import re
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as _PydanticError

from iot_protocol import validate_device_id

from .errors import ScenarioError
from .faults import ATTACK_KINDS, DEVICE_FAULTS, NETWORK_FAULTS, SENSOR_FAULTS, FaultSpec
from .physics import FIELDS, PROFILES, TIME_FUNCTIONS, Profile, hash01

__all__ = [
    "BEHAVIOURS",
    "DeviceGroup",
    "DevicePlan",
    "Event",
    "FirmwareBuild",
    "FleetPlan",
    "RandomEvent",
    "Scenario",
    "SimulationSection",
    "ahead_of_clock_ms",
    "live_start_ms",
    "load_scenario",
    "parse_duration",
    "parse_scenario",
]

ALL_KINDS = SENSOR_FAULTS | DEVICE_FAULTS | NETWORK_FAULTS | ATTACK_KINDS
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds from ``"1h30m"``-style text or a number. Raises ValueError naming the format."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like '90s', '10m', '2h', '1d'")
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise ValueError("a duration must be >= 0")
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, total = 0, 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        if text and pos == len(text):
            return total
    raise ValueError(
        f"bad duration {value!r}: use a number of seconds or text like '90s', '10m', '2h', '1d12h'"
    )


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulationSection(_Model):
    name: str = Field("simulation", max_length=128)
    seed: int = 0
    start: datetime | None = None
    duration: Duration = Field(3600.0, gt=0)
    speed: float = Field(1.0, gt=0, le=1_000_000)
    topic_prefix: str = Field("edu", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    broker: str | None = None

    @field_validator("start")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        return v


class DeviceGroup(_Model):
    type: str = "outdoor"
    count: int = Field(1, ge=1, le=1_000_000)
    id_prefix: str = Field("dev", pattern=r"^[A-Za-z0-9_-]{1,48}$")
    location: str = Field("unknown", min_length=1, max_length=128)
    sensor_type: str = Field("environment", min_length=1, max_length=64)
    fields: tuple[str, ...] = Field(FIELDS, min_length=1)
    sampling_interval: Duration = Field(10.0, ge=0.05)
    transmission_interval: Duration = Field(60.0, ge=0.05)
    batch_max_readings: int = Field(100, ge=1, le=1000)
    utc_offset_h: float = Field(1.0, ge=-12, le=14)
    profile: dict[str, float | bool] = Field(default_factory=dict)
    firmware: str = Field("1.0.0", pattern=r"^\d{1,9}(\.\d{1,9}){0,3}$", description="Version the devices run.")

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        if v not in PROFILES:
            raise ValueError(f"unknown device type {v!r}: use one of {', '.join(sorted(PROFILES))}")
        return v

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if name not in FIELDS:
                raise ValueError(f"unknown field {name!r}: use some of {', '.join(FIELDS)}")
        return v

    @field_validator("profile")
    @classmethod
    def _known_params(cls, v: dict[str, float | bool]) -> dict[str, float | bool]:
        known = set(Profile.__dataclass_fields__)
        for name in v:
            if name not in known:
                raise ValueError(
                    f"unknown profile parameter {name!r}: use some of {', '.join(sorted(known))}"
                )
        return v

    def physics_profile(self) -> Profile:
        base = PROFILES[self.type]
        if not self.profile:
            return base
        import dataclasses

        return dataclasses.replace(base, **self.profile)  # type: ignore[arg-type]


class _EventBase(_Model):
    kind: str
    duration: Duration = 0.0
    field: str = ""
    magnitude: float | None = None
    count: int = Field(1, ge=1, le=100_000)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in ALL_KINDS:
            raise ValueError(f"unknown event kind {v!r}: use one of {', '.join(sorted(ALL_KINDS))}")
        return v

    @model_validator(mode="after")
    def _field_ok(self) -> _EventBase:
        if self.field and self.field not in FIELDS:
            raise ValueError(f"field {self.field!r} is not one of {', '.join(FIELDS)}")
        if self.field and self.kind not in SENSOR_FAULTS:
            raise ValueError(f"field is only for sensor faults, not {self.kind!r}")
        if self.kind == "decouple" and self.field not in TIME_FUNCTIONS:
            raise ValueError(f"decouple needs field = one of {', '.join(sorted(TIME_FUNCTIONS))}")
        return self


class Event(_EventBase):
    device: str = Field(min_length=1)
    at: Duration


class RandomEvent(_EventBase):
    devices: str = "*"
    rate_per_day: float = Field(gt=0, le=100_000)


BEHAVIOURS = ("good", "crash_after_boot", "stop_sending", "drift", "out_of_range", "reject_config")


class FirmwareBuild(_Model):
    """How a firmware version behaves when a simulated device runs it (firmware_sim/ota.py)."""

    version: str = Field(pattern=r"^\d{1,9}(\.\d{1,9}){0,3}$")
    behaviour: str = "good"
    after: Duration = 0.0
    field: str = "temperature"
    magnitude: float | None = None

    @field_validator("behaviour")
    @classmethod
    def _known_behaviour(cls, v: str) -> str:
        if v not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {v!r}: use one of {', '.join(BEHAVIOURS)}")
        return v

    @field_validator("field")
    @classmethod
    def _known_field(cls, v: str) -> str:
        if v not in FIELDS:
            raise ValueError(f"field {v!r} is not one of {', '.join(FIELDS)}")
        return v


class Scenario(_Model):
    simulation: SimulationSection = Field(default_factory=SimulationSection)  # type: ignore[arg-type]
    devices: tuple[DeviceGroup, ...] = Field(min_length=1)
    events: tuple[Event, ...] = ()
    random_events: tuple[RandomEvent, ...] = ()
    firmware: tuple[FirmwareBuild, ...] = ()

    @model_validator(mode="after")
    def _unique_ids(self) -> Scenario:
        seen: set[str] = set()
        for g in self.devices:
            if g.id_prefix in seen:
                raise ValueError(f"two device groups share id_prefix {g.id_prefix!r}")
            seen.add(g.id_prefix)
        versions = [b.version for b in self.firmware]
        dup = next((v for i, v in enumerate(versions) if v in versions[:i]), None)
        if dup is not None:
            raise ValueError(f"two [[firmware]] builds share version {dup!r}")
        return self

    def plan(self, *, start_ms: int | None = None) -> FleetPlan:
        """Expand groups into devices and events into concrete per-device faults (deterministic)."""
        return _plan(self, start_ms)


@dataclass(frozen=True, slots=True)
class DevicePlan:
    device_id: str
    seed: int
    group: DeviceGroup


@dataclass(frozen=True, slots=True)
class FleetPlan:
    scenario: Scenario
    start_ms: int
    end_ms: int
    devices: tuple[DevicePlan, ...]
    events: tuple[FaultSpec, ...]  # sorted by start

    def device(self, device_id: str) -> DevicePlan:
        for d in self.devices:
            if d.device_id == device_id:
                return d
        raise KeyError(device_id)


def device_id_for(group: DeviceGroup, i: int) -> str:
    width = max(3, len(str(group.count - 1)))
    return validate_device_id(f"{group.id_prefix}-{i:0{width}d}")


def _device_seed(seed: int, device_id: str) -> int:
    return int(hash01(seed, "device:" + device_id, 0) * 2**63)


def _to_spec(ev: _EventBase, device_id: str, start_ms: int, interval_s: float) -> FaultSpec:
    duration_s = ev.duration
    if duration_s == 0 and ev.kind in SENSOR_FAULTS:
        duration_s = interval_s * 0.999  # a single reading
    end_ms = start_ms + int(duration_s * 1000)
    params = dict(ev.params)
    if ev.count != 1:
        params["count"] = ev.count
    return FaultSpec(ev.kind, device_id, start_ms, end_ms, ev.field, ev.magnitude, params)


def live_start_ms(duration_s: float, speed: float, now_ms: int) -> int:
    """Where a live run without a fixed start begins: simulated time faster than real time starts in
    the past, so that it reaches the wall clock exactly when the run ends and no reading is ever
    stamped in the future (the bridge refuses those). At speed <= 1 that is now."""
    return now_ms - int(max(0.0, duration_s * (1.0 - 1.0 / speed)) * 1000)


def ahead_of_clock_ms(plan: FleetPlan, now_ms: int) -> int:
    """How far a live run of ``plan`` started at ``now_ms`` would stamp readings ahead of the wall
    clock at its worst (its end when faster than real time, its start when slower); <= 0: never."""
    sim = plan.scenario.simulation
    real_end_ms = now_ms + int(sim.duration / sim.speed * 1000)
    return max(plan.start_ms - now_ms, plan.end_ms - real_end_ms)


def _plan(sc: Scenario, start_ms: int | None) -> FleetPlan:
    sim = sc.simulation
    if start_ms is None:
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        start_ms = int(sim.start.timestamp() * 1000) if sim.start else live_start_ms(sim.duration, sim.speed, now_ms)
    end_ms = start_ms + int(sim.duration * 1000)
    devices: list[DevicePlan] = []
    for g in sc.devices:
        for i in range(g.count):
            did = device_id_for(g, i)
            devices.append(DevicePlan(did, _device_seed(sim.seed, did), g))
    ids = [d.device_id for d in devices]
    by_id = {d.device_id: d for d in devices}
    specs: list[FaultSpec] = []
    for n, ev in enumerate(sc.events):
        matches = fnmatch.filter(ids, ev.device)
        if not matches:
            raise ScenarioError(
                f"events.{n}.device: {ev.device!r} matches no device", field=f"events.{n}.device"
            )
        for did in matches:
            interval = by_id[did].group.sampling_interval
            specs.append(_to_spec(ev, did, start_ms + int(ev.at * 1000), interval))
    for n, rev in enumerate(sc.random_events):
        matches = fnmatch.filter(ids, rev.devices)
        if not matches:
            raise ScenarioError(
                f"random_events.{n}.devices: {rev.devices!r} matches no device",
                field=f"random_events.{n}.devices",
            )
        for did in matches:
            rng = random.Random(f"{sim.seed}:{n}:{did}")
            interval = by_id[did].group.sampling_interval
            t = 0.0
            while True:
                t += rng.expovariate(rev.rate_per_day / 86400.0)
                if t >= sim.duration:
                    break
                specs.append(_to_spec(rev, did, start_ms + int(t * 1000), interval))
    specs.sort(key=lambda s: (s.start_ms, s.device_id, s.kind))
    return FleetPlan(sc, start_ms, end_ms, tuple(devices), tuple(specs))


def _error(exc: _PydanticError, source: str) -> ScenarioError:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "scenario"
    msg = first["msg"].removeprefix("Value error, ")
    return ScenarioError(f"{source}: {loc}: {msg}", field=loc)


def parse_scenario(data: dict[str, Any], *, source: str = "scenario") -> Scenario:
    """Validate ``data``. Raises ScenarioError whose message and ``field`` name the bad field."""
    try:
        return Scenario.model_validate(data)
    except _PydanticError as exc:
        raise _error(exc, source) from None


def load_scenario(path: Path | str) -> Scenario:
    """Read a ``.toml`` (or ``.yaml``/``.yml``) scenario file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"scenario file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read scenario file {p}: {exc}") from None
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ScenarioError("YAML scenarios need PyYAML: pip install pyyaml (or use TOML)") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ScenarioError(f"{p} is not valid YAML: {exc}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioError(f"{p} is not valid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{p}: a scenario is a table of [simulation], [[devices]], [[events]]")
    return parse_scenario(data, source=str(p))
