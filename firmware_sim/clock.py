"""Simulated time: real time, or accelerated (``speed=60``: one simulated hour per real minute).

A :class:`SimClock` maps the process's monotonic clock onto simulated epoch milliseconds,
starting at ``start_ms``. Everything a simulated device stamps (reading timestamps, ``sent_at``)
comes from here, so an accelerated run produces a day of data in 24 real minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["SimClock"]


@dataclass(slots=True)
class SimClock:
    """``now_ms() = start_ms + (monotonic() - t0) * speed * 1000``."""

    start_ms: int | None = None
    speed: float = 1.0
    monotonic: Callable[[], float] = time.monotonic
    _t0: float = field(init=False)

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError("speed must be > 0")
        if self.start_ms is None:
            self.start_ms = int(time.time() * 1000)
        self._t0 = self.monotonic()

    @property
    def origin_ms(self) -> int:
        assert self.start_ms is not None
        return self.start_ms

    def now_ms(self) -> int:
        return self.origin_ms + int((self.monotonic() - self._t0) * self.speed * 1000.0)

    def elapsed_sim_s(self) -> float:
        return (self.monotonic() - self._t0) * self.speed

    def real_at(self, sim_ms: int) -> float:
        """The monotonic time at which simulated time reaches ``sim_ms``."""
        return self._t0 + (sim_ms - self.origin_ms) / 1000.0 / self.speed

    def real_delay(self, sim_ms: int) -> float:
        """Real seconds until simulated time reaches ``sim_ms`` (negative when past)."""
        return self.real_at(sim_ms) - self.monotonic()

    def sleep_until(self, sim_ms: int) -> None:
        delay = self.real_delay(sim_ms)
        if delay > 0:
            time.sleep(delay)
