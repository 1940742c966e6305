"""Sensors: simulated, cpu_temp, command (JSON output), bme280 (datasheet compensation, fake I2C bus),
and a failing sensor becoming a flagged reading instead of a crash."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from edge_agent.agent import Pipeline
from edge_agent.buffer import Buffer
from edge_agent.sensors.base import SensorError
from edge_agent.sensors.bme280 import Bme280Sensor, Calibration, compensate
from edge_agent.sensors.command import CommandSensor
from edge_agent.sensors.cpu_temp import CpuTempSensor
from edge_agent.sensors.simulated import SimulatedSensor
from iot_protocol import generate_private_key

NOW = 1_750_000_000_000


def test_simulated_is_deterministic_and_in_range() -> None:
    a, b = SimulatedSensor(seed=3), SimulatedSensor(seed=3)
    assert a.read(NOW).values == b.read(NOW).values
    assert a.read(NOW).values != SimulatedSensor(seed=4).read(NOW).values
    v = a.read(NOW).values
    assert 10 < v["temperature"] < 32 and 0 <= v["humidity"] <= 100 and 900 < v["pressure"] < 1100


def test_command_sensor_parses_json(tmp_path: Path) -> None:
    s = CommandSensor(command=[sys.executable, "-c", 'print(\'{"temperature": 21.5, "co2": 400}\')'], sensor_type="p")
    assert dict(s.read(NOW).values) == {"temperature": 21.5, "co2": 400.0}
    full = '{"values": {"lux": 12}, "quality": 0.5, "flags": ["estimated"]}'
    s = CommandSensor(command=[sys.executable, "-c", f"print('{full}')"], sensor_type="p")
    r = s.read(NOW)
    assert (dict(r.values), r.quality, r.flags) == ({"lux": 12.0}, 0.5, ("estimated",))


@pytest.mark.parametrize(
    ("code", "flag"),
    [
        ("print('not json')", "bad_output"),
        ('print(\'{"t": "hot"}\')', "bad_output"),
        ("import sys; sys.exit(3)", "exit_status"),
        ("import time; time.sleep(5)", "timeout"),
    ],
)
def test_command_sensor_failures_are_flagged(code: str, flag: str) -> None:
    s = CommandSensor(command=[sys.executable, "-c", code], sensor_type="p", timeout_s=0.5)
    with pytest.raises(SensorError) as err:
        s.read(NOW)
    assert err.value.flag == flag


def test_missing_program_is_flagged() -> None:
    with pytest.raises(SensorError) as err:
        CommandSensor(command=["/nonexistent/probe"], sensor_type="p").read(NOW)
    assert err.value.flag == "unavailable"


def test_cpu_temp(tmp_path: Path) -> None:
    f = tmp_path / "temp"
    f.write_text("48312\n")
    assert CpuTempSensor(path=f).read(NOW).values == {"cpu_temperature": 48.312}
    with pytest.raises(SensorError):
        CpuTempSensor(path=tmp_path / "missing").read(NOW)


def test_failing_sensor_becomes_a_flagged_reading_and_others_continue(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "b.db")
    p = Pipeline(
        device_id="dev1",
        key=generate_private_key(),
        buffer=buf,
        sensors=[SimulatedSensor(), CpuTempSensor(path=tmp_path / "missing")],
    )
    out = p.sample(NOW)
    assert [r.sensor_type for r in out] == ["environment", "cpu"]
    assert out[0].quality == 1.0 and "temperature" in out[0].values
    assert (out[1].quality, out[1].flags, dict(out[1].values)) == (
        0.0,
        ("unavailable",),
        {"quality_score": 0.0},
    )
    assert buf.stats().produced == 2
    again = p.sample(NOW)  # same clock reading: timestamps still move forward (storage keys on ts)
    assert again[0].ts == NOW + 1


# --- BME280: the datasheet's worked example (BMP280 DS section 3.12) and a fake register map
CAL = Calibration(27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000, 75, 362, 0, 313, 50, 30)


def test_bme280_compensation_matches_the_datasheet_example() -> None:
    t, p, h = compensate(CAL, 519888, 415148, 30000)
    assert t == pytest.approx(25.08, abs=0.01)
    assert p == pytest.approx(1006.5327, abs=0.01)  # 100653.27 Pa
    assert 0 <= h <= 100


class RegisterBus:
    """A BME280's register map: the I2C seam the sensor is built on (the only test double)."""

    def __init__(self, cal: Calibration, adc_t: int, adc_p: int, adc_h: int) -> None:
        a = struct.pack(
            "<HhhHhhhhhhhh",
            cal.T1,
            cal.T2,
            cal.T3,
            cal.P1,
            cal.P2,
            cal.P3,
            cal.P4,
            cal.P5,
            cal.P6,
            cal.P7,
            cal.P8,
            cal.P9,
        ) + bytes([0, cal.H1])
        e4, e5, e6 = (cal.H4 >> 4) & 0xFF, (cal.H4 & 0x0F) | ((cal.H5 & 0x0F) << 4), (cal.H5 >> 4) & 0xFF
        b = struct.pack("<hB", cal.H2, cal.H3) + bytes([e4, e5, e6]) + struct.pack("b", cal.H6)
        self.regs = {0xD0: 0x60, 0xF3: 0}
        self.regs.update({0x88 + i: v for i, v in enumerate(a)})
        self.regs.update({0xE1 + i: v for i, v in enumerate(b)})
        data = [
            adc_p >> 12,
            (adc_p >> 4) & 0xFF,
            (adc_p & 0xF) << 4,
            adc_t >> 12,
            (adc_t >> 4) & 0xFF,
            (adc_t & 0xF) << 4,
            adc_h >> 8,
            adc_h & 0xFF,
        ]
        self.regs.update({0xF7 + i: v for i, v in enumerate(data)})
        self.writes: list[tuple[int, int]] = []
        self.fail = False

    def read_byte_data(self, addr: int, reg: int) -> int:
        if self.fail:
            raise OSError(121, "Remote I/O error")
        return self.regs[reg]

    def read_i2c_block_data(self, addr: int, reg: int, length: int) -> list[int]:
        return [self.read_byte_data(addr, reg + i) for i in range(length)]

    def write_byte_data(self, addr: int, reg: int, value: int) -> None:
        self.writes.append((reg, value))


def test_bme280_reads_through_the_bus() -> None:
    bus = RegisterBus(CAL, 519888, 415148, 30000)
    s = Bme280Sensor(bus=bus)
    v = s.read(NOW).values
    t, p, h = compensate(CAL, 519888, 415148, 30000)
    assert v == {"temperature": round(t, 2), "pressure": round(p, 2), "humidity": round(h, 2)}
    assert (
        Calibration.from_registers(
            bytes(bus.read_i2c_block_data(0x76, 0x88, 26)), bytes(bus.read_i2c_block_data(0x76, 0xE1, 7))
        )
        == CAL
    )
    assert (0xF4, 0b00100101) in bus.writes  # forced mode, x1 oversampling
    bus.fail = True
    with pytest.raises(SensorError) as err:
        s.read(NOW)
    assert err.value.flag == "bus_error"
