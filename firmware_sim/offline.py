"""Offline generation: a scenario's stored readings and ground truth over simulated time, without
MQTT, a bridge or a real clock (pure and fast: days of a small fleet in seconds).

Each device is built exactly as :mod:`firmware_sim.fleet` builds it: the same per-device seed,
:class:`~firmware_sim.physics.DevicePhysics`, :class:`~firmware_sim.faults.SensorFaultInjector` and
:class:`~firmware_sim.sensors.ModelledSensor` (sensor faults added when they start), the same
sampling grid (per-device phase, ``sampling_interval``), and each sample becomes what the bridge
stores: the sensor's values plus ``quality_score`` (a failed read, e.g. a ``dropout``, becomes a
point with only ``quality_score = 0``, as the agent's pipeline and the bridge make it). So the rows
are the points a live run of the scenario stores, given that every honest reading arrives.
Labels of value-changing sensor faults end one sampling interval after the fault (the reading that
steps back: :mod:`firmware_sim.labels`).

Device and network faults act as on a live device: ``reboot`` and ``battery_death`` stop sampling
for their window, ``offline`` changes nothing stored (the buffer replays it later),
``clock_skew`` shifts timestamps (readings more than ``max_skew_ms`` ahead are dropped, as the
bridge refuses them as ``future_timestamp``). Attacks store nothing, so they are not generated and
not labelled (they need the bridge: ``iotctl sim run``).
"""

from __future__ import annotations

import csv
import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_agent.sensors.base import SensorError

from .faults import SENSOR_FAULTS, FaultSpec
from .labels import Label, LabelWriter, format_ts
from .physics import hash01
from .scenario import DevicePlan, FleetPlan, Scenario
from .sensors import ModelledSensor

__all__ = ["Row", "generate", "iter_rows", "label_for", "write_readings_csv"]

MAX_SKEW_MS = 300_000
"""The bridge's default future tolerance: readings stamped further ahead are refused."""


@dataclass(frozen=True, slots=True)
class Row:
    """One stored point: device, time (ms, as stamped by the device), tags and field values."""

    device_id: str
    ts_ms: int
    sensor_type: str
    location: str
    values: dict[str, float]


def label_for(spec: FaultSpec) -> Label:
    """The ground-truth label the fleet writes for ``spec`` (sensor, device and network faults)."""
    params = {"magnitude": spec.effective_magnitude()} if spec.category in ("sensor", "device") else {}
    return Label(
        device_id=spec.device_id,
        start_ms=spec.start_ms,
        end_ms=spec.end_ms,
        kind=spec.kind,
        category=spec.category,
        field=spec.field,
        params={**params, **dict(spec.params)},
    )


class _OfflineDevice:
    def __init__(self, plan: FleetPlan, dev: DevicePlan, events: list[FaultSpec]) -> None:
        self.plan = dev
        self.skew_ms = 0
        self.sensor = ModelledSensor.for_device(dev, plan.start_ms, lambda ts: ts - self.skew_ms)
        self.physics = self.sensor.physics
        self.injector = self.sensor.faults
        self.interval_ms = max(1, int(dev.group.sampling_interval * 1000))
        self.phase_ms = int(hash01(dev.seed, "phase", 0) * self.interval_ms)
        self.events = sorted(events, key=lambda s: s.start_ms)
        self.down_until: int | None = None  # reboot / battery death: not sampling up to this time
        self.skew_until: int | None = None
        self.last_ts = 0

    def start_event(self, spec: FaultSpec, end_of_run: int) -> None:
        end = min(spec.end_ms, end_of_run) if spec.end_ms > spec.start_ms else None
        if spec.kind in SENSOR_FAULTS:
            self.injector.add(spec)
        elif spec.kind == "reboot":
            self.down_until = end or spec.start_ms + 1000
        elif spec.kind == "battery_death":
            self.down_until = end if end is not None and end < end_of_run else end_of_run + 1
        elif spec.kind == "clock_skew":
            self.skew_ms = int(spec.effective_magnitude() * 1000)
            self.skew_until = end

    def sample(self, sim_ms: int) -> Row | None:
        if self.skew_until is not None and sim_ms >= self.skew_until:
            self.skew_ms, self.skew_until = 0, None
        if self.down_until is not None:
            if sim_ms < self.down_until:
                return None
            self.down_until = None
        g = self.plan.group
        # As edge_agent.agent.Pipeline.sample: device time, never repeating a timestamp.
        ts = max(sim_ms + self.skew_ms, self.last_ts + 1)
        self.last_ts = ts
        if ts - sim_ms > MAX_SKEW_MS:
            return None  # the bridge refuses it (future_timestamp)
        try:
            s = self.sensor.read(ts)
            values = dict(s.values)
            quality = s.quality
        except SensorError:
            values, quality = {"quality_score": 0.0}, 0.0
        values.setdefault("quality_score", quality)  # as broker_bridge.pipeline.checked_points
        return Row(self.plan.device_id, ts, g.sensor_type, g.location, values)


def iter_rows(plan: FleetPlan, labels: LabelWriter | None = None) -> Iterator[Row]:
    """Stored points of ``plan`` in simulated-time order; labels go to ``labels`` as events start."""
    by_device: dict[str, list[FaultSpec]] = {d.device_id: [] for d in plan.devices}
    for spec in plan.events:
        if spec.category != "attack" and spec.start_ms < plan.end_ms:
            by_device[spec.device_id].append(spec)
    devices = [_OfflineDevice(plan, d, by_device[d.device_id]) for d in plan.devices]
    if labels is not None:
        for dev in devices:
            labels.sampling_interval(dev.plan.device_id, dev.interval_ms)
    # One heap of (time, order, kind, device): events before samples at the same instant, as the
    # fleet schedules an event at its start and samples on the grid.
    heap: list[tuple[int, int, int, int]] = []
    for i, dev in enumerate(devices):
        heap.append((plan.start_ms + dev.phase_ms, 1, i, -1))
        for j, spec in enumerate(dev.events):
            heap.append((spec.start_ms, 0, i, j))
    heapq.heapify(heap)
    while heap:
        t, kind, i, j = heapq.heappop(heap)
        if t >= plan.end_ms:
            continue
        dev = devices[i]
        if kind == 0:
            spec = dev.events[j]
            dev.start_event(spec, plan.end_ms)
            if labels is not None:
                labels.add(label_for(spec))
            continue
        row = dev.sample(t)
        heapq.heappush(heap, (t + dev.interval_ms, 1, i, -1))
        if row is not None:
            yield row


def generate(scenario: Scenario, *, start_ms: int | None = None) -> tuple[list[Row], list[Label]]:
    """Every stored point of ``scenario`` and its ground truth (sensor, device and network faults)."""
    plan = scenario.plan(start_ms=start_ms)
    labels = LabelWriter(None)
    rows = list(iter_rows(plan, labels))
    return rows, list(labels.labels)


def write_readings_csv(path: Path, rows: list[Row], fields: tuple[str, ...]) -> None:
    """CSV with header ``device_id,ts,sensor_type,location,<fields>``; ``ts`` ISO 8601 UTC (ms);
    a field the point does not carry is empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("device_id", "ts", "sensor_type", "location", *fields))
        for r in rows:
            w.writerow(
                (r.device_id, format_ts(r.ts_ms), r.sensor_type, r.location,
                 *("" if (v := r.values.get(f)) is None else repr(v) for f in fields))
            )  # fmt: skip
