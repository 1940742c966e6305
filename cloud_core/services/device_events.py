"""Device events consumer: keeps each device's presence, heartbeat and reported config on its
``devices`` row from its ``status``, ``health`` and ``config/reported`` messages, and appends the
firmware update steps that config reports carry to ``firmware_events`` (a device's firmware history).

Replicas share the work through an MQTT 5 shared subscription (group ``device-events``). Updates
are merged in memory per device and written in one transaction every ``events_flush_interval_s``
(a heartbeat storm costs one UPDATE per device per interval, not one per message). Times are the
cloud's receive time, so device clock errors cannot make a device look alive; a retained status
delivered on (re)subscribe keeps its original time (the device's ``at``) instead.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.engine import Engine

from iot_protocol import (
    Kind,
    ProtocolError,
    Topics,
    decode_config_report,
    decode_health,
    decode_status,
)

from ..broker.client import connect, paho_protocol
from ..core.config import CloudSettings
from ..core.db import session_scope
from ..models import Device
from ..rollouts.models import FirmwareEvent

__all__ = ["DeviceEventsConsumer"]

log = logging.getLogger(__name__)

_KINDS = (Kind.STATUS, Kind.HEALTH, Kind.CONFIG_REPORTED)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class DeviceEventsConsumer:
    """Subscribe, merge, flush. Use as a context manager, or call :meth:`start` / :meth:`stop`.

    Args:
        engine: the metadata database.
        settings: broker URL, service account, topic prefix, flush interval.
        group: shared-subscription group name; replicas in one group split the messages.
    """

    def __init__(self, engine: Engine, settings: CloudSettings, *, group: str = "device-events") -> None:
        self._engine = engine
        self._settings = settings
        self._topics = Topics(settings.topic_prefix)
        self._group = group
        self._pending: dict[str, dict[str, Any]] = {}
        self._firmware: list[FirmwareEvent] = []  # every step kept, in arrival order
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self.malformed = 0

    # -- pure-ish core ---------------------------------------------------------------------------

    def handle(
        self, topic: str, payload: bytes, *, retained: bool = False, received_at: datetime | None = None
    ) -> None:
        """Merge what one message says into the pending update of its device."""
        now = received_at or datetime.now(UTC)
        try:
            device_id, kind = self._topics.parse(topic)
            update: dict[str, Any] = {}
            if kind is Kind.STATUS:
                status = decode_status(payload)
                update["presence"] = status.state
                if not retained:
                    update["presence_at"] = now
                elif status.at is not None:
                    update["presence_at"] = _from_ms(status.at)
            elif kind is Kind.HEALTH:
                health = decode_health(payload)
                doc = health.to_json()
                doc.pop("v", None)
                update.update(last_health_at=now, health=doc, firmware=health.firmware[:64])
            elif kind is Kind.CONFIG_REPORTED:
                report = decode_config_report(payload)
                update.update(
                    reported_config_version=report.version,
                    reported_config_status=report.status,
                    reported_config_error=report.error,
                )
                fw = report.firmware
                if fw is not None:
                    event = FirmwareEvent(
                        device_id=device_id,
                        version=fw.version,
                        state=fw.state,
                        running=fw.running,
                        error=fw.error,
                        config_version=report.version,
                        at=now,
                    )
                    with self._lock:
                        self._firmware.append(event)
            else:
                return
        except ProtocolError as exc:
            self.malformed += 1
            log.warning("malformed device event: %s", exc, extra={"topic": topic, "reason": exc.reason})
            return
        with self._lock:
            self._pending.setdefault(device_id, {}).update(update)

    def flush(self) -> int:
        """Write the pending updates in one transaction; returns how many devices were updated."""
        with self._lock:
            pending, self._pending = self._pending, {}
            firmware, self._firmware = self._firmware, []
        if not pending and not firmware:
            return 0
        written = 0
        try:
            with session_scope(self._engine) as session:
                session.add_all(firmware)
                # rows in id order, as the bridge's last_seen update takes them: no lock-order deadlock
                for device_id, update in sorted(pending.items()):
                    device = session.get(Device, device_id)
                    if device is None:
                        continue
                    for field, value in update.items():
                        setattr(device, field, value)
                    session.add(device)
                    written += 1
        except Exception:
            log.exception("device events not written; retrying at the next flush")
            with self._lock:  # put them back under anything newer that arrived meanwhile
                for device_id, update in pending.items():
                    self._pending[device_id] = {**update, **self._pending.get(device_id, {})}
                self._firmware[:0] = [FirmwareEvent(**e.model_dump(exclude={"id"})) for e in firmware]
            return 0
        return written

    # -- I/O -------------------------------------------------------------------------------------

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.handle(msg.topic, bytes(msg.payload), retained=bool(msg.retain))

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        if not reason.is_failure:
            if self._settings.mqtt_protocol == "5":  # replicas share the load
                client.subscribe([(self._topics.shared(self._group, k), 1) for k in _KINDS])
            else:  # MQTT 3.1.1 has no shared subscriptions: one consumer
                client.subscribe([(self._topics.all_devices(k), 1) for k in _KINDS])

    def _flush_loop(self) -> None:
        while not self._stop.wait(self._settings.events_flush_interval_s):
            self.flush()

    def start(self) -> None:
        s = self._settings
        host, port = s.mqtt_host_port
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=paho_protocol(s.mqtt_protocol))
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self._client = connect(
            host,
            port,
            username=s.mqtt_username,
            password=s.service_password(),
            timeout_s=s.mqtt_timeout_s,
            client=client,
            tls=s.mqtt_tls_context(),
        )
        # connect() restores the previous on_connect, which resubscribes after every reconnect.
        self._flusher = threading.Thread(target=self._flush_loop, name="device-events-flush", daemon=True)
        self._flusher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        self.flush()

    def __enter__(self) -> DeviceEventsConsumer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
