"""Class quotas in the bridge (broker_bridge/quota.py) when the cache holding their buckets does not
answer: messages are let through, and the cache is asked again only once per lease."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from broker_bridge.quota import QuotaGate
from broker_bridge.testing import register_devices
from cloud_core.auth.models import Classroom
from cloud_core.cache import open_cache
from cloud_core.core.db import make_engine, session_scope
from cloud_core.models import Device

TIMEOUT_S = 0.3


def test_a_cache_that_does_not_answer_costs_one_timeout_per_lease_not_per_message(tmp_path: Path) -> None:
    """Regression: with the cache unreachable (a partition: connections hang rather than being refused)
    every message of a device in a class waited for the cache's socket timeout on the MQTT network
    thread (5 s by default), so one class's devices stalled the whole bridge. Now a failure lets the
    device's messages through for ``lease_s`` without asking the cache again."""
    engine = make_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    register_devices(engine, ["d1"])
    with session_scope(engine) as s:
        room = Classroom(name="7B", readings_per_s_per_device=100.0, readings_per_s=1000.0)
        s.add(room)
        s.flush()
        device = s.get(Device, "d1")
        assert device is not None
        device.class_id = room.id
    silent = socket.create_server(("127.0.0.1", 0), backlog=64)  # accepts connections, never answers
    cache = open_cache(f"redis://127.0.0.1:{silent.getsockname()[1]}/0?socket_timeout={TIMEOUT_S}")
    gate = QuotaGate(engine, cache, refresh_s=60, lease_s=30, burst_s=1)
    try:
        assert gate.refresh()
        started = time.monotonic()
        first = gate.check("d1", 100)
        one_call = time.monotonic() - started
        assert first is None and one_call >= TIMEOUT_S  # it did ask the cache, and was let through
        for _ in range(20):
            assert gate.check("d1", 100) is None
            gate.charge("d1", 1)
        rest = time.monotonic() - started - one_call
        assert rest < one_call, f"20 messages took {rest:.2f}s after the first failure ({one_call:.2f}s)"
    finally:
        cache.close()
        silent.close()
        engine.dispose()
