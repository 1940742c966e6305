"""The edge agent: a pure :class:`Pipeline` (sample -> buffer -> next batch -> seal -> receipt,
config apply, health) and the :class:`Agent` that runs it with threads around paho-mqtt.

Threads: the sampler (reads every sensor each sampling interval, commits to the buffer), the
publisher (seals and publishes batches, resends unreceipted ones after the receipt timeout,
heartbeats), the network thread (connect, paho's loop, reconnect with exponential backoff and
jitter) and the identity watcher (a re-enrollment into the identity dir is taken up without a
restart: unreceipted batches are re-signed with the new key, the client reconnects with the new
credentials). The simulator drives many pipelines without any of these threads.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import os
import random
import signal
import sys
import threading
import time
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from iot_protocol import jws
from iot_protocol.errors import ProtocolError
from iot_protocol.messages import ConfigReport, Health, Reading, Receipt, Status, decode_receipt, encode
from iot_protocol.settings import DeviceSettings, parse_settings
from iot_protocol.signing import open_config
from iot_protocol.topics import Topics

from . import FIRMWARE_VERSION
from .buffer import Buffer, PendingBatch
from .errors import SensorSetupError, SettingsError
from .sensors.base import Sensor, SensorError

if TYPE_CHECKING:
    from iot_protocol.keys import SigningKey

    from .config import AgentSettings
    from .identity import Identity

__all__ = ["Agent", "Pipeline", "Runtime", "build_sensor", "build_sensors", "open_buffer", "setup_logging"]

log = logging.getLogger("edge_agent")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------------------- sensors
def build_sensor(spec: Any) -> Sensor:
    """The sensor for one ``[[sensors]]`` table of the settings."""
    kind = spec.type
    if kind == "simulated":
        from .sensors.simulated import SimulatedSensor

        return SimulatedSensor(
            sensor_type=spec.sensor_type,
            fields=spec.fields,
            seed=spec.seed,
            noise=spec.noise,
            fail_every=spec.fail_every,
        )
    if kind == "cpu_temp":
        from .sensors.cpu_temp import CpuTempSensor

        return CpuTempSensor(path=spec.path, sensor_type=spec.sensor_type)
    if kind == "command":
        from .sensors.command import CommandSensor

        return CommandSensor(command=spec.command, sensor_type=spec.sensor_type, timeout_s=spec.timeout_s)
    if kind == "bme280":
        from .sensors.bme280 import Bme280Sensor

        return Bme280Sensor(bus=spec.bus, address=spec.address, sensor_type=spec.sensor_type)
    raise SensorSetupError(f"unknown sensor type {kind!r}")


def build_sensors(settings: AgentSettings) -> list[Sensor]:
    return [build_sensor(s) for s in settings.sensors]


def open_buffer(settings: AgentSettings, *, readonly: bool = False) -> Buffer:
    return Buffer(
        settings.buffer_path,
        max_rows=settings.buffer_max_rows,
        max_bytes=settings.buffer_max_bytes,
        overflow=settings.overflow_policy,
        synchronous=settings.buffer_synchronous,
        keep_produced_log=settings.keep_produced_log,
        readonly=readonly,
    )


# ---------------------------------------------------------------------------------------- pipeline
@dataclass(frozen=True, slots=True)
class Runtime:
    """The knobs a signed desired config may change while the agent runs."""

    sampling_interval_s: float = 1.0
    transmission_interval_s: float = 5.0
    batch_max_readings: int = 100
    heartbeat_interval_s: float = 60.0
    calibration_offsets: dict[str, float] = field(default_factory=dict)
    low_power: bool = False
    config_version: int = 0

    @classmethod
    def from_settings(cls, s: AgentSettings) -> Runtime:
        return cls(s.sampling_interval_s, s.transmission_interval_s, s.batch_max_readings, s.heartbeat_interval_s)

    @property
    def effective_heartbeat_s(self) -> float:
        return self.heartbeat_interval_s * (4 if self.low_power else 1)


_CONFIG_STATE = "applied_config"


class Pipeline:
    """Everything the agent does except networking and threads; every method is thread-safe
    enough for one sampler and one publisher (the buffer serialises its own writes)."""

    def __init__(
        self,
        *,
        device_id: str,
        key: SigningKey,
        buffer: Buffer,
        sensors: Sequence[Sensor],
        runtime: Runtime | None = None,
        cloud_public_key: bytes | None = None,
        max_inflight: int = 8,
        receipt_timeout_s: float = 30.0,
        max_unanswered_sends: int = 5,
    ) -> None:
        self.device_id = device_id
        self.key = key
        self.buffer = buffer
        self.sensors = list(sensors)
        self.cloud_public_key = cloud_public_key
        self.max_inflight = max_inflight
        self.receipt_timeout_s = receipt_timeout_s
        self.max_unanswered_sends = max_unanswered_sends
        self.runtime = runtime or Runtime()
        # A desired config is complete (docs/protocol.md §7): it applies over these file settings, so a
        # setting it leaves out (a rollback removing it) returns to the file's value.
        self._base_runtime = self.runtime
        self.desired: DeviceSettings | None = None  # the applied config's settings (firmware target, ...)
        saved = buffer.get_state(_CONFIG_STATE)
        if saved:  # the applied config survives restarts
            self.desired = parse_settings(saved["settings"])
            self.runtime = _merge(self._base_runtime, self.desired, saved["version"])
        self._last_ts: dict[str, int] = {}
        self._failing: dict[str, str] = {}
        self._lock = threading.Lock()
        # seq -> (batch, monotonic time of the last send; -inf = send at the next chance)
        self._inflight: dict[int, tuple[PendingBatch, float]] = {
            b.seq: (b, float("-inf")) for b in buffer.unreceipted()
        }
        self._fresh_after = buffer.max_id()  # readings up to here are backlog
        # Bounded resends (docs/protocol.md, Receipts). Every send gets a number; per in-flight seq:
        # (number of its last send, or None once that send was counted; sends that went unanswered
        # while a batch sent after them was answered). _answered_upto: the latest send answered.
        self._sends = 0
        self._answered_upto = 0
        self._answers: dict[int, tuple[int | None, int]] = {}
        self.sensor_errors = 0
        self.latest: dict[str, float] = {}
        self.last_stored_seq = 0  # the highest seq a receipt named as stored (an OTA health check waits for it)

    # -- sample -> buffer
    def sample(self, now_ms: int | None = None) -> list[Reading]:
        """Read every sensor once and commit the readings; a failing sensor gives a flagged reading."""
        now = _now_ms() if now_ms is None else now_ms
        offsets = self.runtime.calibration_offsets
        out: list[Reading] = []
        for sensor in self.sensors:
            st = sensor.sensor_type
            ts = max(now, self._last_ts.get(st, 0) + 1)  # storage keys on ts: never repeat one
            self._last_ts[st] = ts
            try:
                s = sensor.read(ts)
            except SensorError as exc:
                self.sensor_errors += 1
                if self._failing.get(st) != exc.flag:  # log state changes, not every sample
                    log.warning("sensor read failed", extra={"sensor_type": st, "flag": exc.flag, "error": str(exc)})
                self._failing[st] = exc.flag
                out.append(Reading(ts, st, {"quality_score": 0.0}, 0.0, (exc.flag,)))
                continue
            except Exception as exc:  # a sensor bug must not stop the other sensors
                self.sensor_errors += 1
                log.exception("sensor crashed", extra={"sensor_type": st})
                out.append(Reading(ts, st, {"quality_score": 0.0}, 0.0, (f"crash:{type(exc).__name__}"[:64],)))
                continue
            if self._failing.pop(st, None) is not None:
                log.info("sensor recovered", extra={"sensor_type": st})
            values = dict(s.values)
            for name, off in offsets.items():
                if name in values:
                    values[name] = round(values[name] + off, 6)
            self.latest.update(values)
            out.append(Reading(ts, st, values, s.quality, s.flags))
        self.buffer.add(out)
        return out

    # -- buffer -> batches to send
    def plan(self, now_mono: float, *, fresh: bool = True, now_ms: int | None = None) -> list[PendingBatch]:
        """Batches to publish now, in this order: due resends (oldest seq first), one batch of the
        readings taken since the last cycle (``fresh``, so a long backlog never starves live data),
        then backlog batches in production order; never more than ``max_inflight`` unreceipted.

        A batch due for its resend after ``max_unanswered_sends`` sends that each went unanswered while
        the cloud answered a batch sent after it is quarantined instead (the cloud cannot verify it:
        resending cannot help; an outage, when nothing is answered, never counts)."""
        now = _now_ms() if now_ms is None else now_ms
        n = self.runtime.batch_max_readings
        with self._lock:
            due = []
            for b, sent in sorted(self._inflight.values(), key=lambda x: x[0].seq):
                if now_mono - sent < self.receipt_timeout_s:
                    continue
                send_no, unanswered = self._answers.get(b.seq, (None, 0))
                if send_no is not None and self._answered_upto > send_no:  # a later send was answered
                    unanswered += 1
                    self._answers[b.seq] = (None, unanswered)
                if unanswered >= self.max_unanswered_sends:
                    self._quarantine(b, unanswered, now)
                    continue
                due.append(b)
            new: list[PendingBatch] = []
            if fresh and len(self._inflight) < self.max_inflight:
                b = self.buffer.next_batch(
                    self.device_id, self.key, max_readings=n, now_ms=now, after_id=self._fresh_after
                )
                self._fresh_after = self.buffer.last_id
                if b is not None:
                    new.append(b)
                    self._inflight[b.seq] = (b, float("-inf"))
            while len(self._inflight) < self.max_inflight:
                b = self.buffer.next_batch(self.device_id, self.key, max_readings=n, now_ms=now)
                if b is None:
                    break
                new.append(b)
                self._inflight[b.seq] = (b, float("-inf"))
        return due + new

    def rekey(self, key: SigningKey, cloud_public_key: bytes | None = None) -> int:
        """Adopt a new identity's signing key (rotation or re-enrollment). Every sealed batch still
        waiting for its receipt is re-signed under it (same seq, batch id and readings: the readings are
        honest, only the old key is no longer accepted) and goes out again at the next cycle; readings
        not yet sealed are sealed with the new key. Returns how many batches were re-signed."""
        with self._lock:
            n = self.buffer.reseal(key)
            self.key = key
            if cloud_public_key is not None:
                self.cloud_public_key = cloud_public_key
            self._inflight = {b.seq: (b, float("-inf")) for b in self.buffer.unreceipted()}
            self._answers.clear()  # re-signed batches start their unanswered-send count afresh
        return n

    def _quarantine(self, b: PendingBatch, sends: int, now_ms: int) -> None:
        """(With the lock.) Set ``b`` aside: never receipted in ``sends`` sends while others were."""
        self._inflight.pop(b.seq, None)
        self._answers.pop(b.seq, None)
        n = self.buffer.quarantine(b.seq, "no_receipt", now_ms)
        log.warning(
            "batch quarantined: the cloud never receipted it",
            extra={"seq": b.seq, "readings": n, "sends": sends},
        )

    def mark_sent(self, seq: int, now_mono: float) -> None:
        with self._lock:
            entry = self._inflight.get(seq)
            if entry is not None:
                self._inflight[seq] = (entry[0], now_mono)
                self._sends += 1
                _, unanswered = self._answers.get(seq, (None, 0))
                self._answers[seq] = (self._sends, unanswered)

    def resend_all(self) -> None:
        """After a reconnect: every unreceipted batch goes out again at the next cycle."""
        with self._lock:
            self._inflight = {s: (b, float("-inf")) for s, (b, _) in self._inflight.items()}

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def next_resend_in(self, now_mono: float) -> float | None:
        with self._lock:
            if not self._inflight:
                return None
            oldest = min(sent for _, sent in self._inflight.values())
        return max(0.0, oldest + self.receipt_timeout_s - now_mono)

    # -- receipts
    def on_receipt(self, payload: bytes, now_mono: float | None = None) -> int:
        """Apply a receipt message (docs/protocol.md, Receipts); returns readings deleted. A malformed
        receipt is logged and ignored.

        ``stored`` and ``rejected`` batches are deleted (the readings a receipt names as rejected are
        counted as rejected); ``unread`` ones too, found by the SHA-256 of their exact bytes; a
        ``retry`` is resent, identical, after its ``after_ms``."""
        try:
            receipt = decode_receipt(payload)
        except ProtocolError as exc:
            log.warning("ignoring malformed receipt", extra={"error": str(exc)})
            return 0
        return self.apply_receipt(receipt, now_mono)

    def apply_receipt(self, receipt: Receipt, now_mono: float | None = None) -> int:
        """:meth:`on_receipt` for a receipt already decoded (the simulator reads it too)."""
        now = time.monotonic() if now_mono is None else now_mono
        rejected = [r.seq for r in receipt.rejected]
        for r in receipt.rejected:
            log.warning("batch rejected by the cloud", extra={"seq": r.seq, "reason": r.reason})
        partly = {o.seq: len(o.rejected) for o in receipt.readings if o.rejected}
        for o in receipt.readings:
            for x in o.rejected:
                log.warning("reading rejected by the cloud", extra={"seq": o.seq, "index": x.index, "reason": x.reason})
        with self._lock:
            if receipt.unread:
                import hashlib  # rare (a receipt naming unreadable tokens): _hashlib maps libcrypto, ~3.5 MB

                unread = {u.sha256: u.reason for u in receipt.unread}
                for seq, (b, _) in self._inflight.items():
                    reason = unread.get(hashlib.sha256(b.token).hexdigest())
                    if reason is not None:
                        rejected.append(seq)
                        log.warning("batch rejected by the cloud", extra={"seq": seq, "reason": reason})
            for seq in (*receipt.stored, *rejected, *(r.seq for r in receipt.retry)):
                send_no = self._answers.get(seq, (None, 0))[0]
                if send_no is not None and send_no > self._answered_upto:
                    self._answered_upto = send_no
            for r in receipt.retry:  # not stored, not final: resend after after_ms, not counted as unanswered
                entry = self._inflight.get(r.seq)
                if entry is not None:
                    self._inflight[r.seq] = (entry[0], now + r.after_ms / 1000 - self.receipt_timeout_s)
                    self._answers[r.seq] = (None, self._answers.get(r.seq, (None, 0))[1])
        deleted = self.buffer.ack(receipt.stored, rejected, rejected_readings=partly)
        if receipt.stored:
            self.last_stored_seq = max(self.last_stored_seq, *receipt.stored)
        with self._lock:
            for s in (*receipt.stored, *rejected):
                self._inflight.pop(s, None)
                self._answers.pop(s, None)
        return deleted

    # -- config
    def apply_config(self, token: bytes, now_ms: int | None = None) -> ConfigReport | None:
        """Verify and apply a desired-config message. Returns the report to publish, or None when
        it is the version already applied (the retained copy, redelivered on every connect)."""
        now = _now_ms() if now_ms is None else now_ms
        applied = self.runtime.config_version
        if self.cloud_public_key is None:
            return ConfigReport(_peek_version(token), "rejected", now, "no cloud public key: enroll again")
        try:
            doc = open_config(token, device_id=self.device_id, cloud_public_key=self.cloud_public_key)
        except ProtocolError as exc:
            log.warning("refused desired config", extra={"reason": exc.reason, "error": str(exc)})
            return ConfigReport(_peek_version(token), "rejected", now, f"{exc.reason}: {exc}")
        if doc.version == applied:
            return None
        if doc.version < applied:
            return ConfigReport(doc.version, "rejected", now, f"older than the applied version {applied}")
        try:
            new = parse_settings(dict(doc.settings))
        except ProtocolError as exc:
            return ConfigReport(doc.version, "rejected", now, str(exc))
        self.buffer.set_state(_CONFIG_STATE, {"version": doc.version, "settings": new.to_dict()})
        self.runtime = _merge(self._base_runtime, new, doc.version)
        self.desired = new
        log.info("applied desired config", extra={"version": doc.version})
        return ConfigReport(doc.version, "applied", now)

    # -- health
    def health(self, uptime_s: float, now_ms: int | None = None) -> Health:
        c = self.buffer.counters
        return Health(
            at=_now_ms() if now_ms is None else now_ms,
            uptime_s=round(uptime_s, 3),
            buffer_depth=self.buffer.depth,
            produced=c["produced"],
            dropped=c["dropped"],
            firmware=FIRMWARE_VERSION,
            config_version=self.runtime.config_version,
            clock_synced=clock_synced(),
            battery=self.latest.get("battery_level"),
            signal=self.latest.get("signal_strength", wifi_signal_dbm()),
            last_seq=c["last_seq"],
            quarantined=c.get("quarantined", 0),
            extra={
                "stored": c["stored"],
                "rejected": c["rejected"],
                "inflight": self.inflight,
                "sensor_errors": self.sensor_errors,
            },
        )

    def close(self) -> None:
        for s in self.sensors:
            with contextlib.suppress(Exception):
                s.close()
        self.buffer.close()


def _merge(rt: Runtime, new: Any, version: int) -> Runtime:
    changes: dict[str, Any] = {"config_version": version}
    for name in (
        "sampling_interval_s",
        "transmission_interval_s",
        "batch_max_readings",
        "heartbeat_interval_s",
        "low_power",
        "calibration_offsets",
    ):
        value = getattr(new, name)
        if value is not None:
            changes[name] = value
    return replace(rt, **changes)


def _peek_version(token: bytes) -> int:
    """The version a refused document claims (unverified; only for the report)."""
    try:
        v = json.loads(jws.decode(token).payload).get("version", 0)
        return v if isinstance(v, int) and v >= 0 else 0
    except Exception:
        return 0


def clock_synced() -> bool:
    """True when the kernel says the clock is NTP-synchronised (systemd-timesyncd or adjtimex)."""
    if os.path.exists("/run/systemd/timesync/synchronized"):
        return True
    try:
        import ctypes

        buf = ctypes.create_string_buffer(256)  # struct timex, modes = 0: read only
        state = ctypes.CDLL(None, use_errno=True).adjtimex(buf)
        return state not in (-1, 5)  # 5 = TIME_ERROR: clock not synchronised
    except Exception:
        return False


def wifi_signal_dbm() -> float | None:
    try:
        with open("/proc/net/wireless") as f:
            lines = f.read().splitlines()[2:]
        return float(lines[0].split()[3].rstrip(".")) if lines else None
    except (OSError, ValueError, IndexError):
        return None


class _NoTlsError(Exception):
    """Never raised: stands for ``ssl``'s exceptions in paho while the agent runs without TLS."""


