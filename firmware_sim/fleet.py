"""Run a fleet: N simulated devices, each = modelled sensors + the real edge_agent buffer/batch/seal
pipeline + one real MQTT connection, all driven by ONE selector loop in one thread.

Why one loop: a paho client with ``loop_start()`` costs a thread; thousands of them do not fit in
one process. paho supports external loops (``socket()``, ``loop_read()``, ``loop_write()``,
``loop_misc()`` and the socket open/close/register-write callbacks), so this module owns a
``selectors`` loop, a timer heap in simulated time, and every client. Device logic (sampling,
sealing, publishing, receipts, faults, attacks) runs in that same thread, so nothing is locked.

Per device, what the real agent does:
- sample the sensors every ``sampling_interval`` (simulated time; timestamps on a per-device grid);
- commit readings to the durable :class:`edge_agent.buffer.Buffer` before anything is sent;
- every ``transmission_interval``: seal the oldest readings into the next batch (``Buffer.next_batch``:
  per-device monotonic seq, JWS signed with the device key) and publish it QoS 1, at most
  ``max_inflight_batches`` unreceipted at a time;
- delete a batch only on the bridge's receipt; resend identical bytes after ``receipt_timeout_s``
  or after a reconnect; heartbeats on the health topic, retained online/offline status with a last will.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import logging
import queue
import resource
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edge_agent.agent import Pipeline, Runtime
from edge_agent.buffer import Buffer
from iot_protocol import ProtocolError, Status, Topics, decode_receipt, encode, private_key_from_seed

from .attacks import Attacker, AttackMessage
from .clock import SimClock
from .faults import SENSOR_FAULTS, FaultSpec
from .labels import Label, LabelWriter
from .physics import hash01
from .scenario import DevicePlan, FleetPlan
from .sensors import ModelledSensor

__all__ = [
    "Credentials",
    "DeviceStats",
    "Fleet",
    "FleetReport",
    "FleetSettings",
    "device_key",
    "raise_fd_limit",
]

log = logging.getLogger(__name__)


class FleetSettings(BaseSettings):
    """How the fleet talks to the broker. Timing constants are real seconds unless marked simulated."""

    model_config = SettingsConfigDict(env_prefix="EDU_SIM_", extra="forbid", frozen=True)

    mqtt_url: str = Field(
        "mqtt://127.0.0.1:1883", description="Broker URL, mqtt://host:port (or mqtts://host:port for TLS)."
    )
    tls_ca_file: Path | None = Field(
        None, description="mqtts: trust only this CA certificate (the one enrollment pins); unset: system CAs."
    )
    tls_client_cert: Path | None = Field(None, description="mqtts with mTLS: one client certificate for all devices.")
    tls_client_key: Path | None = Field(None, description="Its private key.")
    topic_prefix: str = Field("edu", description="Topic prefix shared with the bridge.")
    buffer_dir: Path | None = Field(
        None,
        description="Directory for one SQLite buffer file per device; None keeps buffers in memory "
        "(about 90 KB and no file descriptors per device: what thousands of devices need).",
    )
    buffer_synchronous: Literal["normal", "full"] = Field("normal", description="SQLite synchronous mode.")
    keepalive_s: int = Field(60, ge=5, le=3600, description="MQTT keepalive of each device.")
    connects_per_tick: int = Field(100, ge=1, description="New connections opened per loop tick (ramp-up).")
    max_inflight_batches: int = Field(8, ge=1, le=1000, description="Unreceipted batches per device at most.")
    receipt_timeout_s: float = Field(30.0, gt=0, description="Resend a batch (identical bytes) after this.")
    reconnect_delay_s: float = Field(2.0, gt=0, description="Delay before reconnecting a dropped device.")
    misc_interval_s: float = Field(1.0, gt=0, description="Period of paho's loop_misc (keepalive pings).")
    drain_timeout_s: float = Field(30.0, ge=0, description="After the run, wait this long for receipts.")
    heartbeat_interval_s: float = Field(300.0, gt=0, description="Simulated seconds between health messages.")
    heartbeats: bool = Field(True, description="Publish health heartbeats and retained online/offline status.")
    ota_confirm_timeout_s: float = Field(
        30.0, gt=0, description="A new firmware must pass its health check this soon after its switch (real s)."
    )
    ota_max_boots: int = Field(3, ge=1, description="Boots of an unconfirmed firmware before switching back.")
    ota_reboot_s: float = Field(0.5, gt=0, description="Real seconds a firmware switch or crash keeps a device down.")
    ota_download_workers: int = Field(8, ge=1, le=256, description="Threads downloading firmware artifacts.")
    ota_download_retries: int = Field(5, ge=0, description="Failed download attempts in a row before giving up.")
    ota_retry_delay_s: float = Field(1.0, gt=0, description="First delay between download attempts.")


@dataclass(frozen=True, slots=True)
class Credentials:
    """What enrollment hands a device: broker login and the cloud's config-signing key."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str | None = None
    cloud_public_key: bytes | None = None
    mqtt_url: str | None = None  # the broker enrollment named (the platform's advertised URL)
    release_public_key: bytes | None = None  # verifies firmware manifests (firmware_sim/ota.py)
    mqtt_ca_pem: str | None = field(default=None, repr=False)  # the broker's CA for mqtts://, when sent


