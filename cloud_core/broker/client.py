"""Connecting the cloud's paho-mqtt clients (MQTT 5, network loop in a thread) and publishing with a
wait for the broker's acknowledgement."""

from __future__ import annotations

import ssl
import threading
import uuid
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .admin import BrokerUnavailable

__all__ = ["MqttPublisher", "Publisher", "connect", "paho_protocol", "publish_acked"]


def paho_protocol(version: str) -> int:
    """paho's constant for an MQTT version setting ("5" or "3.1.1")."""
    return mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311


def connect(
    host: str,
    port: int,
    *,
    username: str | None,
    password: str | None,
    client_id: str | None = None,
    timeout_s: float = 10.0,
    keepalive: int = 30,
    client: mqtt.Client | None = None,
    protocol: str = "5",
    tls: ssl.SSLContext | None = None,
) -> mqtt.Client:
    """A client connected to ``host:port`` with its loop running; raises BrokerUnavailable on refusal,
    timeout or a TLS failure (one line saying which). Pass ``client`` to connect one that already has
    its callbacks set, ``tls`` to connect over TLS."""
    if client is None:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edu-cloud-{uuid.uuid4().hex[:12]}",
            protocol=paho_protocol(protocol),
        )
    if username is not None:
        client.username_pw_set(username, password)
    connected = threading.Event()
    result: list[object] = []
    previous = client.on_connect

    def on_connect(c: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        result.append(reason)
        connected.set()
        if previous is not None:
            previous(c, userdata, flags, reason, props)  # type: ignore[call-arg,arg-type]  # v2 signature

    client.on_connect = on_connect
    if tls is not None:
        client.tls_set_context(tls)
    try:
        client.connect(host, port, keepalive=keepalive)
    except OSError as exc:
        from iot_protocol.tls import describe_tls_error, is_tls_error

        if is_tls_error(exc):
            raise BrokerUnavailable(describe_tls_error(exc, host, port)) from None
        raise BrokerUnavailable(f"cannot reach the MQTT broker at {host}:{port}: {exc}") from None
    client.loop_start()
    if not connected.wait(timeout_s):
        client.loop_stop()
        client.disconnect()
        raise BrokerUnavailable(f"no CONNACK from the MQTT broker at {host}:{port} within {timeout_s}s")
    reason = result[0]
    if getattr(reason, "is_failure", False):
        client.loop_stop()
        client.disconnect()
        raise BrokerUnavailable(f"the MQTT broker at {host}:{port} refused {username!r}: {reason}")
    client.on_connect = previous
    return client


def publish_acked(
    client: mqtt.Client,
    topic: str,
    payload: bytes,
    *,
    qos: int = 1,
    retain: bool = False,
    timeout_s: float = 10.0,
) -> None:
    """Publish and wait for the PUBACK; raises BrokerUnavailable if it does not come in time."""
    info = client.publish(topic, payload, qos=qos, retain=retain)
    if info.rc != mqtt.MQTT_ERR_SUCCESS:
        raise BrokerUnavailable(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
    try:
        info.wait_for_publish(timeout_s)
    except (RuntimeError, ValueError) as exc:
        raise BrokerUnavailable(f"publish to {topic} failed: {exc}") from None
    if not info.is_published():
        raise BrokerUnavailable(f"no PUBACK for {topic} within {timeout_s}s")


class Publisher(Protocol):
    """Something that publishes a message and returns once the broker has it (QoS 1)."""

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None: ...


class MqttPublisher:
    """:class:`Publisher` over a connected paho client, waiting for each PUBACK."""

    def __init__(self, client: mqtt.Client, *, timeout_s: float = 10.0) -> None:
        self.client = client
        self._timeout_s = timeout_s

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        publish_acked(self.client, topic, payload, qos=1, retain=retain, timeout_s=self._timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
