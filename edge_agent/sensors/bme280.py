"""Bosch BME280 (temperature, humidity, pressure) over I2C, in forced mode, with the floating-point
compensation formulas of the datasheet (BST-BME280-DS002, section 8.1).

The chip is reached through :class:`I2CBus`, the three calls of ``smbus2.SMBus`` it needs, so
tests can hand it a register map instead of hardware.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Protocol

from ..errors import SensorSetupError
from .base import Sample, Sensor, SensorError

__all__ = ["CHIP_ID", "Bme280Sensor", "Calibration", "I2CBus", "compensate"]

CHIP_ID = 0x60
REG_ID, REG_CTRL_HUM, REG_STATUS, REG_CTRL_MEAS, REG_DATA = 0xD0, 0xF2, 0xF3, 0xF4, 0xF7
REG_CALIB_A, REG_CALIB_B = 0x88, 0xE1  # 26 bytes (T1..P9, H1 at 0xA1) and 7 bytes (H2..H6)
OSRS_X1 = 0b001
MODE_FORCED = 0b01


class I2CBus(Protocol):
    def read_byte_data(self, i2c_addr: int, register: int) -> int: ...
    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]: ...
    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Calibration:
    T1: int
    T2: int
    T3: int
    P1: int
    P2: int
    P3: int
    P4: int
    P5: int
    P6: int
    P7: int
    P8: int
    P9: int
    H1: int
    H2: int
    H3: int
    H4: int
    H5: int
    H6: int

    @classmethod
    def from_registers(cls, a: bytes, b: bytes) -> Calibration:
        """Decode the trimming parameters from 0x88..0xA1 (``a``, 26 bytes) and 0xE1..0xE7 (``b``, 7)."""
        t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9 = struct.unpack("<HhhHhhhhhhhh", a[:24])
        h1 = a[25]
        h2 = struct.unpack("<h", b[0:2])[0]
        h3 = b[2]
        h4 = (struct.unpack("b", b[3:4])[0] << 4) | (b[4] & 0x0F)
        h5 = (struct.unpack("b", b[5:6])[0] << 4) | (b[4] >> 4)
        h6 = struct.unpack("b", b[6:7])[0]
        return cls(t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9, h1, h2, h3, h4, h5, h6)


def compensate(cal: Calibration, adc_t: int, adc_p: int, adc_h: int) -> tuple[float, float, float]:
    """Datasheet 8.1 (double precision): returns (degC, hPa, %RH)."""
    var1 = (adc_t / 16384.0 - cal.T1 / 1024.0) * cal.T2
    var2 = (adc_t / 131072.0 - cal.T1 / 8192.0) ** 2 * cal.T3
    t_fine = var1 + var2
    temperature = t_fine / 5120.0

    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * cal.P6 / 32768.0
    var2 = var2 + var1 * cal.P5 * 2.0
    var2 = var2 / 4.0 + cal.P4 * 65536.0
    var1 = (cal.P3 * var1 * var1 / 524288.0 + cal.P2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * cal.P1
    if var1 == 0.0:
        pressure_pa = 0.0  # avoids a division by zero, as the datasheet does
    else:
        p = 1048576.0 - adc_p
        p = (p - var2 / 4096.0) * 6250.0 / var1
        var1 = cal.P9 * p * p / 2147483648.0
        var2 = p * cal.P8 / 32768.0
        pressure_pa = p + (var1 + var2 + cal.P7) / 16.0

    h = t_fine - 76800.0
    h = (adc_h - (cal.H4 * 64.0 + cal.H5 / 16384.0 * h)) * (
        cal.H2 / 65536.0 * (1.0 + cal.H6 / 67108864.0 * h * (1.0 + cal.H3 / 67108864.0 * h))
    )
    h = h * (1.0 - cal.H1 * h / 524288.0)
    humidity = min(max(h, 0.0), 100.0)
    return temperature, pressure_pa / 100.0, humidity


class Bme280Sensor(Sensor):
    fields = ("temperature", "pressure", "humidity")

    def __init__(
        self,
        *,
        bus: I2CBus | int = 1,
        address: int = 0x76,
        sensor_type: str = "environment",
        measure_timeout_s: float = 0.1,
    ) -> None:
        self.sensor_type = sensor_type
        self.address = address
        self.measure_timeout_s = measure_timeout_s
        self._owns_bus = isinstance(bus, int)
        if isinstance(bus, int):
            try:
                from smbus2 import SMBus
            except ImportError:
                raise SensorSetupError("the bme280 sensor needs smbus2: pip install 'edu-platform[bme280]'") from None
            try:
                bus = SMBus(bus)
            except OSError as exc:
                raise SensorSetupError(f"cannot open I2C bus {bus}: {exc.strerror}") from None
        self.bus: I2CBus = bus
        self._cal: Calibration | None = None

    def _calibration(self) -> Calibration:
        if self._cal is None:
            chip = self.bus.read_byte_data(self.address, REG_ID)
            if chip != CHIP_ID:
                raise SensorError(f"chip id 0x{chip:02x} at 0x{self.address:02x} is not a BME280", flag="wrong_chip")
            a = bytes(self.bus.read_i2c_block_data(self.address, REG_CALIB_A, 26))
            b = bytes(self.bus.read_i2c_block_data(self.address, REG_CALIB_B, 7))
            self._cal = Calibration.from_registers(a, b)
        return self._cal

    def read(self, now_ms: int) -> Sample:
        try:
            cal = self._calibration()
            self.bus.write_byte_data(self.address, REG_CTRL_HUM, OSRS_X1)  # takes effect with ctrl_meas
            self.bus.write_byte_data(self.address, REG_CTRL_MEAS, (OSRS_X1 << 5) | (OSRS_X1 << 2) | MODE_FORCED)
            deadline = time.monotonic() + self.measure_timeout_s
            while self.bus.read_byte_data(self.address, REG_STATUS) & 0x08:  # measuring
                if time.monotonic() > deadline:
                    raise SensorError("measurement did not finish", flag="timeout")
                time.sleep(0.002)
            d = self.bus.read_i2c_block_data(self.address, REG_DATA, 8)
        except OSError as exc:
            self._cal = None  # re-read calibration after a bus error (the chip may have been replaced)
            raise SensorError(f"I2C error: {exc}", flag="bus_error") from None
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        if adc_t == 0x80000:  # the reset value: no measurement was made
            raise SensorError("no measurement (temperature skipped)", flag="no_data")
        t, p, h = compensate(cal, adc_t, adc_p, adc_h)
        return Sample({"temperature": round(t, 2), "pressure": round(p, 2), "humidity": round(h, 2)})

    def close(self) -> None:
        if self._owns_bus:
            close = getattr(self.bus, "close", None)
            if close is not None:
                close()