@dataclass(slots=True)
class DeviceStats:
    produced: int = 0  # honest readings committed to the buffer
    sensor_errors: int = 0
    batches_published: int = 0
    resends: int = 0
    stored: int = 0  # readings receipted as stored
    rejected: int = 0  # readings receipted as rejected
    attack_messages: int = 0
    connects: int = 0
    dropped: int = 0  # readings the buffer's bound dropped (counted, never silent)
    rejected_batches: dict[str, int] = field(default_factory=dict)  # by the receipt's reason
    held: int = 0  # readings still in the buffer at the end (unreceipted)
    down_at_end: bool = False  # rebooting or dead when the run ended: its buffer could not drain


@dataclass(slots=True)
class FleetReport:
    devices: int = 0
    connected_peak: int = 0
    connected_end: int = 0
    produced: int = 0
    stored: int = 0
    rejected: int = 0
    unreceipted: int = 0
    dropped: int = 0
    batches_published: int = 0
    resends: int = 0
    attack_messages: int = 0
    mqtt_messages: int = 0
    sensor_errors: int = 0
    real_seconds: float = 0.0
    sim_seconds: float = 0.0
    start_ms: int = 0  # simulated time span of the run
    end_ms: int = 0
    rejected_batches: dict[str, int] = field(default_factory=dict)  # batches rejected, by reason
    held_by_down_devices: int = 0  # part of unreceipted: on devices dead or rebooting at the end
    per_device: dict[str, DeviceStats] = field(default_factory=dict)

    @property
    def not_stored(self) -> int:
        """Honest readings that did not reach storage: rejected, unreceipted or dropped by a buffer."""
        return self.rejected + self.unreceipted + self.dropped

    def summary(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__ if k != "per_device"}  # type: ignore[attr-defined]
        out["msgs_per_s"] = round(self.mqtt_messages / self.real_seconds, 1) if self.real_seconds else 0.0
        return out


def device_key(seed: int, device_id: str) -> Ed25519PrivateKey:
    """Deterministic simulation key for ``device_id`` (never use such keys for real devices)."""
    return private_key_from_seed(hashlib.sha256(f"firmware_sim:{seed}:{device_id}".encode()).digest())


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards ``wanted`` (and the hard one if privileged); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            wanted = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


