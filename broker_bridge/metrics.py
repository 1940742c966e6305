"""Prometheus metrics of one bridge, and the /health, /ready and /metrics HTTP endpoints.

Each :class:`Metrics` has its own registry, so several bridges can run in one process (tests).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["HttpServer", "Metrics"]


class _LastSeenCollector(Collector):
    def __init__(self, last_seen: Callable[[], dict[str, float]]) -> None:
        self._last_seen = last_seen

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "bridge_device_last_seen_age_seconds",
            "Seconds since each device's last accepted batch.",
            labels=["device_id"],
        )
        now = time.time()
        for device_id, at in self._last_seen().items():
            family.add_metric([device_id], max(0.0, now - at))
        yield family


class Metrics:
    """The bridge's counters, histograms and gauges."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds
        GCCollector(registry=r)  # python_gc_collections_total and objects collected, per generation
        self.messages_received = Counter("bridge_messages_received", "Telemetry messages received.", registry=r)
        self.readings_received = Counter("bridge_readings_received", "Readings in verified batches.", registry=r)
        self.messages_stored = Counter(
            "bridge_messages_stored", "Batches stored (at least one valid reading) and acknowledged.", registry=r
        )
        self.readings_stored = Counter("bridge_readings_stored", "Readings durably stored.", registry=r)
        self.rejected = Counter("bridge_rejected", "Rejected messages or readings, by reason.", ["reason"], registry=r)
        self.batches_rejected = Counter(
            "bridge_batches_rejected",
            "Messages refused whole (not a stored batch), by reason.",
            ["reason"],
            registry=r,
        )
        self.duplicates = Counter("bridge_duplicates", "Redelivered batches already stored (acked again).", registry=r)
        self.batch_points = Histogram(
            "bridge_write_batch_points",
            "Points per time-series write.",
            buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 20000),
            registry=r,
        )
        self.write_latency = Histogram(
            "bridge_write_latency_seconds",
            "Duration of successful writes.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.write_failures = Counter("bridge_write_failures", "Failed write attempts (retried).", ["sink"], registry=r)
        self.sink_up = Gauge(
            "bridge_sink_up", "1 while the sink takes writes, 0 while its writes fail.", ["sink"], registry=r
        )
        self.sink_rows_refused = Counter(
            "bridge_sink_rows_refused",
            "Rows a sink refused for good (isolated, dead-lettered or dropped; the rest were written).",
            ["sink"],
            registry=r,
        )
        self.receipts_held = Gauge(
            "bridge_receipts_held",
            "Receipt entries waiting for their ledger rows to be written (metadata DB down).",
            registry=r,
        )
        self.ledger_rows_dropped = Counter(
            "bridge_ledger_rows_dropped",
            "Ledger rows (and their receipts) dropped while the DB was down too long; the devices resend.",
            registry=r,
        )
        self.connection_losses = Counter(
            "bridge_device_connection_losses",
            "Devices' last wills (status offline, reason lost): connections the broker dropped, for "
            "example for a packet over its limit.",
            registry=r,
        )
        self.backlog = Gauge("bridge_backlog_messages", "Messages received and not yet acknowledged.", registry=r)
        self.receipts = Counter("bridge_receipts_sent", "Receipt messages published.", registry=r)
        self.deadletters_dropped = Counter(
            "bridge_deadletters_dropped",
            "Dead letters lost because the buffer was full while the DB was down.",
            registry=r,
        )
        self.events_dropped = Counter(
            "bridge_events_dropped", "Stream events dropped while the cache was down.", registry=r
        )
        self.broker_dropped = Gauge(
            "bridge_broker_dropped_messages", "Broker's $SYS/broker/publish/messages/dropped (all clients).", registry=r
        )
        self.connected = Gauge("bridge_mqtt_connected", "1 while connected to the broker.", registry=r)
        for sink in ("tsdb", "ledger", "metadata", "cache"):
            self.sink_up.labels(sink).set(1)

    def watch_last_seen(self, last_seen: Callable[[], dict[str, float]]) -> None:
        self.registry.register(_LastSeenCollector(last_seen))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HttpServer:
    """/health (process alive), /ready (connected and not saturated) and /metrics on a port."""

    def __init__(self, metrics: Metrics, ready: Callable[[], tuple[bool, str]], host: str, port: int) -> None:
        metrics_ = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, metrics_.render(), CONTENT_TYPE_LATEST)
                elif self.path == "/health":
                    self._send(200, b'{"status":"ok"}', "application/json")
                elif self.path == "/ready":
                    ok, why = ready()
                    body = b'{"ready":true}' if ok else orjson.dumps({"ready": False, "why": why})
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # quiet: access logs are not useful here
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="bridge-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
