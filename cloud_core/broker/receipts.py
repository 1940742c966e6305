"""Waiting for a device's receipt: the cloud's own MQTT connection subscribes to a device's
``receipts`` topic while someone waits for it (the HTTP ingest route), publishes the device's
telemetry for it, and hands each receipt to the waiters of that device.

The connection is the cloud's service account (it may publish and subscribe anything under the
topic prefix). Subscriptions are made on demand and kept (they are re-made after a reconnect), so a
device that posts over HTTP costs one SUBACK round trip the first time only.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from iot_protocol import ProtocolError, Receipt, Topics, decode_receipt

from .admin import BrokerUnavailable
from .client import connect, paho_protocol, publish_acked

__all__ = ["ReceiptWaiter"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_SUBSCRIPTIONS = 10_000


class _Waiter:
    __slots__ = ("done", "match", "result")

    def __init__(self, match: Callable[[Receipt], Any]) -> None:
        self.match = match
        self.done = threading.Event()
        self.result: Any = None


class ReceiptWaiter:
    """One MQTT connection that publishes telemetry for devices and waits for their receipts."""

    def __init__(
        self,
        host: str,
        port: int,
        topics: Topics,
        *,
        username: str | None,
        password: str | None,
        protocol: str = "5",
        timeout_s: float = 10.0,
    ) -> None:
        self._topics = topics
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._waiters: dict[str, list[_Waiter]] = {}
        self._subscribed: set[str] = set()  # device ids whose receipts topic is subscribed
        self._subacks: dict[int, threading.Event] = {}
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edu-ingest-{uuid.uuid4().hex[:12]}",
            protocol=paho_protocol(protocol),
        )
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_connect = self._on_connect
        self._client = connect(
            host, port, username=username, password=password, timeout_s=timeout_s, client=client, protocol=protocol
        )
        self._client.on_connect = self._on_connect  # connect() restores the previous callback

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # ---- paho callbacks (network thread) -------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            return
        with self._lock:
            topics = [self._topics.receipts(d) for d in self._subscribed]
        if topics:  # a new connection: the broker may have dropped our session
            client.subscribe([(t, 1) for t in topics])

    def _on_subscribe(self, _c: object, _u: object, mid: int, _codes: object, _p: object) -> None:
        with self._lock:
            event = self._subacks.pop(mid, None)
        if event is not None:
            event.set()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            device_id, _ = self._topics.parse(msg.topic)
            receipt = decode_receipt(bytes(msg.payload))
        except ProtocolError:
            return
        with self._lock:
            waiters = list(self._waiters.get(device_id, ()))
        for w in waiters:
            if w.done.is_set():
                continue
            try:
                result = w.match(receipt)
            except Exception:  # a bug in a matcher must not stop paho's thread
                log.exception("receipt matcher failed")
                continue
            if result is not None:
                w.result = result
                w.done.set()

    # ---- use -----------------------------------------------------------------------------------
    def _ensure_subscribed(self, device_id: str) -> None:
        with self._lock:
            if device_id in self._subscribed:
                return
            if len(self._subscribed) >= _MAX_SUBSCRIPTIONS:
                old = self._subscribed.pop()
                self._client.unsubscribe(self._topics.receipts(old))
        event = threading.Event()
        with self._lock:
            rc, mid = self._client.subscribe(self._topics.receipts(device_id), qos=1)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise BrokerUnavailable(f"cannot subscribe to receipts: {mqtt.error_string(rc)}")
            self._subacks[mid] = event
        if not event.wait(self._timeout_s):
            raise BrokerUnavailable(f"no SUBACK for {device_id}'s receipts within {self._timeout_s}s")
        with self._lock:
            self._subscribed.add(device_id)

    def send_and_wait(
        self, device_id: str, token: bytes, match: Callable[[Receipt], T | None], timeout_s: float
    ) -> T | None:
        """Publish ``token`` as ``device_id``'s telemetry (QoS 1, PUBACK awaited) and wait up to
        ``timeout_s`` for a receipt of that device for which ``match`` returns something; returns it,
        or None when none came in time.

        Raises:
            BrokerUnavailable: the broker did not take the subscription or the message.
        """
        self._ensure_subscribed(device_id)
        waiter = _Waiter(match)
        with self._lock:
            self._waiters.setdefault(device_id, []).append(waiter)
        try:
            publish_acked(self._client, self._topics.telemetry(device_id), token, timeout_s=self._timeout_s)
            waiter.done.wait(timeout_s)
            result: T | None = waiter.result
            return result
        finally:
            with self._lock:
                waiters = self._waiters.get(device_id, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._waiters.pop(device_id, None)
