"""Helpers for tests and benchmarks of the bridge: registered devices with keys, signed batches, a
QoS1 publisher, a receipt collector, and polling with a deadline."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from sqlalchemy.engine import Engine

from cloud_core.core.db import create_all, session_scope
from cloud_core.models import Device
from iot_protocol import (
    Batch,
    Kind,
    Reading,
    Receipt,
    Topics,
    decode_receipt,
    generate_private_key,
    public_key_b64,
    seal_batch,
)
from iot_testing.waiting import wait_for as _wait_for

__all__ = ["Publisher", "ReceiptCollector", "make_batch", "register_devices", "sealed", "wait_for"]


def wait_for(predicate: Callable[[], Any], timeout: float, *, interval: float = 0.05, what: str = "") -> Any:
    """:func:`iot_testing.wait_for` with the timeout first, as the bridge's tests call it."""
    return _wait_for(predicate, what, timeout, interval=interval)


def register_devices(
    engine: Engine, ids: Iterable[str], *, location: str = "lab", status: str = "active"
) -> dict[str, Ed25519PrivateKey]:
    """Create the tables (if needed) and one Device row per id with a fresh key pair."""
    create_all(engine)
    keys = {}
    with session_scope(engine) as session:
        for device_id in ids:
            key = generate_private_key()
            keys[device_id] = key
            session.add(
                Device(id=device_id, status=status, public_key=public_key_b64(key), location=location, key_version=1)
            )
    return keys


def make_batch(
    device_id: str,
    seq: int,
    n: int = 1,
    *,
    ts0: int | None = None,
    step_ms: int = 1,
    values: dict[str, float] | None = None,
    sensor_type: str = "bme280",
) -> Batch:
    """A batch of ``n`` readings with distinct timestamps ``ts0 + seq*n*step + i*step``."""
    base = (ts0 if ts0 is not None else int(time.time() * 1000) - 3_600_000) + seq * n * step_ms
    vals = values or {"temperature": 21.5, "humidity": 40.0, "pressure": 1013.2}
    readings = tuple(Reading(base + i * step_ms, sensor_type, dict(vals), 0.9) for i in range(n))
    return Batch(device_id, uuid.uuid4().hex, seq, int(time.time() * 1000), readings)


def sealed(batch: Batch, key: Ed25519PrivateKey) -> bytes:
    return seal_batch(batch, key)


class Publisher:
    """A QoS1 MQTT 5 publisher that can wait until the broker has acknowledged everything."""

    def __init__(self, host: str, port: int, *, client_id: str | None = None) -> None:
        self._c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"pub-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._c.max_inflight_messages_set(1000)
        self._c.max_queued_messages_set(0)
        self._lock = threading.Lock()
        self.sent = 0
        self.acked = 0
        self._c.on_publish = self._on_publish
        self._c.connect(host, port)
        self._c.loop_start()

    def _on_publish(self, *_a: object) -> None:
        with self._lock:
            self.acked += 1

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self._c.publish(topic, payload, qos=qos)
        self.sent += 1

    def wait_acked(self, timeout: float = 30.0) -> None:
        wait_for(lambda: self.acked >= self.sent, timeout, what=f"PUBACKs ({self.acked}/{self.sent})")

    def close(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ReceiptCollector:
    """Subscribes to every device's receipts under ``topics`` and records them with arrival times."""

    def __init__(self, host: str, port: int, topics: Topics) -> None:
        self.receipts: list[tuple[float, str, Receipt]] = []
        self.raw: list[tuple[str, bytes]] = []  # (device, the exact bytes received)
        self.on_receipt: Callable[[str], None] | None = None  # called (network thread) on each receipt
        self._topics = topics
        self._ready = threading.Event()
        self._c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"rc-{uuid.uuid4().hex[:8]}", protocol=MQTTProtocolVersion.MQTTv5
        )
        self._c.on_message = self._on_message
        self._c.on_subscribe = lambda *_a: self._ready.set()
        self._c.on_connect = lambda c, *_a: c.subscribe(topics.all_devices(Kind.RECEIPTS), qos=1)
        self._c.connect(host, port)
        self._c.loop_start()
        if not self._ready.wait(10):
            raise TimeoutError("receipt subscription not confirmed")

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        device_id, _ = self._topics.parse(msg.topic)
        self.raw.append((device_id, bytes(msg.payload)))
        self.receipts.append((time.time(), device_id, decode_receipt(bytes(msg.payload))))
        if self.on_receipt is not None:
            self.on_receipt(device_id)

    def stored(self, device_id: str | None = None) -> set[tuple[str, int]]:
        return {(d, s) for _, d, r in list(self.receipts) if device_id in (None, d) for s in r.stored}

    def rejected(self) -> set[tuple[str, int, str]]:
        return {(d, x.seq, x.reason) for _, d, r in list(self.receipts) for x in r.rejected}

    def retries(self) -> list[tuple[str, int, str, int]]:
        """(device, seq, reason, after_ms) of every retry entry received."""
        return [(d, x.seq, x.reason, x.after_ms) for _, d, r in list(self.receipts) for x in r.retry]

    def reading_rejections(self, device_id: str | None = None) -> set[tuple[str, int, int, str]]:
        """(device, seq, reading index, reason) of every rejected reading named by a receipt."""
        return {
            (d, o.seq, x.index, x.reason)
            for _, d, r in list(self.receipts)
            if device_id in (None, d)
            for o in r.readings
            for x in o.rejected
        }

    def unread(self) -> set[tuple[str, str, str]]:
        """(device, sha256, reason) of every verified message receipted without a readable seq."""
        return {(d, u.sha256, u.reason) for _, d, r in list(self.receipts) for u in r.unread}

    def close(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()
