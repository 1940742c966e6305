"""The broker side of the bridge: a paho-mqtt 2.x MQTT 5 consumer with manual acknowledgement.

Persistent session (clean start off, session expiry), a raised Receive Maximum (the broker sends at
most that many unacknowledged messages: this is the backpressure), and the shared subscription
``$share/<group>/<prefix>/devices/+/telemetry`` so replicas split the load. Registry events and the
broker's ``$SYS`` drop counter are subscribed per replica; devices' status messages through the shared
subscription too (MQTT 5 only: a shared subscription is sent no retained messages), so each last
will (a connection the broker dropped, for example for a packet over its size limit) is counted once.
Received messages are handed over as :class:`Inbound` values; :meth:`MqttConsumer.ack` sends the
PUBACK later, after the durable write.
Acks for messages received on an earlier connection are skipped: the broker redelivers those, and
acking their old packet id could acknowledge a different, newer message.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from iot_protocol import Kind, Topics

from .errors import ConfigError
from .settings import BridgeSettings

__all__ = ["SYS_DROPPED", "Inbound", "MqttConsumer"]

log = logging.getLogger(__name__)

SYS_DROPPED = "$SYS/broker/publish/messages/dropped"
_PUBACK = struct.Struct("!BBH")
_U16 = struct.Struct("!H")


def _varint(n: int) -> bytes:
    """MQTT's variable byte integer (remaining length)."""
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


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
        on_status: Callable[[str, bytes], None] | None = None,
        on_connection: Callable[[bool], None] | None = None,
    ) -> None:
        self._s = settings
        self._topics = topics
        self._on_telemetry = on_telemetry
        self._on_registry_event = on_registry_event
        self._on_sys = on_sys
        self._on_status = on_status
        self._on_connection = on_connection
        self._v5 = settings.mqtt_protocol == "5"
        # MQTT 3.1.1 (the amqtt fallback broker) has no shared subscriptions: one replica only.
        self._filter = (
            topics.shared(settings.share_group, Kind.TELEMETRY) if self._v5 else topics.all_devices(Kind.TELEMETRY)
        )
        self._registry = topics.registry_events()
        self._status = topics.shared(settings.share_group, Kind.STATUS) if self._v5 else None
        self._status_suffix = "/" + Kind.STATUS.value
        self.epoch = 0
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.last_error: str | None = None
        c = _LeanClient(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=True,
            clean_session=None if self._v5 else False,
        )
        if settings.mqtt_username:
            pw = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
            c.username_pw_set(settings.mqtt_username, pw)
        # Receipts: no client-side inflight cap (paho scans its whole queue per PUBACK when capped).
        c.max_inflight_messages_set(0)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(0.2, 5)  # type: ignore[arg-type]  # paho accepts float seconds
        c.on_connect = self._connected
        c.on_disconnect = self._disconnected
        c.on_raw_publish = self._message
        c.on_subscribe = self._subscribed  # type: ignore[assignment]
        if settings.mqtt_tls:
            from iot_protocol.tls import client_context

            try:
                c.tls_set_context(
                    client_context(
                        settings.tls_ca_file, cert_file=settings.tls_client_cert, key_file=settings.tls_client_key
                    )
                )
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        c.on_connect_error = self._connect_failed
        self._client = c

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self._s.session_expiry_s
            props.ReceiveMaximum = self._s.receive_maximum
            self._client.connect_async(
                self._s.mqtt_host, self._s.mqtt_port, self._s.keepalive_s, clean_start=False, properties=props
            )
        else:  # persistent session via clean_session=False, set on the client
            self._client.connect_async(self._s.mqtt_host, self._s.mqtt_port, self._s.keepalive_s)
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

    def ack_many(self, msgs: list[Inbound]) -> int:
        """PUBACK ``msgs`` (in order) as one write: one wake-up of the network thread and one
        syscall for a whole unit instead of two per message. Returns how many were acknowledged.

        Relies on paho 2.x's packet queue (``_packet_queue``), which paho itself uses for PUBACKs;
        a reconnect clears that queue, so a PUBACK can never reach a newer connection by mistake.
        """
        epoch = self.epoch
        if not self.connected.is_set():
            return 0
        mids = [m.mid for m in msgs if m.epoch == epoch]
        if not mids:
            return 0
        blob = b"".join([_PUBACK.pack(0x40, 2, mid) for mid in mids])
        self._client._packet_queue(0x40, blob, 0, 1)
        return len(mids)

    def publish_many(self, messages: list[tuple[str, bytes]]) -> int:
        """Publish ``messages`` at QoS 1 as one write (receipts: one per device per flush). Returns how
        many were queued: none while disconnected.

        paho's ``publish`` costs a message-info object, topic checks and a wake-up of the network
        thread per message, and its PUBACK handling parses MQTT 5 properties; for advisory messages
        (a lost receipt only makes the device resend, and the resend is receipted again) none of
        that tracking is needed. Packet ids come from paho's own counter, so they never collide with
        a message paho tracks; the broker's PUBACKs for them are ignored (see _LeanClient)."""
        if not messages or not self.connected.is_set():
            return 0
        c = self._client
        v5 = self._v5
        parts = []
        for topic, payload in messages:
            t = topic.encode()
            body = b"".join((_U16.pack(len(t)), t, _U16.pack(c._mid_generate()), b"\0" if v5 else b"", payload))
            parts.append(b"\x32" + _varint(len(body)) + body)
        c._packet_queue(0x30, b"".join(parts), 0, 1)
        return len(messages)

    # ---- paho callbacks (network thread) -------------------------------------------------------
    def _connected(self, client: mqtt.Client, _ud: object, flags: mqtt.ConnectFlags, rc: object, _p: object) -> None:
        if getattr(rc, "is_failure", False):
            self.last_error = f"broker refused the connection: {rc}"
            log.error(self.last_error)
            return
        self.epoch += 1
        self.last_error = None
        self.connected.set()
        if self._on_connection is not None:
            self._on_connection(True)
        log.info(
            "connected to %s:%s (session present: %s)", self._s.mqtt_host, self._s.mqtt_port, flags.session_present
        )

        def opts(qos: int) -> SubscribeOptions | int:
            return SubscribeOptions(qos=qos) if self._v5 else qos

        subs = [(self._filter, opts(1)), (self._registry, opts(1))]
        if self._on_sys is not None and self._s.sys_topics:
            subs.append((SYS_DROPPED, opts(0)))
        if self._on_status is not None and self._status is not None:
            # retained statuses (old wills) are not news: never sent at subscribe time
            subs.append((self._status, SubscribeOptions(qos=0, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)))
        client.subscribe(subs)  # type: ignore[arg-type]

    def _connect_failed(self, exc: BaseException) -> None:
        """A connection attempt failed before CONNACK; paho retries. A TLS failure needs a person (a
        wrong CA, an expired certificate, a wrong name): say which once, in one line, and keep it for /ready."""
        from iot_protocol.tls import describe_tls_error, is_tls_error

        s = self._s
        if is_tls_error(exc):
            why = describe_tls_error(exc, s.mqtt_host, s.mqtt_port, s.tls_ca_file)
        else:
            why = f"cannot reach the broker at {s.mqtt_host}:{s.mqtt_port}: {exc}"
        if why != self.last_error:
            (log.error if is_tls_error(exc) else log.warning)(why)
        self.last_error = why

    def _subscribed(self, _c: mqtt.Client, _ud: object, _mid: int, codes: list[object], _p: object) -> None:
        failed = [str(c) for c in codes[:2] if getattr(c, "is_failure", False)]
        if failed:  # the telemetry or registry subscription was refused (ACL)
            self.last_error = f"subscription refused: {failed}"
            log.error(self.last_error)
        elif any(getattr(c, "is_failure", False) for c in codes[2:]):
            log.warning("no access to $SYS or to devices' status: broker drops or device disconnects not exported")
        if not any(getattr(c, "is_failure", False) for c in codes[:1]):
            self.subscribed.set()

    def _disconnected(self, _c: mqtt.Client, _ud: object, _f: object, rc: object, _p: object) -> None:
        self.epoch += 1  # messages of the lost connection are never acked: the broker redelivers them
        self.connected.clear()
        self.subscribed.clear()
        if self._on_connection is not None:
            self._on_connection(False)
        if getattr(rc, "is_failure", True):
            log.warning("disconnected from broker: %s", rc)
        else:
            log.info("disconnected from broker: %s", rc)

    def _message(self, topic_raw: bytes, mid: int, qos: int, payload: bytes) -> None:
        topic = topic_raw.decode("utf-8", "replace")  # a non-UTF-8 topic must not raise here
        try:
            if topic.startswith("$SYS/"):
                if self._on_sys is not None:
                    self._on_sys(topic, payload)
                return
            if topic.endswith(self._status_suffix):
                if self._on_status is not None:
                    self._on_status(topic, payload)
                if qos:
                    self._client.ack(mid, qos)
                return
            if topic == self._registry:
                try:
                    self._on_registry_event(payload)
                finally:
                    if qos:
                        self._client.ack(mid, qos)
                return
            if qos == 0:  # nothing to acknowledge; still processed
                self._on_telemetry(Inbound(0, -1, topic, payload, time.time()))
                return
            self._on_telemetry(Inbound(mid, self.epoch, topic, payload, time.time()))
        except Exception:  # a bug; the message stays unacknowledged, the network thread lives on
            log.exception("error handling a message on %s", topic[:200])


