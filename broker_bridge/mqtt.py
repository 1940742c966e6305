"""The broker side of the bridge: a paho-mqtt 2.x MQTT 5 consumer with manual acknowledgement.

Persistent session (clean start off, session expiry), a raised Receive Maximum (the broker sends at
most that many unacknowledged messages: this is the backpressure), and the shared subscription
``$share/<group>/<prefix>/devices/+/telemetry`` so replicas split the load. Registry events and the
broker's ``$SYS`` drop counter are subscribed per replica. Received messages are handed over as
:class:`Inbound` values; :meth:`MqttConsumer.ack` sends the PUBACK later, after the durable write.
Acks for messages received on an earlier connection are skipped: the broker redelivers those, and
acking their old packet id could acknowledge a different, newer message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from iot_protocol import Kind, Topics

from .settings import BridgeSettings

__all__ = ["SYS_DROPPED", "Inbound", "MqttConsumer"]

log = logging.getLogger(__name__)

SYS_DROPPED = "$SYS/broker/publish/messages/dropped"


@dataclass(slots=True)
class Inbound:
    """One received telemetry message, not yet acknowledged."""

    mid: int
    epoch: int
    topic: str
    payload: bytes
    received: float  # wall clock, seconds


class MqttConsumer:
    """Owns the paho client and its network thread."""

    def __init__(
        self,
        settings: BridgeSettings,
        topics: Topics,
        *,
        on_telemetry: Callable[[Inbound], None],
        on_registry_event: Callable[[bytes], None],
        on_sys: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self._s = settings
        self._topics = topics
        self._on_telemetry = on_telemetry
        self._on_registry_event = on_registry_event
        self._on_sys = on_sys
        self._filter = topics.shared(settings.share_group, Kind.TELEMETRY)
        self._registry = topics.registry_events()
        self.epoch = 0
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.last_error: str | None = None
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        if settings.mqtt_username:
            pw = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
            c.username_pw_set(settings.mqtt_username, pw)
        c.max_inflight_messages_set(1000)  # outgoing receipts
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(0.2, 5)
        c.on_connect = self._connected
        c.on_disconnect = self._disconnected
        c.on_message = self._message
        c.on_subscribe = self._subscribed
        self._client = c

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._s.session_expiry_s
        props.ReceiveMaximum = self._s.receive_maximum
        self._client.connect_async(
            self._s.mqtt_host, self._s.mqtt_port, self._s.keepalive_s, clean_start=False, properties=props
        )
        self._client.loop_start()

    def stop(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()

    # ---- used by the writer --------------------------------------------------------------------
    def ack(self, msg: Inbound) -> bool:
        """PUBACK ``msg`` if it came on the current connection; False when skipped."""
        if msg.epoch != self.epoch or not self.connected.is_set():
            return False
        return self._client.ack(msg.mid, 1) == mqtt.MQTT_ERR_SUCCESS

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self._client.publish(topic, payload, qos=qos)

    # ---- paho callbacks (network thread) -------------------------------------------------------
    def _connected(self, client: mqtt.Client, _ud: object, flags: mqtt.ConnectFlags, rc: object, _p: object) -> None:
        if getattr(rc, "is_failure", False):
            self.last_error = f"broker refused the connection: {rc}"
            log.error(self.last_error)
            return
        self.epoch += 1
        self.last_error = None
        self.connected.set()
        log.info("connected to %s:%s (session present: %s)", self._s.mqtt_host, self._s.mqtt_port,
                 flags.session_present)
        subs = [(self._filter, SubscribeOptions(qos=1)), (self._registry, SubscribeOptions(qos=1))]
        if self._on_sys is not None and self._s.sys_topics:
            subs.append((SYS_DROPPED, SubscribeOptions(qos=0)))
        client.subscribe(subs)

    def _subscribed(self, _c: mqtt.Client, _ud: object, _mid: int, codes: list[object], _p: object) -> None:
        failed = [str(c) for c in codes if getattr(c, "is_failure", False)]
        if failed[:2]:  # the telemetry or registry subscription was refused (ACL)
            self.last_error = f"subscription refused: {failed}"
            log.error(self.last_error)
        if not any(getattr(c, "is_failure", False) for c in codes[:1]):
            self.subscribed.set()

    def _disconnected(self, _c: mqtt.Client, _ud: object, _f: object, rc: object, _p: object) -> None:
        self.connected.clear()
        self.subscribed.clear()
        log.warning("disconnected from broker: %s", rc)

    def _message(self, client: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        raw_topic: bytes = msg._topic  # bytes: a non-UTF-8 topic must not raise here
        topic = raw_topic.decode("utf-8", "replace")
        if topic.startswith("$SYS/"):
            if self._on_sys is not None:
                self._on_sys(topic, msg.payload)
            return
        if topic == self._registry:
            try:
                self._on_registry_event(msg.payload)
            finally:
                if msg.qos:
                    client.ack(msg.mid, msg.qos)
            return
        if msg.qos == 0:  # nothing to acknowledge; still processed
            self._on_telemetry(Inbound(0, -1, topic, msg.payload, time.time()))
            return
        self._on_telemetry(Inbound(msg.mid, self.epoch, topic, msg.payload, time.time()))