class _Device:
    """One simulated device: its world, its agent pipeline state, and its MQTT client."""

    def __init__(self, fleet: Fleet, plan: DevicePlan, key: Ed25519PrivateKey, creds: Credentials) -> None:
        self.fleet = fleet
        self.plan = plan
        self.id = plan.device_id
        self.key = key
        self.creds = creds
        g = plan.group
        # The sensor measures the physical world: a skewed clock mis-stamps, it does not move the weather.
        self.sensor = ModelledSensor.for_device(plan, fleet.plan.start_ms, lambda ts: ts - self.skew_ms)
        self.physics = self.sensor.physics
        self.injector = self.sensor.faults
        self.pipeline = self._make_pipeline(fleet._open_buffer(self.id))
        self.stats = DeviceStats()
        self.skew_ms = 0
        self.down = False  # reboot or battery death: not sampling, not connected
        self.offline = False  # network fault: sampling, not connected
        self.connected = False
        self.boot_real = time.monotonic()
        # The first few batches sent, kept only by a device that will replay or tamper with them (8
        # tokens of 10 readings are ~18 KB: per device of a 10,000-device fleet, that adds up).
        self.keeps_tokens = plan.device_id in fleet._attackers
        self.published_tokens: dict[int, bytes] = {}
        self.last_published_seq = 0
        self.sent_tokens: list[bytes] = []  # ... of which the bridge receipted as stored (replay material)
        self.attacker = Attacker(fleet.topics, self.id, key, g.sensor_type)
        # Phase on the sampling grid, so a fleet's samples spread over the interval.
        self.phase_ms = int(hash01(plan.seed, "phase", 0) * self.sampling_interval_ms)
        self.client = self._make_client()

    def _make_pipeline(self, buffer: Buffer) -> Pipeline:
        g, f = self.plan.group, self.fleet
        runtime = Runtime(
            sampling_interval_s=g.sampling_interval,
            transmission_interval_s=g.transmission_interval,
            batch_max_readings=g.batch_max_readings,
            heartbeat_interval_s=f.settings.heartbeat_interval_s,
        )
        return Pipeline(
            device_id=self.id,
            key=self.key,
            buffer=buffer,
            sensors=[self.sensor],
            runtime=runtime,
            cloud_public_key=self.creds.cloud_public_key,
            max_inflight=f.settings.max_inflight_batches,
            receipt_timeout_s=f.settings.receipt_timeout_s,
        )

    @property
    def buffer(self) -> Buffer:
        return self.pipeline.buffer

    # ------------------------------------------------------------------ MQTT client
    def _make_client(self) -> mqtt.Client:
        f = self.fleet
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.creds.client_id or self.id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
            userdata=self,
        )
        if self.creds.username:
            c.username_pw_set(self.creds.username, self.creds.password)
        if f.settings.heartbeats:
            c.will_set(f.topics.status(self.id), encode(Status("offline", reason="lost")), qos=1, retain=True)
        c.on_connect = _on_connect
        c.on_disconnect = _on_disconnect
        c.on_message = _on_message
        c.on_socket_open = f._sock_open
        c.on_socket_close = f._sock_close
        c.on_socket_register_write = f._sock_want_write
        c.on_socket_unregister_write = f._sock_done_write
        if f.tls_context is not None:
            c.tls_set_context(f.tls_context)
        c.connect_async(f.host, f.port, keepalive=f.settings.keepalive_s)
        return c

    def connect(self) -> None:
        if self.down or self.offline or self.fleet.stopping:
            return
        try:
            self.client.reconnect()
            self.stats.connects += 1
        except OSError as exc:
            from iot_protocol.tls import describe_tls_error, is_tls_error

            f = self.fleet
            if is_tls_error(exc):
                f.last_error = describe_tls_error(exc, f.host, f.port, f.settings.tls_ca_file)
                log.error(f.last_error, extra={"device_id": self.id})
            else:
                f.last_error = f"cannot reach the broker at {f.host}:{f.port}: {exc}"
                log.warning("connect failed", extra={"device_id": self.id, "error": str(exc)})
            self.fleet._after_real(self.fleet.settings.reconnect_delay_s, self.connect)

    def drop_connection(self) -> None:
        """Lose the network abruptly (no DISCONNECT: the broker publishes the last will)."""
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        if not self.connected:
            return False
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        self.fleet.report.mqtt_messages += 1
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    # ------------------------------------------------------------------ agent pipeline
    def now_device_ms(self, sim_ms: int) -> int:
        return sim_ms + self.skew_ms

    @property
    def sampling_interval_ms(self) -> int:  # a signed desired config may change it
        return max(1, int(self.pipeline.runtime.sampling_interval_s * 1000))

    @property
    def transmission_interval_ms(self) -> int:
        return max(1, int(self.pipeline.runtime.transmission_interval_s * 1000))

    def sample(self, sim_ms: int) -> None:
        """One sampling tick at grid time ``sim_ms`` (physical time), through the agent's pipeline."""
        if self.down:
            return
        self.stats.produced += len(self.pipeline.sample(self.now_device_ms(sim_ms)))

    def transmit(self, sim_ms: int) -> None:
        """A publish cycle: the pipeline plans due resends, fresh and backlog batches (inflight-capped)."""
        if not self.connected or self.fleet.ota.silent(self):
            return
        now = time.monotonic()
        topic = self.fleet.topics.telemetry(self.id)
        for pb in self.pipeline.plan(now, now_ms=self.now_device_ms(sim_ms)):
            if self.publish(topic, pb.token):
                self.pipeline.mark_sent(pb.seq, now)
                if pb.seq > self.last_published_seq:
                    self.last_published_seq = pb.seq
                    self.stats.batches_published += 1
                else:
                    self.stats.resends += 1
                if self.keeps_tokens and len(self.published_tokens) < 8:
                    self.published_tokens.setdefault(pb.seq, pb.token)

    def on_connected(self) -> None:
        self.connected = True
        f = self.fleet
        self.client.subscribe([(f.topics.receipts(self.id), 1), (f.topics.config_desired(self.id), 1)])
        if f.settings.heartbeats:
            self.publish(f.topics.status(self.id), encode(Status("online", at=f.clock.now_ms())), retain=True)
        # Everything sealed but unreceipted goes out again (identical bytes), as the agent does.
        self.pipeline.resend_all()
        self.transmit(f.clock.now_ms())
        f._connected_changed(+1)
        f.ota.on_connected(self)

    def on_receipt(self, payload: bytes) -> None:
        try:
            receipt = decode_receipt(payload)
        except ProtocolError:
            receipt = None
        if receipt is not None:
            if len(self.sent_tokens) < 4 and self.published_tokens:
                for s in receipt.stored:
                    token = self.published_tokens.get(s)
                    if token is not None and token not in self.sent_tokens:
                        self.sent_tokens.append(token)
            for r in receipt.rejected:
                seen = self.stats.rejected_batches.get(r.reason, 0)
                self.stats.rejected_batches[r.reason] = seen + 1
                if not seen:  # the first per reason and device; the run's summary counts them all
                    log.warning(
                        "%s: batch %d rejected by the platform: %s (more for this reason are counted, not logged)",
                        self.id, r.seq, r.reason, extra={"device_id": self.id, "seq": r.seq, "reason": r.reason},
                    )  # fmt: skip
        # The pipeline logs and ignores a malformed receipt; a well-formed one is decoded once, here.
        deleted = self.pipeline.on_receipt(payload) if receipt is None else self.pipeline.apply_receipt(receipt)
        if deleted and self.buffer.depth:
            self.transmit(self.fleet.clock.now_ms())  # drain a backlog at the pace of receipts

    def on_config(self, token: bytes) -> None:
        report = self.pipeline.apply_config(token, self.now_device_ms(self.fleet.clock.now_ms()))
        if report is not None:
            self.publish(self.fleet.topics.config_reported(self.id), encode(report))
            self.fleet.ota.on_config(self, report)

    def heartbeat(self, sim_ms: int) -> None:
        if self.down or not self.connected or self.fleet.ota.silent(self):
            return
        h = self.pipeline.health(time.monotonic() - self.boot_real, self.now_device_ms(sim_ms))
        self.publish(self.fleet.topics.health(self.id), encode(self.fleet.ota.health(self, h)))

    # ------------------------------------------------------------------ faults
    def go_down(self) -> None:
        self.down = True
        self.drop_connection()

    def come_up(self) -> None:
        self.down = False
        self.sensor.dead = False
        self.boot_real = time.monotonic()
        if self.fleet.settings.buffer_dir is not None:  # a real restart: reopen the buffer file
            self.pipeline.buffer.close()
            self.pipeline = self._make_pipeline(self.fleet._open_buffer(self.id))
        if not self.fleet.ota.on_boot(self):  # the firmware crashed while starting
            self.down = True
            return
        self.connect()

    def go_offline(self) -> None:
        self.offline = True
        self.drop_connection()

    def come_online(self) -> None:
        self.offline = False
        if not self.connected:
            self.connect()

    def send_attack(self, messages: Iterable[AttackMessage]) -> int:
        n = 0
        for m in messages:
            if self.publish(m.topic, m.payload):
                n += 1
        self.stats.attack_messages += n
        return n


