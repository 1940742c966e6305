"""The bridge as one object: ``with Bridge(settings) as bridge: ...`` starts every thread and stops
them cleanly; :func:`run_bridge` runs one until SIGINT/SIGTERM (the CLI, ``iotctl up`` and tests)."""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import sys
import threading
import time
from types import TracebackType

from cloud_core.cache import open_cache
from cloud_core.core.db import create_all, make_engine
from cloud_core.core.migrate import SchemaError
from cloud_core.tsdb import open_tsdb
from iot_protocol import ProtocolError, Topics, decode_status, jws

from .deadletter import DeadLetterQueue
from .effects import SideEffects
from .errors import ConfigError
from .keys import KeyDirectory, parse_registry_event
from .ledger import Ledger, ensure_ledger_schema
from .metrics import HttpServer, Metrics
from .mqtt import SYS_DROPPED, Inbound, MqttConsumer
from .quota import QuotaGate
from .settings import BridgeSettings
from .sinks import SinkHealth
from .writer import Ingest

__all__ = ["Bridge", "run_bridge"]

log = logging.getLogger(__name__)


class Bridge:
    """One bridge replica: MQTT consumer, processor, writer, side effects, metrics server."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = s = settings
        try:
            self.topics = Topics(s.topic_prefix)
            self.engine = make_engine(s.db_url)
            self.store = open_tsdb(s.tsdb_url)
            self.cache = open_cache(s.cache_url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.metrics = Metrics()
        self.health = SinkHealth(self.metrics, unready_after_s=s.sink_unready_after_s)
        self.directory = KeyDirectory(self.engine, ttl_s=s.key_cache_ttl_s, retry_s=s.retry_initial_s)
        self.ledger = Ledger(self.engine)
        self.deadletters = DeadLetterQueue(self.engine, max_buffer=s.deadletter_buffer_max)
        self.effects = SideEffects(
            s,
            engine=self.engine,
            cache=self.cache,
            deadletters=self.deadletters,
            metrics=self.metrics,
            health=self.health,
        )
        self.quota = (
            QuotaGate(
                self.engine, self.cache, refresh_s=s.quota_refresh_s, lease_s=s.quota_lease_s, burst_s=s.quota_burst_s
            )
            if s.quotas
            else None
        )
        self.ingest = Ingest(
            s,
            self.topics,
            lookup=self.directory.lookup,
            store=self.store,
            ledger=self.ledger,
            deadletters=self.deadletters,
            effects=self.effects,
            metrics=self.metrics,
            health=self.health,
            ack=self._ack,
            publish=self._publish,
            quota=self.quota,
        )
        self.mqtt = MqttConsumer(
            s,
            self.topics,
            on_telemetry=self.ingest.submit,
            on_registry_event=self._on_registry_event,
            on_sys=self._on_sys,
            on_status=self._on_status,
            on_connection=self.metrics.connected.set,
        )
        self.metrics.watch_last_seen(lambda: dict(self.effects.seen_at))
        self.http: HttpServer | None = None
        self._started = False

    # ---- callbacks ------------------------------------------------------------------------------
    def _ack(self, msgs: list[Inbound]) -> int:
        return self.mqtt.ack_many(msgs)

    def _publish(self, messages: list[tuple[str, bytes]]) -> int:
        return self.mqtt.publish_many(messages)

    def _on_registry_event(self, payload: bytes) -> None:
        event = parse_registry_event(payload)
        if event is not None:
            self.directory.invalidate(event[0])
            log.info("registry event %s", event[1], extra={"device_id": event[0]})

    def _on_sys(self, topic: str, payload: bytes) -> None:
        if topic == SYS_DROPPED:
            with contextlib.suppress(ValueError):
                self.metrics.broker_dropped.set(float(payload))

    def _on_status(self, topic: str, payload: bytes) -> None:
        """A device's status: a last will (offline, reason lost) means the broker dropped its connection."""
        if not payload:
            return
        try:
            status = decode_status(payload)
        except ProtocolError:
            return
        if status.state == "offline" and status.reason == "lost":
            self.metrics.connection_losses.inc()
            with contextlib.suppress(ProtocolError):
                device_id, _ = self.topics.parse(topic)
                log.info("device connection lost (last will)", extra={"device_id": device_id})

    # ---- readiness -----------------------------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        if not self.mqtt.subscribed.is_set():
            return False, self.mqtt.last_error or "not subscribed to the broker"
        if not self.ingest.store_ok:
            return False, "time-series store unavailable (backpressure)"
        if self.ingest.backlog >= self.settings.max_backlog:
            return False, "backlog full"
        failing = self.health.unready()
        if failing is not None:
            return False, failing
        return True, ""

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Bridge:
        s = self.settings
        try:
            create_all(self.engine)
            ensure_ledger_schema(self.engine)  # create_all adds no column to an existing table
        except SchemaError as exc:  # migrated by a newer release: refuse to run against it
            raise ConfigError(str(exc)) from None
        except Exception as exc:  # DB down or racing replicas: ingest can run without it for a while
            log.warning("could not ensure metadata tables: %s", exc)
        self.directory.refresh()
        if self.quota is not None:
            self.quota.start()
        if s.metrics_port is not None:
            self.http = HttpServer(self.metrics, self.ready, s.metrics_host, s.metrics_port)
            self.http.start()
        self.effects.start()
        self.ingest.start()
        self.mqtt.start()
        self._started = True
        log.info(
            "bridge started",
            extra={"client_id": s.client_id, "mqtt": s.mqtt_url, "metrics_port": self.http.port if self.http else None},
        )
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until subscribed; raises TimeoutError naming why not."""
        if not self.mqtt.subscribed.wait(timeout):
            raise TimeoutError(f"bridge not subscribed after {timeout}s: {self.mqtt.last_error or 'no connection'}")

    def stop(self, drain_s: float = 5.0) -> None:
        if not self._started:
            return
        self._started = False
        self.ingest.stop(drain_s)
        time.sleep(0.05)  # let the network thread send the last PUBACKs and receipts
        self.mqtt.stop()
        self.effects.stop()
        if self.quota is not None:
            self.quota.stop()
        if self.http is not None:
            self.http.stop()
        for closer in (self.store.close, self.cache.close, self.ledger.close, self.engine.dispose):
            with contextlib.suppress(Exception):  # closing is best-effort
                closer()
        log.info("bridge stopped")

    def __enter__(self) -> Bridge:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def run_bridge(settings: BridgeSettings, *, stop: threading.Event | None = None) -> None:
    """Run a bridge until SIGINT/SIGTERM (or ``stop`` is set)."""
    stop = stop or threading.Event()
    if settings.switch_interval_s is not None:  # process-wide: only where the bridge owns the process
        sys.setswitchinterval(settings.switch_interval_s)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    if settings.gc_threshold is not None:  # process-wide, like the switch interval
        gc.set_threshold(settings.gc_threshold, *gc.get_threshold()[1:])
    # Process-wide too: no GIL hand-off after each Ed25519 verification on the network thread
    # (docs/performance.md, "The single-reading path, per stage").
    jws.hold_gil_while_verifying()
    with Bridge(settings):
        if settings.gc_threshold is not None:
            gc.freeze()  # what startup built (modules, engine, registry) is never scanned again
        # Short waits: Python runs a signal handler only in the main thread, when it next runs bytecode,
        # and the kernel may hand SIGTERM to any thread; a main thread blocked in stop.wait() never woke.
        while not stop.wait(1.0):
            pass
