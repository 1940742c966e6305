"""Agent settings: the example file loads, every field is documented, and bad values give one line
naming the field and what was expected."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import edge_agent
import iot_protocol as p
from edge_agent._schema import rule_of
from edge_agent.config import AgentSettings, CommandSpec, SimulatedSpec, load_settings, settings_reference
from edge_agent.errors import SettingsError

EXAMPLE = Path(edge_agent.__file__).with_name("agent.example.toml")
SIM = '[[sensors]]\ntype = "simulated"\n'


def test_example_loads_and_documents_every_field() -> None:
    s = load_settings(EXAMPLE)
    assert [x.type for x in s.sensors] == ["bme280", "cpu_temp", "command"]
    assert s.sensors[1].path == Path("/sys/class/thermal/thermal_zone0/temp")
    assert s.sensors[2] == CommandSpec(type="command", sensor_type="light", command=("/usr/local/bin/read-lux",))
    assert (s.mqtt_keepalive_s, s.sampling_interval_s, s.buffer_max_bytes) == (30, 1.0, None)
    text = EXAMPLE.read_text()
    for f in dataclasses.fields(AgentSettings):
        assert rule_of(f).description, f.name
        assert f.name in text, f"{f.name} missing from agent.example.toml"
    ref = settings_reference()
    assert "| `receipt_timeout_s` | `30.0` | number > 0 and <= 86400 |" in ref
    assert '| `overflow_policy` | `"drop_oldest"` | one of "drop_oldest", "drop_newest" |' in ref


def test_defaults_and_types(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text('heartbeat_interval_s = 2\nbuffer_max_bytes = 8192\n[[sensors]]\ntype = "simulated"\nseed = 3\n')
    s = load_settings(f)
    assert s.heartbeat_interval_s == 2.0 and isinstance(s.heartbeat_interval_s, float)
    assert s.buffer_max_bytes == 8192 and s.overflow_policy == "drop_oldest" and s.keep_produced_log is False
    assert s.identity_dir == Path("/var/lib/edu-agent/identity")
    assert s.sensors == (SimulatedSpec(type="simulated", seed=3),)
    assert s.sensors[0].fields == ("temperature", "humidity", "pressure")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.sampling_interval_s = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ("sampling_interval_s = 0\n", "sampling_interval_s", "must be a number >= 0.05 and <= 86400, got 0"),
        ('sampling_interval_s = "x"\n', "sampling_interval_s", "got 'x'"),
        ("sampling_interval_s = true\n", "sampling_interval_s", "must be a number"),
        ("batch_max_readings = 2.5\n", "batch_max_readings", "must be an integer >= 1 and <= 1000, got 2.5"),
        ('overflow_policy = "drop_all"\n', "overflow_policy", "must be one of 'drop_oldest', 'drop_newest'"),
        ("buffer_max_rows = -1\n", "buffer_max_rows", "must be an integer >= 10, got -1"),
        ("keep_produced_log = 1\n", "keep_produced_log", "must be true or false, got 1"),
        ("surprise = 1\n", "surprise", "unknown setting"),
        ("backoff_initial_s = 10.0\nbackoff_max_s = 5.0\n", "backoff_max_s", "must be >= backoff_initial_s (10)"),
        ('[[sensors]]\ntype = "command"\nsensor_type = "x"\ncommand = []\n', "sensors[1].command", "at least 1"),
        ('[[sensors]]\ntype = "command"\ncommand = ["true"]\n', "sensors[1].sensor_type", "required"),
        (
            '[[sensors]]\ntype = "command"\nsensor_type = "x"\ncommand = ["true"]\ntimeout_s = "x"\n',
            "sensors[1].timeout_s",
            "must be a number > 0 and <= 300, got 'x'",
        ),
        ('[[sensors]]\ntype = "simulated"\nfields = ["t", 3]\nsensor_type = "y"\n', "sensors[1].fields[1]", "string"),
        ('[[sensors]]\ntype = "simulated"\ncolour = 1\n', "sensors[1].colour", "unknown setting"),
        ('[[sensors]]\ntype = "simulated"\n', "sensors[1].sensor_type", "two sensors share sensor_type"),
        (
            '[[sensors]]\ntype = "thermometer"\n',
            "sensors[1].type",
            "unknown type 'thermometer': use one of simulated, cpu_temp, command, bme280",
        ),
        ("[[sensors]]\nbus = 1\n", "sensors[1].type", "missing"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, body: str, field: str, says: str) -> None:
    f = tmp_path / "a.toml"
    f.write_text(SIM + body if body.startswith("[[") else body + SIM)
    with pytest.raises(SettingsError) as err:
        load_settings(f)
    assert err.value.field == field
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"{f}: {field}: "), str(err.value)
    assert says in str(err.value)


def test_sensors_are_required(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text("log_level = 'DEBUG'\n")
    with pytest.raises(SettingsError, match=r"sensors: required") as err:
        load_settings(f)
    assert err.value.field == "sensors"
    f.write_text("sensors = []\n")
    with pytest.raises(SettingsError, match=r"sensors: must have at least 1 item"):
        load_settings(f)


def test_missing_file_and_env_overlay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    f = tmp_path / "a.toml"
    f.write_text('buffer_path = "b.db"\nmqtt_keepalive_s = 40\n' + SIM)
    monkeypatch.setenv("EDU_AGENT_RECEIPT_TIMEOUT_S", "7.5")
    monkeypatch.setenv("EDU_AGENT_KEEP_PRODUCED_LOG", "true")
    monkeypatch.setenv("EDU_AGENT_BUFFER_MAX_BYTES", "10000")
    monkeypatch.setenv("EDU_AGENT_MQTT_KEEPALIVE_S", "50")  # the file wins
    s = load_settings(f)
    assert s.receipt_timeout_s == 7.5 and s.buffer_path == tmp_path / "b.db"
    assert s.keep_produced_log is True and s.buffer_max_bytes == 10000 and s.mqtt_keepalive_s == 40
    monkeypatch.setenv("EDU_AGENT_BACKOFF_JITTER", "lots")
    with pytest.raises(SettingsError) as err:
        load_settings(f)
    assert err.value.field == "backoff_jitter"
    assert str(err.value).endswith(
        "backoff_jitter: must be a number >= 0 and <= 1, got 'lots' (from EDU_AGENT_BACKOFF_JITTER)"
    )
    assert load_settings(f, backoff_jitter=0.25).backoff_jitter == 0.25  # explicit overrides win


def test_device_settings_validate_like_the_contract_says() -> None:
    s = p.parse_settings({"sampling_interval_s": 5, "batch_max_readings": 10.0, "calibration_offsets": {"t": -1}})
    assert s == p.DeviceSettings(sampling_interval_s=5.0, batch_max_readings=10, calibration_offsets={"t": -1.0})
    assert s.to_dict() == {"sampling_interval_s": 5.0, "batch_max_readings": 10, "calibration_offsets": {"t": -1.0}}
    assert p.parse_settings({"low_power": None}).to_dict() == {}
    cases = {
        "sampling_interval_s": (0.01, "config setting sampling_interval_s: must be >= 0.05"),
        "heartbeat_interval_s": (100_000, "config setting heartbeat_interval_s: must be <= 86400"),
        "batch_max_readings": (1.5, "config setting batch_max_readings: must be an integer, got 1.5"),
        "low_power": ("yes", "config setting low_power: must be true or false, got 'yes'"),
        "calibration_offsets": ({"t": "x"}, "config setting calibration_offsets: t: must be a number, got 'x'"),
        "transmission_interval_s": (float("inf"), "config setting transmission_interval_s: must be a finite"),
    }
    for name, (value, message) in cases.items():
        with pytest.raises(p.ValidationError) as err:
            p.parse_settings({name: value})
        assert str(err.value).startswith(message) and err.value.reason == "bad_config"
    fields = p.DeviceSettings.fields()
    assert list(fields) == [f.name for f in dataclasses.fields(p.DeviceSettings)]
    assert fields["sampling_interval_s"][:2] == (float, (0.05, 86_400))
