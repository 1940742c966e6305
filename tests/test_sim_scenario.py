"""firmware_sim scenarios, fault injection and labels: errors name the field, faults show in values."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from edge_agent.sensors.base import SensorError
from firmware_sim.errors import ScenarioError
from firmware_sim.faults import FaultSpec, SensorFaultInjector
from firmware_sim.labels import CSV_HEADER, Label, LabelWriter, format_ts, read_labels
from firmware_sim.physics import FIELDS, DevicePhysics
from firmware_sim.scenario import load_scenario, parse_duration, parse_scenario
from firmware_sim.sensors import ModelledSensor

START = 1_767_600_000_000
SCENARIOS = Path(__file__).resolve().parents[1] / "firmware_sim" / "scenarios"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"devices": [{"count": 0}]}, "devices.0.count"),
        ({"devices": [{"type": "volcano"}]}, "devices.0.type"),
        ({"devices": [{"sampling_interval": "10 parsecs"}]}, "devices.0.sampling_interval"),
        ({"devices": [{"fields": ["temperature", "radiation"]}]}, "devices.0.fields"),
        ({"devices": [{}], "events": [{"kind": "meteor", "device": "*", "at": "1h"}]}, "events.0.kind"),
        ({"devices": [{}], "events": [{"kind": "spike", "device": "*"}]}, "events.0.at"),
        ({"devices": [{}], "simulation": {"speed": -1}}, "simulation.speed"),
        ({"devices": [{}], "simulation": {"colour": "red"}}, "simulation.colour"),
        ({"devices": []}, "devices"),
        (
            {"devices": [{}], "random_events": [{"kind": "dropout", "rate_per_day": 0}]},
            "random_events.0.rate_per_day",
        ),
        ({"devices": [{}], "events": [{"kind": "spike", "device": "nobody-*", "at": 0}]}, "events.0.device"),
        ({"devices": [{}], "events": [{"kind": "decouple", "device": "*", "at": 0}]}, "events.0"),
        (
            {"devices": [{}], "events": [{"kind": "decouple", "device": "*", "at": 0, "field": "battery_level"}]},
            "events.0",
        ),
    ],
)
def test_scenario_errors_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data).plan(start_ms=START)
    assert info.value.field == field
    assert field in str(info.value)


def test_bad_toml_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[simulation\nseed = 1\n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="does not exist"):
        load_scenario(tmp_path / "missing.toml")


def test_durations() -> None:
    assert parse_duration("1d2h3m4s") == 86400 + 7200 + 180 + 4
    assert parse_duration("500ms") == 0.5
    assert parse_duration(90) == 90.0
    with pytest.raises(ValueError):
        parse_duration("5 minutes")


@pytest.mark.parametrize("name", ["classroom.toml", "faults_and_attacks.toml", "scale_5000.toml"])
def test_example_scenarios_parse_and_plan(name: str) -> None:
    plan = load_scenario(SCENARIOS / name).plan()
    assert plan.devices
    assert plan.end_ms > plan.start_ms


def test_plan_is_deterministic_and_expands_globs_and_random_rates() -> None:
    data = {
        "simulation": {"seed": 5, "duration": "2d"},
        "devices": [{"count": 3, "id_prefix": "a"}, {"count": 2, "id_prefix": "b", "type": "indoor"}],
        "events": [{"kind": "spike", "device": "a-*", "at": "1h", "field": "temperature"}],
        "random_events": [{"kind": "dropout", "devices": "b-*", "rate_per_day": 5, "duration": "5m"}],
    }
    p1 = parse_scenario(data).plan(start_ms=START)
    p2 = parse_scenario(data).plan(start_ms=START)
    assert p1.events == p2.events
    assert [d.device_id for d in p1.devices] == ["a-000", "a-001", "a-002", "b-000", "b-001"]
    spikes = [e for e in p1.events if e.kind == "spike"]
    assert [e.device_id for e in spikes] == ["a-000", "a-001", "a-002"]
    assert all(e.start_ms == START + 3_600_000 for e in spikes)
    dropouts = [e for e in p1.events if e.kind == "dropout"]
    assert {e.device_id for e in dropouts} == {"b-000", "b-001"}
    assert 5 <= len(dropouts) <= 40  # Poisson, 2 devices x 2 days x 5/day
    assert all(e.end_ms - e.start_ms == 300_000 for e in dropouts)


def fault(
    kind: str, field: str = "temperature", start: int = 0, end: int = 3_600_000, mag: float | None = None
):
    return FaultSpec(kind, "d", START + start, START + end, field, mag)


def test_sensor_faults_change_values_as_labelled() -> None:
    physics = DevicePhysics(4, START)
    inj = SensorFaultInjector(4)
    sensor = ModelledSensor(physics, faults=inj)
    t_before, t_in, t_late = START - 60_000, START + 600_000, START + 1_800_000

    inj.faults = [fault("spike", mag=12.0)]
    assert sensor.read(t_in).values["temperature"] == pytest.approx(
        physics.temperature(t_in) + 12.0, abs=1e-3
    )
    assert sensor.read(t_before).values["temperature"] == round(physics.temperature(t_before), 3)

    inj.faults = [fault("drift", mag=2.0)]
    assert sensor.read(t_late).values["temperature"] == pytest.approx(
        physics.temperature(t_late) + 1.0, abs=1e-3
    )

    inj.faults, inj._stuck = [fault("stuck", field="humidity")], {}
    first = sensor.read(START + 1).values["humidity"]
    assert {sensor.read(START + i * 60_000).values["humidity"] for i in range(1, 30)} == {first}

    inj.faults = [fault("dropout", field="")]
    with pytest.raises(SensorError) as info:
        sensor.read(t_in)
    assert info.value.flag == "dropout"

    inj.faults = [fault("noise_burst", field="pressure", mag=5.0)]
    deltas = [
        sensor.read(START + i * 10_000).values["pressure"] - physics.pressure(START + i * 10_000)
        for i in range(200)
    ]
    assert 3.0 < (sum(d * d for d in deltas) / len(deltas)) ** 0.5 < 7.0


def test_decouple_breaks_the_relation_with_values_the_field_really_takes() -> None:
    """Humidity runs 12 hours ahead of the temperature: reached over the first hour, undone over the
    last, so no reading steps; inside, each value is what humidity really reads 12 hours later."""
    physics = DevicePhysics(4, START)
    inj = SensorFaultInjector(4, physics=physics)
    sensor = ModelledSensor(physics, faults=inj)
    hour = 3_600_000
    inj.add(FaultSpec("decouple", "d", START, START + 6 * hour, "humidity"))
    got = [sensor.read(START + i * 60_000).values["humidity"] for i in range(6 * 60 + 1)]
    assert got[0] == round(physics.humidity(START), 3)  # the ramp starts at no shift
    assert got[180] == round(physics.humidity(START + 3 * hour + 12 * hour), 3)  # fully shifted
    assert got[-1] == round(physics.humidity(START + 6 * hour), 3)  # back, without a step
    steps = [abs(b - a) for a, b in itertools.pairwise(got)]
    assert max(steps) < 5.0  # the ramp moves humidity faster than the weather, but never in one jump
    assert sensor.read(START + 3 * hour).values["temperature"] == round(physics.temperature(START + 3 * hour), 3)
    with pytest.raises(ValueError, match="decouple needs"):
        SensorFaultInjector(4).add(FaultSpec("decouple", "d", START, START + hour, "humidity"))  # no physics


def test_faulted_values_stay_in_the_contract_ranges() -> None:
    physics = DevicePhysics(4, START)
    inj = SensorFaultInjector(4, [fault("spike", field="", mag=1e6)])
    values = ModelledSensor(physics, faults=inj).read(START + 1).values
    assert values["temperature"] == 100.0 and values["humidity"] == 100.0 and values["pressure"] == 1100.0
    assert set(values) == set(FIELDS)


def test_labels_csv_and_jsonl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    writer = LabelWriter(path)
    a = Label("d-1", START, START + 60_000, "spike", "sensor", "temperature", {"magnitude": 12.0})
    b = Label("d-2", START + 5, START + 5, "tampered_payload", "attack", expected="bad_signature")
    writer.add(a)
    writer.add(b)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(CSV_HEADER) == "device_id,start,end,kind,field"
    assert lines[1] == "d-1,2026-01-05T08:00:00.000Z,2026-01-05T08:01:00.000Z,spike,temperature"
    assert lines[2] == "d-2,2026-01-05T08:00:00.005Z,2026-01-05T08:00:00.005Z,tampered_payload,"
    from_csv = read_labels(path)
    assert [(x.device_id, x.start_ms, x.end_ms, x.kind, x.field) for x in from_csv] == [
        (x.device_id, x.start_ms, x.end_ms, x.kind, x.field) for x in (a, b)
    ]
    assert read_labels(path.with_suffix(".jsonl")) == [a, b]
    assert format_ts(START) == "2026-01-05T08:00:00.000Z"


def test_the_cli_knows_every_simulator_device_type() -> None:
    """``devices register --type`` notes unknown types; the simulator's own profiles are not unknown."""
    from firmware_sim.physics import PROFILES
    from iotctl.commands.devices import KNOWN_TYPES

    assert set(PROFILES) | {"environment"} == KNOWN_TYPES