def _paho(*, tls: bool) -> Any:
    """``paho.mqtt.client``, imported without ``ssl`` while the agent speaks plain MQTT.

    paho imports ``ssl`` and ``hashlib`` (for websockets) at the top whether or not they are used,
    and ``_ssl`` and ``_hashlib`` map libssl and libcrypto: about 4.5 MB of the agent's RSS. So on
    plain MQTT paho is imported with ``import ssl`` and ``import _hashlib`` refused: hashlib then
    uses CPython's built-in hashes (its documented fallback), and paho's ``ssl`` is a stand-in holding
    only the exception classes its socket code names in ``except`` clauses (paho's own ``ssl = None``
    fallback would fail there on the first ``BlockingIOError``). When a later identity or setting asks
    for mqtts, paho gets the real module (it looks ``ssl`` up when it connects).
    """
    mod: Any = sys.modules.get("paho.mqtt.client")
    if mod is None:
        hide = [] if tls else [m for m in ("ssl", "_hashlib") if m not in sys.modules]
        for name in hide:
            sys.modules[name] = None  # type: ignore[assignment]  # "import ssl" raises ImportError
        # paho imports urllib.request (with http.client, email and tempfile: ~1 MB) only for its
        # proxy lookup, which it skips without PySocks: then a stand-in serves its import statement.
        stub = "urllib.request" not in sys.modules and importlib.util.find_spec("socks") is None
        if stub:
            sys.modules["urllib.request"] = types.ModuleType("urllib.request", "paho's import only")
        try:
            mod = importlib.import_module("paho.mqtt.client")
        finally:
            for name in hide:
                del sys.modules[name]
            if stub:
                del sys.modules["urllib.request"]  # enrollment's later import gets the real module
        if mod.ssl is None:
            stand_in = types.ModuleType("ssl", "no TLS: paho's except clauses only")
            for name in ("SSLWantReadError", "SSLWantWriteError", "SSLError", "CertificateError"):
                setattr(stand_in, name, _NoTlsError)
            mod.ssl = stand_in
    if tls and not hasattr(mod.ssl, "SSLContext"):
        import ssl

        mod.ssl = ssl
    return mod