def _read_all(client: mqtt.Client) -> None:
    """Read what the socket has. A TLS socket may hold decrypted bytes that select() cannot see
    (``pending()``): keep reading until it holds none, or they would wait for the next packet."""
    client.loop_read()
    sock = client.socket()
    while isinstance(sock, ssl.SSLSocket) and sock.pending():
        client.loop_read()
        sock = client.socket()


def _on_connect(client: mqtt.Client, dev: _Device, flags: Any, rc: Any, props: Any = None) -> None:
    if getattr(rc, "is_failure", False) or (isinstance(rc, int) and rc != 0):
        log.warning("connect refused", extra={"device_id": dev.id, "reason": str(rc)})
        return
    dev.on_connected()


def _on_disconnect(client: mqtt.Client, dev: _Device, flags: Any, rc: Any, props: Any = None) -> None:
    was = dev.connected
    dev.connected = False
    if was:
        dev.fleet._connected_changed(-1)
    if not (dev.down or dev.offline or dev.fleet.stopping):
        dev.fleet._after_real(dev.fleet.settings.reconnect_delay_s, dev.connect)


def _on_message(client: mqtt.Client, dev: _Device, msg: mqtt.MQTTMessage) -> None:
    if msg.topic.endswith("/receipts"):
        dev.on_receipt(msg.payload)
    elif msg.topic.endswith("/config/desired") and msg.payload:
        dev.on_config(msg.payload)