_RECV_CHUNK = 256 * 1024


class _LeanClient(mqtt.Client):
    """paho's client with a lean receive path. The bridge needs topic, packet id, QoS and payload, not
    an MQTTMessage with parsed MQTT 5 properties (paho's Properties cost more CPU than the rest of the
    packet handling), and it handles up to 1000 packets per wake-up of the network loop instead of
    paho's one. Reads are buffered: paho asks the socket for one byte of command, one per length byte
    and then the rest, three or more system calls per message; here one ``recv`` of up to 256 KiB
    serves hundreds of messages (plain TCP only; TLS keeps paho's reads), and the complete QoS 0/1
    PUBLISH packets in that buffer are parsed in place (``_publishes_from_buffer``) without paho's
    per-packet state. Anything else (CONNACK, SUBACK, PUBACK, PINGRESP, QoS 2, a packet split across
    reads) goes through paho's own ``_packet_read``, which reads from the same buffer. Overrides paho
    2.x internals (``_handle_publish``, ``loop_read``, ``_sock_recv``, ``_sock_close``,
    ``_handle_pubackcomp``; paho is pinned < 3)."""

    on_raw_publish: Callable[[bytes, int, int, bytes], None]
    on_connect_error: Callable[[BaseException], None] | None = None
    _rbuf = b""  # bytes received and not yet handed to paho
    _rpos = 0
    _refill = True  # False once a wake-up has handled its share: the rest waits for the next select

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        self._refill = True
        handled = 0
        while True:
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            if self._in_packet["command"] == 0 and self._rpos < len(self._rbuf):
                n = self._publishes_from_buffer()
                if n:
                    handled += n
                    if handled >= 1000:
                        self._refill = False
                    continue
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            handled += 1
            if handled >= 1000:
                # Let the loop write (acks, receipts) between wake-ups; what is buffered is still
                # handled first (select cannot see it), then reading stops at the buffer's end.
                self._refill = False

    def _publishes_from_buffer(self) -> int:
        """Hand over the complete QoS 0/1 PUBLISH packets at the start of the receive buffer; stop at
        the first other or incomplete packet (paho's ``_packet_read`` takes it). Returns how many."""
        buf, pos, end = self._rbuf, self._rpos, len(self._rbuf)
        v5 = self._protocol == mqtt.MQTTv5
        deliver = self.on_raw_publish
        n = 0
        while pos < end:
            cmd = buf[pos]
            qos = (cmd >> 1) & 3
            if cmd >> 4 != 3 or qos > 1:
                break
            remaining = _read_varint(buf, pos + 1, end)
            if remaining is None:
                break  # cut by the buffer's end (or malformed): paho's reader decides
            length, p = remaining
            if p + length > end:
                break
            parsed = _parse_publish(buf, p, p + length, qos, v5)
            if parsed is None:
                break  # malformed: paho's reader reports it
            pos = self._rpos = p + length
            deliver(*parsed)
            n += 1
        if n:
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()
        return n

    def _sock_recv(self, bufsize: int) -> bytes:
        pos = self._rpos
        buf = self._rbuf
        if pos >= len(buf):
            if self._ssl or self._sock is None:
                return super()._sock_recv(bufsize)
            if not self._refill:
                raise BlockingIOError
            buf = self._sock.recv(_RECV_CHUNK)  # BlockingIOError / OSError reach paho as before
            if not buf:
                return buf  # the broker closed the connection
            self._rbuf, pos = buf, 0
        end = pos + bufsize
        self._rpos = end
        return buf[pos:end]

    def reconnect(self) -> MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as exc:  # paho's loop retries; the consumer says why it failed
            if self.on_connect_error is not None:
                self.on_connect_error(exc)
            raise

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        if not self._out_messages:  # the PUBACK of a publish_many message: nothing tracks it
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._handle_pubackcomp(cmd)

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0  # bytes of a lost connection never reach the next one
        super()._sock_close()

    def _handle_publish(self) -> MQTTErrorCode:
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if qos == 2:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        parsed = _parse_publish(packet, 0, len(packet), qos, self._protocol == mqtt.MQTTv5)
        if parsed is None:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        self.on_raw_publish(*parsed)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


def _read_varint(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int] | None:
    """MQTT's variable byte integer at ``buf[pos:end]``: (value, position after it), or None when
    ``end`` cuts it or it runs past the 4 bytes MQTT allows."""
    value, shift = 0, 0
    while pos < end and shift <= 21:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos
    return None


def _parse_publish(
    buf: bytes | bytearray, start: int, end: int, qos: int, v5: bool
) -> tuple[bytes, int, int, bytes] | None:
    """(topic, packet id, qos, payload) of the PUBLISH packet body ``buf[start:end]`` (after the fixed
    header), or None when it is malformed. MQTT 5 properties are skipped, not parsed."""
    if end - start < 2:
        return None
    pos = start + 2 + ((buf[start] << 8) | buf[start + 1])
    topic = bytes(buf[start + 2 : pos])
    mid = 0
    if qos:
        if pos + 2 > end:
            return None
        mid = (buf[pos] << 8) | buf[pos + 1]
        pos += 2
    if v5:  # the properties: a variable byte integer length, then them
        props = _read_varint(buf, pos, end)
        if props is None:
            return None
        length, pos = props
        pos += length
    if pos > end:
        return None
    return topic, mid, qos, bytes(buf[pos:end])
