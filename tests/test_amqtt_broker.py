"""The in-process fallback broker enforces the same device rules as Mosquitto with dynamic security."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from cloud_core.broker.amqtt_broker import AmqttAdmin, AmqttBroker
from iot_testing import wait_for

# Deadlines for events (a CONNACK, a SUBACK, a message, the kick), never sleeps: generous, because the
# broker runs in this process and a busy machine can hold its loop for seconds; a pass costs no more.
DEADLINE_S = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[AmqttBroker, AmqttAdmin]]:
    with AmqttBroker(tmp_path, port=_free_port()) as b:
        admin = AmqttAdmin(b)
        admin.ensure_service_account("cloud", "cloud-pw")
        admin.provision_device("dev-a", "a-pw", "edu")
        admin.provision_device("dev-b", "b-pw", "edu")
        yield b, admin


class Peer:
    """A real paho client that records connect results and received messages."""

    def __init__(self, port: int, username: str, password: str) -> None:
        self.results: list[str] = []
        self.messages: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.subacks: dict[int, list[int]] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=username)
        self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.on_subscribe = self._on_subscribe
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        self.results.append(str(rc))
        if str(rc) == "Success":
            self.connected.set()

    def _on_subscribe(self, _c: mqtt.Client, _u: object, mid: int, reasons: list, _p: object) -> None:
        self.subacks[mid] = [int(r.value) for r in reasons]

    def subscribe(self, topic: str) -> list[int]:
        """Subscribe at QoS 1 and wait for the SUBACK; returns its return codes (1 granted, 128 refused)."""
        _, mid = self.client.subscribe(topic, qos=1)
        return wait_for(lambda: self.subacks.get(mid), f"SUBACK for {topic}", DEADLINE_S)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_device_publishes_only_its_own_telemetry(broker: tuple[AmqttBroker, AmqttAdmin]) -> None:
    b, _ = broker
    cloud = Peer(b.port, "cloud", "cloud-pw")
    a = Peer(b.port, "dev-a", "a-pw")
    try:
        assert cloud.connected.wait(DEADLINE_S) and a.connected.wait(DEADLINE_S)
        assert cloud.subscribe("edu/devices/+/telemetry") == [1]
        a.client.publish("edu/devices/dev-b/telemetry", b"forged", qos=1).wait_for_publish(DEADLINE_S)
        a.client.publish("edu/devices/dev-a/telemetry", b"honest", qos=1).wait_for_publish(DEADLINE_S)
        a.client.publish("edu/devices/dev-a/telemetry", b"last", qos=1).wait_for_publish(DEADLINE_S)
        # one publisher, one subscriber, in order: once "last" is here, a forwarded forgery would be too
        wait_for(lambda: len(cloud.messages) >= 2, "the honest messages", DEADLINE_S)
        assert cloud.messages == [("edu/devices/dev-a/telemetry", b"honest"), ("edu/devices/dev-a/telemetry", b"last")]
    finally:
        cloud.close()
        a.close()


def test_device_cannot_read_another_devices_config(broker: tuple[AmqttBroker, AmqttAdmin]) -> None:
    b, _ = broker
    cloud = Peer(b.port, "cloud", "cloud-pw")
    a = Peer(b.port, "dev-a", "a-pw")
    try:
        assert cloud.connected.wait(DEADLINE_S) and a.connected.wait(DEADLINE_S)
        refused = a.subscribe("edu/devices/dev-b/config/desired")
        assert a.subscribe("edu/devices/dev-a/config/desired") == [1]
        cloud.client.publish("edu/devices/dev-b/config/desired", b"for-b", qos=1).wait_for_publish(DEADLINE_S)
        cloud.client.publish("edu/devices/dev-a/config/desired", b"for-a", qos=1).wait_for_publish(DEADLINE_S)
        # one publisher, one subscriber, in order: once "for-a" is here, "for-b" would be too
        wait_for(lambda: a.messages, "dev-a's own config", DEADLINE_S)
        assert a.messages == [("edu/devices/dev-a/config/desired", b"for-a")]
        assert refused == [128]  # the broker says so in the SUBACK, too
    finally:
        cloud.close()
        a.close()


def test_wrong_password_and_anonymous_are_refused(broker: tuple[AmqttBroker, AmqttAdmin]) -> None:
    b, _ = broker
    wrong = Peer(b.port, "dev-a", "nope")
    try:
        wait_for(lambda: wrong.results, "a CONNACK", DEADLINE_S)
        assert wrong.results[0] == "Not authorized"
    finally:
        wrong.close()


def test_deactivate_cuts_live_connection_and_refuses_reconnect(
    broker: tuple[AmqttBroker, AmqttAdmin],
) -> None:
    b, admin = broker
    a = Peer(b.port, "dev-a", "a-pw")
    try:
        assert a.connected.wait(DEADLINE_S)
        admin.deactivate_device("dev-a")
        wait_for(lambda: not a.client.is_connected(), "the kick", DEADLINE_S)
        wait_for(lambda: "Not authorized" in a.results, "the refused reconnect", DEADLINE_S)
    finally:
        a.close()


def test_rotation_refuses_old_password(broker: tuple[AmqttBroker, AmqttAdmin]) -> None:
    b, admin = broker
    admin.rotate_device_password("dev-b", "b-new")
    old = Peer(b.port, "dev-b", "b-pw")
    new = Peer(b.port, "dev-b", "b-new")
    try:
        assert new.connected.wait(DEADLINE_S)
        wait_for(lambda: old.results, "a CONNACK", DEADLINE_S)
        assert old.results[0] == "Not authorized"
    finally:
        old.close()
        new.close()


def test_a_reader_account_receives_only_its_roles_devices_and_cannot_publish(
    broker: tuple[AmqttBroker, AmqttAdmin],
) -> None:
    b, admin = broker
    admin.set_reader_role("edu-edu-user-1", ["edu/devices/dev-a/#"])
    admin.set_reader_account("user:ann", "ann-pw", ["edu-edu-user-1"])
    cloud = Peer(b.port, "cloud", "cloud-pw")
    ann = Peer(b.port, "user:ann", "ann-pw")
    try:
        assert cloud.connected.wait(DEADLINE_S) and ann.connected.wait(DEADLINE_S)
        assert ann.subscribe("edu/devices/dev-a/#") == [1]
        assert ann.subscribe("edu/devices/dev-b/#") == [128]  # not its device
        assert ann.subscribe("edu/devices/#") == [128]
        assert cloud.subscribe("edu/devices/+/telemetry") == [1]
        # acknowledged, so the broker has decided it before the cloud's messages below
        ann.client.publish("edu/devices/dev-a/telemetry", b"from a reader", qos=1).wait_for_publish(DEADLINE_S)
        cloud.client.publish("edu/devices/dev-b/telemetry", b"b", qos=1).wait_for_publish(DEADLINE_S)
        cloud.client.publish("edu/devices/dev-a/telemetry", b"a", qos=1).wait_for_publish(DEADLINE_S)
        # "a" is the cloud's last message: in order after "b" for ann, after the reader's for the cloud
        wait_for(lambda: ("edu/devices/dev-a/telemetry", b"a") in ann.messages, "dev-a's telemetry", DEADLINE_S)
        wait_for(lambda: ("edu/devices/dev-a/telemetry", b"a") in cloud.messages, "the cloud's own", DEADLINE_S)
        assert set(ann.messages) == {("edu/devices/dev-a/telemetry", b"a")}
        assert ("edu/devices/dev-a/telemetry", b"from a reader") not in cloud.messages
        # The role changes: the account now reads dev-b; disabling it refuses it.
        admin.set_reader_role("edu-edu-user-1", ["edu/devices/dev-b/#"])
        assert b.accounts.allowed("user:ann", "edu/devices/dev-b/telemetry", publish=False)
        assert not b.accounts.allowed("user:ann", "edu/devices/dev-a/telemetry", publish=False)
        admin.disable_reader_account("user:ann")
        wait_for(lambda: not ann.client.is_connected(), "the kick", DEADLINE_S)
    finally:
        cloud.close()
        ann.close()
