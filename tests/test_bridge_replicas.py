"""Three bridge replicas (``iotctl bridge run`` subprocesses) on one shared subscription; one is
killed with SIGKILL mid-stream and restarted with the same client id: every reading is stored
exactly once in effect and every batch is receipted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from broker_bridge.testing import Publisher, ReceiptCollector, make_batch, register_devices, sealed, wait_for
from cloud_core.core.db import make_engine
from cloud_core.tsdb import open_tsdb
from iot_protocol import Topics
from iot_testing.servers import free_port

pytestmark = pytest.mark.integration

BRIDGE_BROKER_LIMITS = {"max_queued_messages": 1_000_000, "max_inflight_messages": 1000}
IOTCTL = str(Path(sys.executable).with_name("iotctl"))


class Replica:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.env = {**env, "EDU_BRIDGE_CLIENT_ID": name, "EDU_BRIDGE_METRICS_PORT": str(self.port)}
        self.log = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [IOTCTL, "bridge", "run", "--log-level", "WARNING"], env=self.env, stdout=log, stderr=log
            )

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def test_three_replicas_one_killed_and_restarted_exact_counts(
    mosquitto_factory, pg_url, influx_url, redis_url, topic_prefix, tmp_path
) -> None:
    broker = mosquitto_factory(**BRIDGE_BROKER_LIMITS)
    engine = make_engine(pg_url)
    devices = [f"r{i}" for i in range(6)]
    keys = register_devices(engine, devices)
    topics = Topics(topic_prefix)
    env = {
        **os.environ,
        "EDU_BRIDGE_MQTT_URL": broker.url,
        "EDU_BRIDGE_DB_URL": pg_url,
        "EDU_BRIDGE_TSDB_URL": influx_url,
        "EDU_BRIDGE_CACHE_URL": redis_url,
        "EDU_BRIDGE_TOPIC_PREFIX": topic_prefix,
        "EDU_BRIDGE_SHARE_GROUP": "g",
        "EDU_BRIDGE_BATCH_MAX_DELAY_S": "0.02",
        "EDU_BRIDGE_EFFECTS_INTERVAL_S": "0.1",
        "EDU_BRIDGE_RETRY_INITIAL_S": "0.1",
        "EDU_BRIDGE_RETRY_MAX_S": "0.5",
    }
    replicas = [Replica(f"bridge-{topic_prefix}-{i}", env, tmp_path) for i in range(3)]
    per_device = 150
    messages = [
        (topics.telemetry(d), sealed(make_batch(d, s, 4), keys[d])) for s in range(1, per_device + 1) for d in devices
    ]
    store = open_tsdb(influx_url)
    rc = ReceiptCollector(broker.host, broker.port, topics)
    try:
        for r in replicas:
            r.start()
        wait_for(lambda: all(r.ready() for r in replicas), 30, what="3 replicas ready")
        with Publisher(broker.host, broker.port) as pub:
            third = len(messages) // 3
            for i, (topic, payload) in enumerate(messages):
                pub.publish(topic, payload)
                if i % 50 == 0:
                    time.sleep(0.02)  # a stream, not one burst
                if i == third:
                    replicas[1].kill()
                if i == 2 * third:
                    replicas[1].start()
            pub.wait_acked(60)
        total = len(messages) * 4
        wait_for(lambda: store.count() >= total, 60, interval=0.5, what=f"{total} points")
        # The killed replica's written-but-unacknowledged batches stay in its broker session: they are
        # receipted only once the restarted replica resumes that session (a device would resend sooner;
        # this test does not). Its start (a new process importing everything) is slow on a loaded
        # machine, so wait for it before the receipt deadline starts instead of counting it in.
        wait_for(replicas[1].ready, 90, interval=0.2, what="the restarted replica ready")
        wait_for(lambda: len(rc.stored()) == len(messages), 30, what="every batch receipted")
        assert store.count() == total  # every batch written (receipted), none twice (idempotent keys)
        for d in devices:
            assert store.count(device_id=d) == per_device * 4
        # What an SRE scrapes from a replica: its own counters, and the process's memory and GC.
        with urllib.request.urlopen(f"http://127.0.0.1:{replicas[0].port}/metrics", timeout=5) as resp:
            scraped = resp.read().decode()
        for name in ("bridge_readings_stored_total", "process_resident_memory_bytes", "python_gc_collections_total"):
            assert f"\n{name}" in scraped, f"{name} missing from /metrics"
    finally:
        for r in replicas:
            r.stop()
        rc.close()
        store.close()
        engine.dispose()
    for r in replicas:
        text = r.log.read_text(errors="replace")
        assert "Traceback" not in text, f"{r.name} crashed:\n{text[-2000:]}"
