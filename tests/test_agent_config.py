"""Agent settings: the example file loads, every field is documented, and bad values give one line
naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

import edge_agent
from edge_agent.config import AgentSettings, load_settings, settings_reference
from edge_agent.errors import SettingsError

EXAMPLE = Path(edge_agent.__file__).with_name("agent.example.toml")


def test_example_loads_and_documents_every_field() -> None:
    s = load_settings(EXAMPLE)
    assert [x.type for x in s.sensors] == ["bme280", "cpu_temp", "command"]
    text = EXAMPLE.read_text()
    for name, field in AgentSettings.model_fields.items():
        assert field.description, name
        assert name in text, f"{name} missing from agent.example.toml"
    assert "| `receipt_timeout_s` |" in settings_reference()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("sampling_interval_s = 0\n", "sampling_interval_s"),
        ('overflow_policy = "drop_all"\n', "overflow_policy"),
        ("buffer_max_rows = -1\n", "buffer_max_rows"),
        ("surprise = 1\n", "surprise"),
        ('[[sensors]]\ntype = "command"\nsensor_type = "x"\ncommand = []\n', "sensors.1.command"),
        ('[[sensors]]\ntype = "thermometer"\n', "sensors.1"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, body: str, field: str) -> None:
    f = tmp_path / "a.toml"
    sensor = '[[sensors]]\ntype = "simulated"\n'
    f.write_text(sensor + body if body.startswith("[[") else body + sensor)
    with pytest.raises(SettingsError) as err:
        load_settings(f)
    assert err.value.field == field
    assert "\n" not in str(err.value) and field in str(err.value)


def test_missing_file_and_env_overlay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    f = tmp_path / "a.toml"
    f.write_text('buffer_path = "b.db"\n[[sensors]]\ntype = "simulated"\n')
    monkeypatch.setenv("EDU_AGENT_RECEIPT_TIMEOUT_S", "7.5")
    s = load_settings(f)
    assert s.receipt_timeout_s == 7.5 and s.buffer_path == tmp_path / "b.db"