def _identity_stamp(directory: Path) -> tuple[int, int, int] | None:
    """What changes when ``iotctl agent enroll`` writes the identity dir again: its credentials file,
    replaced (a new inode) after the key and the cloud key."""
    from .identity import CREDENTIALS_FILE

    try:
        st = os.stat(Path(directory) / CREDENTIALS_FILE)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------------------------------- logging
class _JsonFormatter(logging.Formatter):
    _skip = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in self._skip})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# ---------------------------------------------------------------------------------------- agent
class Agent:
    """The pipeline plus MQTT: ``start()``, ``stop()``, or ``run_forever()`` until SIGTERM/SIGINT."""

    def __init__(self, settings: AgentSettings, identity: Identity, sensors: Sequence[Sensor] | None = None) -> None:
        self.settings = settings
        self.identity = identity
        self.device_id = identity.device_id
        self.topics = Topics(settings.topic_prefix or identity.topic_prefix)
        self.pipeline = Pipeline(
            device_id=identity.device_id,
            key=identity.key,
            buffer=open_buffer(settings),
            sensors=build_sensors(settings) if sensors is None else sensors,
            runtime=Runtime.from_settings(settings),
            cloud_public_key=identity.cloud_public_key,
            max_inflight=settings.max_inflight_batches,
            receipt_timeout_s=settings.receipt_timeout_s,
            max_unanswered_sends=settings.max_unanswered_sends,
        )
        self._stop = threading.Event()
        self._wake_pub = threading.Event()
        self._wake_sampler = threading.Event()
        self._fresh_due = threading.Event()
        self._connected = threading.Event()
        self._ready = threading.Event()  # connected and subscribed: receipts cannot be missed
        self._wake_net = threading.Event()  # cut the reconnect wait short (stop, new identity)
        self._check_identity = threading.Event()  # SIGHUP: look at the identity dir now
        self._threads: list[threading.Thread] = []
        self._started = time.monotonic()
        self._identity_seen = _identity_stamp(settings.identity_dir)
        self._client = self._make_client()
        self.connects = 0
        self.identity_reloads = 0
        self.restart_requested = False  # an OTA switch: exit with RESTART_EXIT_CODE to be started again
        self.ota: Any = None
        if settings.ota_dir is not None:
            from .ota import Ota

            self.ota = Ota(
                settings=settings,
                device_id=self.device_id,
                key=identity.key,
                identity_dir=settings.identity_dir,
                publish=self._publish_report,
                ready=self.wait_connected,
                seqs=lambda: (self.pipeline.buffer.counters["last_seq"], self.pipeline.last_stored_seq),
                restart=self.request_restart,
            )

    # -- MQTT client
    def _make_client(self) -> Any:
        url = urlsplit(self.settings.mqtt_url or self.identity.mqtt_url)
        if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
            raise SettingsError(
                f"mqtt_url {url.geturl()!r} must be mqtt://host:port or mqtts://host:port", field="mqtt_url"
            )
        mqtt = _paho(tls=url.scheme == "mqtts")
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self._host = url.hostname
        self._port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.identity.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        if self.identity.mqtt_username:
            client.username_pw_set(self.identity.mqtt_username, self.identity.mqtt_password)
        self._tls_ca: Path | None = None
        if url.scheme == "mqtts":
            from iot_protocol.tls import client_context

            s = self.settings
            self._tls_ca = s.tls_ca_file or self.identity.ca_file  # the CA pinned at enrollment
            try:
                client.tls_set_context(
                    client_context(self._tls_ca, cert_file=s.tls_client_cert, key_file=s.tls_client_key)
                )
            except ValueError as exc:
                raise SettingsError(str(exc), field="tls_ca_file") from None
        client.max_inflight_messages_set(max(20, self.settings.max_inflight_batches + 10))
        client.will_set(self.topics.status(self.device_id), encode(Status("offline", reason="lost")), 1, True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._connect_props = Properties(PacketTypes.CONNECT)
        self._connect_props.SessionExpiryInterval = self.settings.session_expiry_s
        return client

    def _on_connect(self, client: Any, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the connection", extra={"reason": str(reason)})
            return
        self.connects += 1
        self._connected.set()
        log.info(
            "connected",
            extra={"broker": f"{self._host}:{self._port}", "session_present": _flags.session_present},
        )
        client.publish(self.topics.status(self.device_id), encode(Status("online", at=_now_ms())), 1, True)
        client.subscribe([(self.topics.receipts(self.device_id), 1), (self.topics.config_desired(self.device_id), 1)])

    def _on_subscribe(self, _c: Any, _ud: Any, _mid: int, reasons: Any, _props: Any) -> None:
        if any(r.is_failure for r in reasons):
            log.error("subscription refused by the broker (ACL?)", extra={"reasons": [str(r) for r in reasons]})
            return
        self.pipeline.resend_all()
        self._ready.set()
        self._wake_pub.set()

    def _on_disconnect(self, _c: Any, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._connected.clear()
        self._ready.clear()
        if not self._stop.is_set():
            log.warning("disconnected", extra={"reason": str(reason)})

    def _on_message(self, client: Any, _ud: Any, msg: Any) -> None:
        try:
            if msg.topic == self.topics.receipts(self.device_id):
                self.pipeline.on_receipt(msg.payload)
                self._wake_pub.set()
            elif msg.topic == self.topics.config_desired(self.device_id) and msg.payload:
                before = self.pipeline.runtime
                report = self.pipeline.apply_config(msg.payload)
                if report is not None:
                    client.publish(self.topics.config_reported(self.device_id), encode(report), 1)
                    if report.status == "applied":
                        self._firmware_desired(report.version)
                if self.pipeline.runtime is not before:
                    self._wake_sampler.set()
                    self._wake_pub.set()
        except Exception:  # never let a bad message kill paho's network thread
            log.exception("failed to handle a message", extra={"topic": msg.topic})

    # -- firmware over the air (edge_agent/ota.py)
    def _publish_report(self, report: ConfigReport) -> None:
        self._client.publish(self.topics.config_reported(self.device_id), encode(report), 1)

    def _firmware_desired(self, config_version: int) -> None:
        target = self.pipeline.desired.firmware if self.pipeline.desired is not None else None
        if target is None:
            return
        if self.ota is not None:
            self.ota.request(target, config_version)
        else:
            from .ota import disabled_report

            self._publish_report(disabled_report(target, config_version))

    def request_restart(self) -> None:
        """Stop, and have the process exit with RESTART_EXIT_CODE (the supervisor starts it again)."""
        self.restart_requested = True
        self._stop.set()

    # -- threads
    def _network_loop(self) -> None:
        s = self.settings
        delay = s.backoff_initial_s
        while not self._stop.is_set():
            connects = self.connects
            try:
                self._client.connect(
                    self._host,
                    self._port,
                    s.mqtt_keepalive_s,
                    clean_start=False,
                    properties=self._connect_props,
                )
                self._client.loop_forever(retry_first_connection=False)
            except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS
                from iot_protocol.tls import describe_tls_error, is_tls_error

                if is_tls_error(exc):  # a certificate problem: retrying alone will not fix it
                    log.error(describe_tls_error(exc, self._host, self._port, self._tls_ca))
                else:
                    log.warning(
                        "cannot reach the broker",
                        extra={"broker": f"{self._host}:{self._port}", "error": str(exc)},
                    )
            self._connected.clear()
            self._ready.clear()
            if self._stop.is_set():
                break
            if self._wake_net.is_set():  # a new identity: connect with it at once
                self._wake_net.clear()
                delay = s.backoff_initial_s
                continue
            if self.connects > connects:
                delay = s.backoff_initial_s  # we were connected: start the backoff afresh
            wait = delay * (1 - s.backoff_jitter * random.random())
            log.info("reconnecting", extra={"in_s": round(wait, 3)})
            if self._wake_net.wait(wait):
                self._wake_net.clear()
                delay = s.backoff_initial_s
                continue
            delay = min(delay * 2, s.backoff_max_s)

    def _sampler_loop(self) -> None:
        next_at = time.monotonic()
        last_at = next_at
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_at:
                try:
                    self.pipeline.sample()
                except Exception:
                    log.exception("sampling failed")
                last_at = next_at if next_at > now - self.pipeline.runtime.sampling_interval_s else now
                next_at = last_at + self.pipeline.runtime.sampling_interval_s
                continue
            if self._wake_sampler.wait(next_at - now):
                self._wake_sampler.clear()  # the interval changed: the next sample follows the new one
                next_at = last_at + self.pipeline.runtime.sampling_interval_s

    def _publisher_loop(self) -> None:
        topic = self.topics.telemetry(self.device_id)
        next_fresh = time.monotonic()
        next_health = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            rt = self.pipeline.runtime
            if self._ready.is_set():
                fresh = now >= next_fresh
                if fresh:
                    next_fresh = now + rt.transmission_interval_s
                try:
                    for b in self.pipeline.plan(now, fresh=fresh):
                        info = self._client.publish(topic, b.token, 1)
                        if info.rc == 0:
                            self.pipeline.mark_sent(b.seq, now)
                        else:
                            break
                    if now >= next_health:
                        h = self.pipeline.health(now - self._started)
                        self._client.publish(self.topics.health(self.device_id), encode(h), 1)
                        next_health = now + rt.effective_heartbeat_s
                except Exception:
                    log.exception("publish cycle failed")
            else:
                next_fresh = min(next_fresh, now + rt.transmission_interval_s)
            waits = [next_fresh - now, next_health - now, rt.transmission_interval_s]
            r = self.pipeline.next_resend_in(now)
            if r is not None:
                waits.append(r)
            if self._wake_pub.wait(max(0.01, min(waits))):
                self._wake_pub.clear()

    # -- identity
    def _identity_loop(self) -> None:
        poll = self.settings.identity_poll_s
        while not self._stop.is_set():
            if self._check_identity.wait(poll if poll > 0 else None):
                self._check_identity.clear()
            if self._stop.is_set():
                break
            stamp = _identity_stamp(self.settings.identity_dir)
            if stamp != self._identity_seen:
                try:
                    if self.reload_identity():
                        self._identity_seen = stamp
                except Exception:  # never let a half-written identity kill the watcher
                    log.exception("could not take up the new identity")

    def reload_identity(self) -> bool:
        """Take up the identity now in ``identity_dir`` if it is a new one for this device: re-sign the
        unreceipted batches with its key and reconnect with its credentials. Returns True when the
        directory was dealt with (taken up, nothing new, or another device's identity refused), False
        to look again later (unreadable or half-written)."""
        from .errors import IdentityError
        from .identity import load_identity

        try:
            new = load_identity(self.settings.identity_dir)
        except IdentityError as exc:
            log.warning("identity dir changed but is not usable (yet)", extra={"error": str(exc)})
            return False
        old = self.identity
        if new.device_id != old.device_id:
            log.error(
                "the identity dir now holds another device; keeping this one (this buffer is %s's): stop the "
                "agent and give the new device its own buffer_path",
                old.device_id,
                extra={"device_id": old.device_id, "new_device_id": new.device_id},
            )
            return True
        same_key = new.key.private_bytes_raw() == old.key.private_bytes_raw()
        if same_key and (new.mqtt_username, new.mqtt_password, new.mqtt_url, new.client_id) == (
            old.mqtt_username,
            old.mqtt_password,
            old.mqtt_url,
            old.client_id,
        ):
            return True
        resealed = 0 if same_key else self.pipeline.rekey(new.key, new.cloud_public_key)
        self.identity = new
        self.identity_reloads += 1
        log.info(
            "new identity taken up",
            extra={"key_version": new.key_version, "resealed_batches": resealed, "broker": new.mqtt_url},
        )
        old_client, self._client = self._client, self._make_client()
        self._wake_net.set()
        with contextlib.suppress(Exception):
            old_client.disconnect()  # loop_forever returns; the network thread connects the new client
        return True

    def start(self) -> None:
        for name, target in (
            ("sampler", self._sampler_loop),
            ("publisher", self._publisher_loop),
            ("network", self._network_loop),
            ("identity", self._identity_loop),
        ):
            t = threading.Thread(target=target, name=f"edge-agent-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        if self.ota is not None:
            desired = self.pipeline.desired
            self.ota.start(desired.firmware if desired else None, self.pipeline.runtime.config_version)
        log.info("agent started", extra={"device_id": self.device_id, "depth": self.pipeline.buffer.depth})

    def stop(self, timeout_s: float = 5.0) -> None:
        """Clean stop: say offline (reason clean), disconnect, join the threads, close the buffer."""
        self._stop.set()
        self._wake_pub.set()
        self._wake_sampler.set()
        self._wake_net.set()
        self._check_identity.set()
        if self.ota is not None:
            self.ota.stop()
        if self._connected.is_set():
            with contextlib.suppress(Exception):
                info = self._client.publish(
                    self.topics.status(self.device_id),
                    encode(Status("offline", at=_now_ms(), reason="clean")),
                    1,
                    True,
                )
                info.wait_for_publish(timeout_s)
        with contextlib.suppress(Exception):
            self._client.disconnect()
        for t in self._threads:
            t.join(timeout_s)
        self.pipeline.close()
        log.info("agent stopped", extra={"device_id": self.device_id})

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly. SIGHUP: look for a new identity now."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._check_identity.set())
        self.start()
        # Short waits: Python runs a signal handler only in the main thread, when it next runs bytecode. The
        # kernel may hand SIGTERM to another thread (the sampler forking a command sensor), and then a
        # main thread blocked in a long wait would not see it for up to that long.
        while not self._stop.wait(1.0):
            pass
        self.stop()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._ready.wait(timeout_s)


def run_agent(config: Path | str) -> int:
    """``iotctl agent run``: load settings and identity, run until signalled. Returns the exit code:
    0, or RESTART_EXIT_CODE after an OTA switch (the supervisor starts the new release)."""
    from .config import load_settings
    from .identity import load_identity

    settings = load_settings(config)
    setup_logging(settings.log_level)
    agent = Agent(settings, load_identity(settings.identity_dir))
    agent.run_forever()
    if agent.restart_requested:
        from .ota_boot import RESTART_EXIT_CODE

        return RESTART_EXIT_CODE
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Lean entry point (``python -m edge_agent.agent --config FILE``): no CLI framework loaded.
    ``iotctl agent run`` validates the file and then execs this, so the running agent is small."""
    import argparse

    from .errors import AgentError

    ap = argparse.ArgumentParser(prog="edge-agent", description="Run the edu-platform edge agent.")
    ap.add_argument("--config", "-c", required=True, type=Path, help="Agent TOML file.")
    args = ap.parse_args(argv)
    try:
        return run_agent(args.config)
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def status_lines(config: Path | str) -> Iterable[tuple[str, Any]]:
    from .config import load_settings

    settings = load_settings(config)
    if not Path(settings.buffer_path).exists():
        raise SettingsError(f"no buffer at {settings.buffer_path}: the agent has not run yet", field="buffer_path")
    buf = open_buffer(settings, readonly=True)
    try:
        st = buf.stats()
        cfg = buf.get_state(_CONFIG_STATE) or {}
    finally:
        buf.close()
    yield from (
        ("buffer", str(settings.buffer_path)),
        ("depth", st.depth),
        ("unbatched", st.unbatched),
        ("unreceipted_batches", st.batches),
        ("bytes", st.bytes),
        ("produced", st.produced),
        ("stored", st.stored),
        ("rejected", st.rejected),
        ("quarantined", st.quarantined),
        ("dropped", st.dropped),
        ("last_seq", st.last_seq),
        ("config_version", cfg.get("version", 0)),
    )


if __name__ == "__main__":
    sys.exit(main())