class Fleet:
    """Runs ``plan`` against a broker, writing every injected event to ``labels``.

    Args:
        plan: the expanded scenario (devices and events).
        settings: broker and timing settings.
        clock: simulated time (its speed decides how fast the run goes).
        labels: ground-truth sink.
        credentials: per-device broker credentials (from enrollment); anonymous when absent.
        keys: per-device private keys; derived from the scenario seed when absent.
    """

    def __init__(
        self,
        plan: FleetPlan,
        settings: FleetSettings,
        *,
        clock: SimClock | None = None,
        labels: LabelWriter | None = None,
        credentials: dict[str, Credentials] | None = None,
        keys: dict[str, Ed25519PrivateKey] | None = None,
    ) -> None:
        self.plan = plan
        self.settings = settings
        sim = plan.scenario.simulation
        self.clock = clock or SimClock(plan.start_ms, sim.speed)
        self.labels = labels or LabelWriter(None)
        self.topics = Topics(settings.topic_prefix)
        parts = urlsplit(settings.mqtt_url)
        if parts.scheme not in ("mqtt", "tcp", "mqtts") or not parts.hostname:
            raise ValueError(f"broker URL {settings.mqtt_url!r}: use mqtt://host:port or mqtts://host:port")
        tls = parts.scheme == "mqtts"
        self.host, self.port = parts.hostname, parts.port or (8883 if tls else 1883)
        self.tls_context: ssl.SSLContext | None = None
        if tls:
            from iot_protocol.tls import client_context

            self.tls_context = client_context(
                settings.tls_ca_file, cert_file=settings.tls_client_cert, key_file=settings.tls_client_key
            )
        self.last_error: str | None = None  # why the last connection attempt failed (one line)
        self.stopping = False
        self.report = FleetReport(devices=len(plan.devices))
        self._sel = selectors.DefaultSelector()
        # Writes: a client with packets queued is written at the end of the loop's turn (_flush_writes),
        # and its socket watched for writability only when the kernel took less than all of it: two
        # epoll_ctl calls and a select() round less per message than arming it at every publish.
        self._want_write: set[mqtt.Client] = set()
        self._write_armed: set[mqtt.Client] = set()
        self._timers: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._tick = itertools.count()
        self._connected = 0
        self._stop = threading.Event()
        self.calls: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = queue.SimpleQueue()
        from .ota import SimOta

        self.ota = SimOta(self)
        raise_fd_limit(len(plan.devices) * (4 if settings.buffer_dir else 1) + 256)
        credentials = credentials or {}
        keys = keys or {}
        seed = sim.seed
        self.devices: dict[str, _Device] = {}
        self._attackers = {e.device_id for e in plan.events if e.category == "attack"}
        for d in plan.devices:
            key = keys.get(d.device_id) or device_key(seed, d.device_id)
            dev = self.devices[d.device_id] = _Device(self, d, key, credentials.get(d.device_id, Credentials()))
            self.ota.attach(dev)
            # sensor-fault labels end at the first unaffected reading, as in offline generation
            self.labels.sampling_interval(d.device_id, dev.sampling_interval_ms)

    # ------------------------------------------------------------------ buffers
    def _open_buffer(self, device_id: str) -> Buffer:
        d = self.settings.buffer_dir
        path: Path | str = ":memory:" if d is None else d / f"{device_id}.db"
        return Buffer(path, synchronous=self.settings.buffer_synchronous, lean=d is None)

    # ------------------------------------------------------------------ selector callbacks
    def _sock_open(self, client: mqtt.Client, dev: Any, sock: Any) -> None:
        self._sel.register(sock, selectors.EVENT_READ, client)

    def _sock_close(self, client: mqtt.Client, dev: Any, sock: Any) -> None:
        self._want_write.discard(client)
        self._write_armed.discard(client)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)

    def _sock_want_write(self, client: mqtt.Client, dev: Any, sock: Any) -> None:
        self._want_write.add(client)

    def _sock_done_write(self, client: mqtt.Client, dev: Any, sock: Any) -> None:
        if client in self._write_armed:
            self._write_armed.discard(client)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.modify(sock, selectors.EVENT_READ, client)

    def _flush_writes(self) -> None:
        """Write what every client queued since the last call; arm the selector for what is left."""
        pending, self._want_write = self._want_write, set()
        for client in pending:
            if client.socket() is None:
                continue
            client.loop_write()
            sock = client.socket()
            if sock is not None and client.want_write() and client not in self._write_armed:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)
                    self._write_armed.add(client)

    def _connected_changed(self, delta: int) -> None:
        self._connected += delta
        self.report.connected_peak = max(self.report.connected_peak, self._connected)

    @property
    def connected(self) -> int:
        return self._connected

    def progress(self) -> tuple[int, float, float]:
        """(simulated now in ms, fraction of the run done, real seconds left) for a progress line."""
        p = self.plan
        now = min(self.clock.now_ms(), p.end_ms)
        span = max(1, p.end_ms - p.start_ms)
        return now, (now - p.start_ms) / span, max(0.0, self.clock.real_delay(p.end_ms))

    def stored_so_far(self) -> tuple[int, int]:
        """(readings receipted as stored, as rejected) over the fleet, from the buffers' counters."""
        stored = rejected = 0
        for dev in self.devices.values():
            c = dev.buffer.counters
            stored += c["stored"]
            rejected += c["rejected"]
        return stored, rejected

    # ------------------------------------------------------------------ timers
    def _at_real(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._timers, (when, next(self._tick), fn, args))

    def _after_real(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self._at_real(time.monotonic() + delay, fn, *args)

    def _at_sim(self, sim_ms: int, fn: Callable[..., None], *args: Any) -> None:
        self._at_real(self.clock.real_at(sim_ms), fn, *args)

    # ------------------------------------------------------------------ scheduling
    def _schedule_device(self, dev: _Device) -> None:
        first = self.plan.start_ms + dev.phase_ms
        self._at_sim(first, self._sample_tick, dev, first)
        self._at_sim(first + dev.transmission_interval_ms, self._tx_tick, dev, first + dev.transmission_interval_ms)
        if self.settings.heartbeats:
            hb = int(self.settings.heartbeat_interval_s * 1000)
            t = self.plan.start_ms + int(hash01(dev.plan.seed, "hb", 0) * hb)
            self._at_sim(t, self._hb_tick, dev, t)

    def _sample_tick(self, dev: _Device, sim_ms: int) -> None:
        if sim_ms >= self.plan.end_ms:
            return
        dev.sample(sim_ms)
        nxt = sim_ms + dev.sampling_interval_ms
        self._at_sim(nxt, self._sample_tick, dev, nxt)

    def _tx_tick(self, dev: _Device, sim_ms: int) -> None:
        dev.transmit(sim_ms)
        if not self.stopping:
            nxt = sim_ms + dev.transmission_interval_ms
            self._at_sim(nxt, self._tx_tick, dev, nxt)

    def _hb_tick(self, dev: _Device, sim_ms: int) -> None:
        if sim_ms >= self.plan.end_ms:
            return
        dev.heartbeat(sim_ms)
        nxt = sim_ms + int(self.settings.heartbeat_interval_s * 1000)
        self._at_sim(nxt, self._hb_tick, dev, nxt)

    def _schedule_events(self) -> None:
        for spec in self.plan.events:
            if spec.start_ms < self.plan.end_ms:
                self._at_sim(spec.start_ms, self._event_start, spec)

    def _label(self, spec: FaultSpec, *, expected: str | None = None, end_ms: int | None = None) -> None:
        self.labels.add(
            Label(
                device_id=spec.device_id,
                start_ms=spec.start_ms,
                end_ms=spec.end_ms if end_ms is None else end_ms,
                kind=spec.kind,
                category=spec.category,
                field=spec.field,
                params={
                    **({"magnitude": spec.effective_magnitude()} if spec.category in ("sensor", "device") else {}),
                    **dict(spec.params),
                },
                expected=expected,
            )
        )

    def _event_start(self, spec: FaultSpec) -> None:
        dev = self.devices[spec.device_id]
        kind = spec.kind
        if kind in SENSOR_FAULTS:
            dev.injector.add(spec)
            self._label(spec)
            return
        if spec.category == "attack":
            self._attack(dev, spec)
            return
        self._label(spec)
        end = min(spec.end_ms, self.plan.end_ms) if spec.end_ms > spec.start_ms else None
        if kind == "reboot":
            dev.go_down()
            self._at_sim(end or spec.start_ms + 1000, lambda d=dev: d.come_up())
        elif kind == "battery_death":
            dev.sensor.dead = True
            dev.go_down()
            if end is not None and end < self.plan.end_ms:
                self._at_sim(end, lambda d=dev: d.come_up())
        elif kind == "offline":
            dev.go_offline()
            self._at_sim(end or spec.start_ms + 1000, lambda d=dev: d.come_online())
        elif kind == "clock_skew":
            dev.skew_ms = int(spec.effective_magnitude() * 1000)
            if end is not None:
                self._at_sim(end, lambda d=dev: setattr(d, "skew_ms", 0))

    def _attack(self, dev: _Device, spec: FaultSpec) -> None:
        now = dev.now_device_ms(self.clock.now_ms())
        victim = spec.params.get("victim")
        if spec.kind == "foreign_topic" and victim is None:
            ids = list(self.devices)
            victim = ids[(ids.index(dev.id) + 1) % len(ids)]
        try:
            msgs = dev.attacker.build(
                spec.kind,
                now,
                count=int(spec.params.get("count", 1)),
                victim_id=victim,
                stored_tokens=dev.sent_tokens,
                variant=str(spec.params.get("variant", "json")),
            )
        except ValueError as exc:  # e.g. a replay before anything was stored: try again later
            log.warning("attack postponed", extra={"device_id": dev.id, "attack": spec.kind, "error": str(exc)})
            self._after_real(1.0, self._attack, dev, spec)
            return
        if not dev.connected:
            self._after_real(1.0, self._attack, dev, spec)
            return
        sent = dev.send_attack(msgs)
        self.report.attack_messages += sent
        expected = msgs[0].expected if msgs else None
        params = {"messages": sent, **({"victim": victim} if victim else {}), **dict(spec.params)}
        spec2 = FaultSpec(spec.kind, spec.device_id, now, now, spec.field, spec.magnitude, params)
        self._label(spec2, expected=expected)

    # ------------------------------------------------------------------ the loop
    def stop(self) -> None:
        """Ask a running fleet to finish (from another thread)."""
        self._stop.set()

    def run(self, *, drain: bool = True, on_tick: Callable[[Fleet], None] | None = None) -> FleetReport:
        """Connect every device, run the scenario to its end in simulated time, drain, disconnect."""
        started = time.monotonic()
        pending = list(self.devices.values())
        pending.reverse()
        for dev in self.devices.values():
            self._schedule_device(dev)
        self._schedule_events()
        end_real = self.clock.real_at(self.plan.end_ms)
        next_misc = time.monotonic() + self.settings.misc_interval_s
        drain_deadline: float | None = None
        while True:
            now = time.monotonic()
            if self._stop.is_set() and drain_deadline is None:
                end_real = now
            if now >= end_real and drain_deadline is None:
                self.stopping = not drain
                drain_deadline = now + (self.settings.drain_timeout_s if drain else 0.0)
                for dev in self.devices.values():  # final publish cycle: seal what is left
                    if dev.connected:
                        dev.transmit(self.plan.end_ms)
            if drain_deadline is not None:
                outstanding = sum(d.buffer.depth for d in self.devices.values() if not d.down)
                if outstanding == 0 or now >= drain_deadline:
                    break
            for _ in range(self.settings.connects_per_tick):
                if not pending:
                    break
                pending.pop().connect()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn, args = heapq.heappop(self._timers)
                fn(*args)
            while not self.calls.empty():  # results handed over by other threads (OTA downloads)
                fn, args = self.calls.get()
                fn(*args)
            if now >= next_misc:
                for dev in self.devices.values():
                    if dev.connected:
                        dev.client.loop_misc()
                next_misc = now + self.settings.misc_interval_s
                if on_tick is not None:
                    on_tick(self)
            self._flush_writes()
            timeout = 0.0 if pending else 0.05
            if self._timers:
                timeout = min(timeout, max(0.0, self._timers[0][0] - time.monotonic()))
            for key, mask in self._sel.select(timeout):
                client: mqtt.Client = key.data
                if mask & selectors.EVENT_READ:
                    _read_all(client)
                if mask & selectors.EVENT_WRITE and client.socket() is not None:
                    client.loop_write()
        self.stopping = True
        self.report.connected_end = self._connected
        self._shutdown()
        self.report.real_seconds = time.monotonic() - started
        self.report.sim_seconds = (self.plan.end_ms - self.plan.start_ms) / 1000
        return self._finish_report()

    def _shutdown(self) -> None:
        """Say offline (retained), disconnect cleanly, flush the last packets."""
        self.ota.close()
        for dev in self.devices.values():
            if dev.connected:
                if self.settings.heartbeats:
                    dev.publish(self.topics.status(dev.id), encode(Status("offline", reason="clean")), retain=True)
                dev.client.disconnect()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and self._sel.get_map():
            self._flush_writes()
            for key, mask in self._sel.select(0.05):
                client = key.data
                if mask & selectors.EVENT_READ:
                    client.loop_read()
                if mask & selectors.EVENT_WRITE and client.socket() is not None:
                    client.loop_write()
        for dev in self.devices.values():
            c = dev.buffer.counters
            dev.stats.dropped, dev.stats.stored, dev.stats.rejected = c["dropped"], c["stored"], c["rejected"]
            dev.stats.held = dev.buffer.depth
            dev.stats.down_at_end = dev.down
            dev.stats.sensor_errors = dev.pipeline.sensor_errors
            dev.pipeline.close()
        self._sel.close()

    def _finish_report(self) -> FleetReport:
        r = self.report
        for dev in self.devices.values():
            s = dev.stats
            r.per_device[dev.id] = s
            r.produced += s.produced
            r.stored += s.stored
            r.rejected += s.rejected
            r.batches_published += s.batches_published
            r.resends += s.resends
            r.sensor_errors += s.sensor_errors
            r.dropped += s.dropped
            for reason, n in s.rejected_batches.items():
                r.rejected_batches[reason] = r.rejected_batches.get(reason, 0) + n
            if s.down_at_end:
                r.held_by_down_devices += s.held
        r.unreceipted = r.produced - r.stored - r.rejected - r.dropped
        r.start_ms, r.end_ms = self.plan.start_ms, self.plan.end_ms
        return r
