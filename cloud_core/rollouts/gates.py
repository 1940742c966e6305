"""Health gates: when a rollout must stop. Pure: :func:`evaluate` compares what was measured on the
updated devices (the cohort) with the devices not yet updated (the control cohort).

Each gate has an absolute limit and a limit relative to control (the cohort's value may exceed the
control's by at most that much); either, when set, fails the gate. ``None`` turns a limit off.

- **failed**: share of the cohort that failed its update (rejected the config, failed or rolled
  back the firmware, or did not apply it within ``apply_timeout_s`` while connected);
- **offline**: share of the cohort, online when the rollout started and done updating, that is
  now stale or offline (heartbeats stopped);
- **rejected**: share of the cohort's messages during the wave that the bridge dead-lettered
  (bad signatures, out-of-range values, ...);
- **anomalies**: anomaly episodes opened during the wave, per device;
- **guards**: optional field ranges (``temperature`` within -10..45): share of the cohort's
  devices with a reading outside the range during the wave.

``--abort-if`` expressions (CLI) map onto these fields: see :func:`parse_abort_if`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import RolloutInvalid

__all__ = ["CohortStats", "FieldGuard", "GateFailure", "Gates", "evaluate", "parse_abort_if", "parse_gates"]


class FieldGuard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str = Field(min_length=1, max_length=64, description="Reading field, e.g. temperature.")
    min: float | None = Field(default=None, description="Readings below this violate the guard.")
    max: float | None = Field(default=None, description="Readings above this violate the guard.")
    max_ratio: float = Field(default=0.0, ge=0, le=1, description="Share of cohort devices allowed to violate it.")

    @model_validator(mode="after")
    def _bounds(self) -> FieldGuard:
        if self.min is None and self.max is None:
            raise ValueError(f"guard on {self.field} needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"guard on {self.field}: min {self.min:g} is above max {self.max:g}")
        return self


class Gates(BaseModel):
    """A rollout's abort conditions (ratios are 0..1). Defaults: the ones a fleet manager would want
    without thinking about it."""

    model_config = ConfigDict(extra="forbid")

    apply_timeout_s: float | None = Field(
        default=None, gt=0, description="A connected device must apply/confirm within this (None: the default)."
    )
    max_failed: float | None = Field(default=0.1, ge=0, le=1)
    max_offline: float | None = Field(default=0.2, ge=0, le=1)
    max_offline_over_control: float | None = Field(default=0.1, ge=0, le=1)
    max_rejected: float | None = Field(default=0.05, ge=0, le=1)
    max_rejected_over_control: float | None = Field(default=0.05, ge=0, le=1)
    max_anomalies: float | None = Field(default=None, ge=0, description="Episodes per device.")
    max_anomalies_over_control: float | None = Field(default=0.5, ge=0)
    guards: list[FieldGuard] = Field(default_factory=list)


def parse_gates(value: Mapping[str, object] | None) -> Gates:
    """Gates from the API's object (missing keys take the defaults). Raises RolloutInvalid."""
    try:
        return Gates.model_validate(dict(value or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise RolloutInvalid(f"gates.{loc}: {first['msg'].removeprefix('Value error, ')}") from None


_METRICS = {"failed": "max_failed", "offline": "max_offline", "rejected": "max_rejected", "anomalies": "max_anomalies"}
_EXPR = re.compile(r"\A\s*([A-Za-z_][A-Za-z0-9_]*)\s*([<>])\s*(control\s*\+\s*)?(-?[0-9.]+)\s*(%?)\s*\Z")


def parse_abort_if(expressions: Iterable[str], base: Gates | None = None) -> Gates:
    """Gates from CLI expressions over ``base`` (default: the defaults):

    ``failed>10%``, ``offline>20%``, ``offline>control+10%``, ``rejected>5%``,
    ``rejected>control+5%``, ``anomalies>2`` (per device), ``anomalies>control+0.5``, and field guards
    ``temperature>45`` / ``humidity<5`` (any cohort device with such a reading aborts).

    Raises:
        RolloutInvalid: an expression of another form, naming it.
    """
    data = (base or Gates()).model_dump()
    guards: dict[str, dict[str, object]] = {g["field"]: g for g in data["guards"]}
    for expr in expressions:
        m = _EXPR.match(expr)
        if m is None:
            raise RolloutInvalid(
                f"bad --abort-if {expr!r}: use e.g. failed>10%, offline>control+10%, rejected>5%, "
                "anomalies>2, temperature>45"
            )
        name, op, relative, number, pct = m.groups()
        value = float(number) / (100 if pct else 1)
        if name in _METRICS:
            if op != ">":
                raise RolloutInvalid(f"bad --abort-if {expr!r}: {name} takes '>'")
            if name != "anomalies" and not pct and value > 1:
                value /= 100  # "failed>10" means 10%
            data[_METRICS[name] + ("_over_control" if relative else "")] = value
        else:
            if relative or pct:
                raise RolloutInvalid(f"bad --abort-if {expr!r}: a field guard is FIELD>NUMBER or FIELD<NUMBER")
            guard = guards.setdefault(name, {"field": name, "min": None, "max": None, "max_ratio": 0.0})
            guard["max" if op == ">" else "min"] = value
    data["guards"] = list(guards.values())
    return parse_gates(data)


@dataclass(frozen=True, slots=True)
class CohortStats:
    """What was measured on a set of devices during a wave."""

    devices: int = 0  # devices counted for the failure ratio
    failed: int = 0
    online_base: int = 0  # done updating (cohort) or untouched (control), and online when it started
    offline: int = 0  # ... of which now stale or offline
    messages: int = 0  # stored batches + dead letters during the wave
    rejected: int = 0  # dead letters during the wave
    anomalies: int = 0  # anomaly episodes opened during the wave
    anomaly_base: int = 0  # devices the anomaly rate is per
    guard_base: int = 0  # devices with readings during the wave
    guard_violations: Mapping[str, int] = field(default_factory=dict)  # field -> devices out of range
    failures: tuple[str, ...] = ()  # "device: why", for the abort reason

    def ratio(self, part: int, whole: int) -> float:
        return part / whole if whole else 0.0


@dataclass(frozen=True, slots=True)
class GateFailure:
    gate: str  # failed | offline | rejected | anomalies | guard:<field>
    reason: str


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def _exceeds(value: float, control: float | None, limit: float | None, over: float | None) -> str | None:
    """How ``value`` breaks the absolute ``limit`` or the limit ``over`` the control's value, or None."""
    if limit is not None and value > limit:
        return f"> {_pct(limit)}"
    if control is not None and over is not None and value - control > over:
        return f"against {_pct(control)} of the devices not yet updated, limit +{_pct(over)}"
    return None


def evaluate(
    gates: Gates, cohort: CohortStats, control: CohortStats | None, *, label: str = "updated"
) -> GateFailure | None:
    """The first gate the cohort fails, or None. ``control`` None: no control cohort (the last wave),
    so relative limits are not checked."""
    c, k = cohort, control
    failed = c.ratio(c.failed, c.devices)
    if gates.max_failed is not None and c.failed and failed > gates.max_failed:
        why = "; ".join(c.failures[:3]) + (" ..." if len(c.failures) > 3 else "")
        return GateFailure(
            "failed",
            f"{c.failed} of {c.devices} {label} devices failed ({_pct(failed)} > {_pct(gates.max_failed)}): {why}",
        )
    off = c.ratio(c.offline, c.online_base)
    off_k = k.ratio(k.offline, k.online_base) if k else None
    broke = c.offline and _exceeds(off, off_k, gates.max_offline, gates.max_offline_over_control)
    if broke:
        return GateFailure(
            "offline", f"{c.offline} of {c.online_base} {label} devices went stale or offline ({_pct(off)} {broke})"
        )
    rej = c.ratio(c.rejected, c.messages)
    rej_k = k.ratio(k.rejected, k.messages) if k else None
    broke = c.rejected and _exceeds(rej, rej_k, gates.max_rejected, gates.max_rejected_over_control)
    if broke:
        return GateFailure(
            "rejected",
            f"{c.rejected} of {c.messages} readings from {label} devices were rejected ({_pct(rej)} {broke})",
        )
    an = c.ratio(c.anomalies, c.anomaly_base)
    an_k = k.ratio(k.anomalies, k.anomaly_base) if k else None
    if c.anomalies and gates.max_anomalies is not None and an > gates.max_anomalies:
        return GateFailure("anomalies", f"{an:.2f} anomaly episodes per {label} device (limit {gates.max_anomalies:g})")
    over = gates.max_anomalies_over_control
    if c.anomalies and an_k is not None and over is not None and an - an_k > over:
        return GateFailure(
            "anomalies",
            f"{an:.2f} anomaly episodes per {label} device against {an_k:.2f} per device not yet updated "
            f"(limit +{over:g})",
        )
    for guard in gates.guards:
        bad = c.guard_violations.get(guard.field, 0)
        if bad and c.ratio(bad, c.guard_base) > guard.max_ratio:
            lo = "-inf" if guard.min is None else f"{guard.min:g}"
            hi = "inf" if guard.max is None else f"{guard.max:g}"
            return GateFailure(
                f"guard:{guard.field}", f"{bad} of {c.guard_base} {label} devices sent {guard.field} outside {lo}..{hi}"
            )
    return None
