"""Per-device token buckets on telemetry messages, by arrival time: a flood is refused cheaply.

Each device (named by the topic, before any verification) has a bucket of ``burst`` tokens refilled
at ``rate`` per second; a message takes one token or is refused. Buckets live in this process: with N
replicas on one shared subscription a device may get up to N times the limit (a Redis-backed bucket
would make it global; not done). Full buckets are forgotten from time to time, so topics naming
devices that do not exist cannot grow the table without bound.
"""

from __future__ import annotations

__all__ = ["RateLimiter"]


class RateLimiter:
    """Token buckets keyed by device id. Not thread-safe: one caller (the MQTT network thread)."""

    def __init__(self, rate: float, burst: int, *, sweep_every: int = 10_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # device -> (tokens, at)
        self._sweep_every = sweep_every
        self._calls = 0

    def allow(self, device_id: str, now: float) -> bool:
        """Take one token from ``device_id``'s bucket at time ``now`` (seconds); False when empty."""
        self._calls += 1
        if self._calls >= self._sweep_every:
            self._sweep(now)
        state = self._buckets.get(device_id)
        if state is None:
            tokens = self.burst
        else:
            tokens, at = state
            tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)  # a clock step back adds nothing
        if tokens < 1.0:
            self._buckets[device_id] = (tokens, now)
            return False
        self._buckets[device_id] = (tokens - 1.0, now)
        return True

    def wait_s(self, device_id: str, now: float) -> float:
        """Seconds until ``device_id``'s bucket holds a whole token again (0 when it does now)."""
        state = self._buckets.get(device_id)
        if state is None:
            return 0.0
        tokens, at = state
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        return max(0.0, (1.0 - tokens) / self.rate)

    def _sweep(self, now: float) -> None:
        self._calls = 0
        full = [d for d, (t, at) in self._buckets.items() if t + max(0.0, now - at) * self.rate >= self.burst]
        for d in full:
            del self._buckets[d]

    def __len__(self) -> int:
        return len(self._buckets)
