"""The chart's broker config cannot be run out of memory: Mosquitto started from the mosquitto.conf Helm
renders (memory_limit, max_queued_bytes and max_connections derived from the pod's memory limit;
docs/deployment.md "Broker memory"), dynamic security as in the pod, a real bridge on InfluxDB.

- The default sizing rides out a 60 s InfluxDB outage at load: the broker stays up, its memory stays
  under memory_limit, nothing is dropped, and the backlog drains with every reading stored exactly once.
- A deliberately small sizing shows the cap working: the queue stops at max_queued_bytes, the broker
  drops and counts the rest instead of growing, stays up, and stored + dropped = sent exactly.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from broker_bridge import Bridge, BridgeSettings
from broker_bridge.testing import make_batch, register_devices, sealed
from cloud_core.broker.dynsec import DynsecAdmin
from cloud_core.broker.mosquitto_process import (
    ChildProcess,
    find_dynsec_plugin,
    mqtt_connect_probe,
    wait_until,
)
from cloud_core.core.db import make_engine
from cloud_core.tsdb import open_tsdb
from iot_protocol import Topics
from iot_testing import free_port, soak_scale, wait_for

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the dev extra")
pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
VALUES: dict[str, Any] = {
    "postgresql": {"url": "postgresql://edu@pg/edu"},
    "influxdb": {"url": "influxdb://influx:8086/iot"},
    "redis": {"url": "redis://redis:6379/0"},
    "mqtt": {"password": "s", "adminPassword": "a"},
    "configSigning": {"privateKey": "k"},
    "mosquitto": {"tls": {"enabled": False}, "deviceService": {"type": "ClusterIP"}},
    "api": {"ingress": {"enabled": False}},
}


def chart_broker_conf(memory: dict[str, int] | None = None) -> str:
    values = {**VALUES, "mosquitto": {**VALUES["mosquitto"], "memory": memory or {}}}
    out = helm.Chart.load(str(ROOT / "charts" / "edu-platform")).render(values, name="edu-platform", namespace="iot")
    return str(yaml.safe_load(out["edu-platform/templates/mosquitto-configmap.yaml"])["data"]["mosquitto.conf"])


def conf_value(conf: str, key: str) -> int:
    return int(next(ln.split()[1] for ln in conf.splitlines() if ln.startswith(key + " ")))


class ChartBroker:
    """Mosquitto from the chart's rendered config, with the init container's dynsec file."""

    def __init__(self, root: Path, conf: str) -> None:
        self.root, self.port = root, free_port()
        self.conf = conf
        text = conf.replace("/mosquitto/data/", f"{root}/").replace("listener 1883", f"listener {self.port} 127.0.0.1")
        text = text.replace("plugin /usr/lib/mosquitto_dynamic_security.so", f"plugin {find_dynsec_plugin()}")
        if os.geteuid() == 0:
            text += "user root\n"
        (root / "mosquitto.conf").write_text(text)
        subprocess.run(
            ["sh", "-c", f"umask 077 && mosquitto_ctrl dynsec init {root}/dynamic-security.json admin adminpw"],
            check=True,
            capture_output=True,
        )
        self.child = ChildProcess(
            ["mosquitto", "-c", str(root / "mosquitto.conf")], log_path=root / "mosquitto.log", umask=0o077
        )
        self.child.spawn()
        wait_until(lambda: mqtt_connect_probe("127.0.0.1", self.port) >= 0, child=self.child, what="broker", timeout=15)

    def rss_bytes(self) -> int:
        fields = Path(f"/proc/{self.child.pid}/status").read_text().split("VmRSS:")[1].split()
        return int(fields[0]) * 1024

    def close(self) -> None:
        self.child.terminate()


class Sender:
    """A QoS 1 publisher (the service account) that counts PUBACKs."""

    def __init__(self, port: int, password: str) -> None:
        self.acked = 0
        self._lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sender-{uuid.uuid4().hex[:8]}")
        self.c.username_pw_set("edu-cloud", password)
        self.c.max_inflight_messages_set(200)
        self.c.max_queued_messages_set(0)
        self.c.on_publish = self._on_publish
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        wait_for(self.c.is_connected, "sender connected")

    def _on_publish(self, *_a: object) -> None:
        with self._lock:
            self.acked += 1

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class SysWatcher:
    """The broker's ``$SYS/broker/publish/messages/dropped``, read as the dynsec admin."""

    def __init__(self, port: int) -> None:
        self.dropped = 0
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sys-{uuid.uuid4().hex[:8]}")
        self.c.username_pw_set("admin", "adminpw")
        self.c.on_connect = lambda c, *_: c.subscribe("$SYS/broker/publish/messages/dropped")
        self.c.on_message = lambda _c, _u, m: setattr(self, "dropped", int(m.payload))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@contextmanager
def platform(
    tmp_path: Path, influx_factory: Callable[[], Any], topic_prefix: str, conf: str
) -> Iterator[tuple[ChartBroker, Any, Bridge, Sender, dict[str, Any], Any]]:
    broker = ChartBroker(tmp_path, conf)
    admin = DynsecAdmin("127.0.0.1", broker.port, username="admin", password="adminpw")
    admin.ensure_service_account("edu-cloud", "svcpw", prefix=topic_prefix)
    admin.close()
    influx = influx_factory()
    tsdb_url = influx.url_for("memory")
    engine = make_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    keys = register_devices(engine, [f"m{i}" for i in range(10)])
    settings = BridgeSettings(
        mqtt_url=f"mqtt://127.0.0.1:{broker.port}",
        mqtt_username="edu-cloud",
        mqtt_password="svcpw",
        db_url=f"sqlite:///{tmp_path / 'meta.db'}",
        tsdb_url=tsdb_url,
        topic_prefix=topic_prefix,
        client_id="edu-platform-bridge-0",
        retry_initial_s=0.2,
        retry_max_s=1.0,
        metrics_port=None,
        rate_limit_msgs_per_s=0,
    )
    bridge = Bridge(settings).start()
    sender = Sender(broker.port, "svcpw")
    store = open_tsdb(tsdb_url)
    try:
        bridge.wait_ready(30)
        yield broker, influx, bridge, sender, keys, store
    finally:
        sender.close()
        bridge.stop(drain_s=1)
        store.close()
        engine.dispose()
        broker.close()


def publish_paced(sender: Sender, topics: Topics, keys: dict[str, Any], seq: dict[str, int], *, msgs_per_s: int,
                  seconds: float, readings: int, check: Callable[[], None]) -> int:  # fmt: skip
    """Publish ``msgs_per_s`` signed batches a second for ``seconds`` (bounded loop), calling ``check``
    once a second. Returns how many were published."""
    sent = 0
    devices = sorted(keys)
    start = time.monotonic()
    for tick in range(int(seconds)):
        for i in range(msgs_per_s):
            d = devices[i % len(devices)]
            seq[d] += 1
            sender.c.publish(topics.telemetry(d), sealed(make_batch(d, seq[d], readings), keys[d]), qos=1)
            sent += 1
        check()
        pause = start + tick + 1 - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # pacing the load, not waiting for an event
    return sent


@pytest.mark.soak
def test_default_sizing_rides_out_a_60s_influxdb_outage_at_load(
    tmp_path: Path, influx_factory: Callable[[], Any], topic_prefix: str
) -> None:
    conf = chart_broker_conf()
    limit = conf_value(conf, "memory_limit")
    outage_s = 60 * soak_scale()
    topics, seq = Topics(topic_prefix), {f"m{i}": 0 for i in range(10)}
    with platform(tmp_path, influx_factory, topic_prefix, conf) as (broker, influx, bridge, sender, keys, store):
        influx.stop()
        peak = [0]

        def check() -> None:
            assert broker.child.is_running, broker.root.joinpath("mosquitto.log").read_text()[-2000:]
            peak[0] = max(peak[0], broker.rss_bytes())

        # 200 signed batches of 10 readings a second (~2,000 readings/s, ~0.5 MB/s into the queue)
        sent = publish_paced(sender, topics, keys, seq, msgs_per_s=200, seconds=outage_s, readings=10, check=check)
        wait_for(lambda: sender.acked == sent, "the broker acknowledged every publish", timeout=60)
        assert bridge.metrics.messages_stored._value.get() == 0
        influx.start()
        wait_for(lambda: store.count() == sent * 10, f"all {sent * 10} readings stored", timeout=300)
        wait_for(lambda: bridge.ingest.backlog == 0, "the backlog drained", timeout=60)
        assert bridge.metrics.broker_dropped._value.get() == 0
        assert "Outgoing messages are being dropped" not in (broker.root / "mosquitto.log").read_text()
        assert broker.child.is_running and peak[0] < limit, (peak[0], limit)
        assert store.count() == sent * 10  # exactly once in effect


def test_a_small_sizing_caps_the_queue_and_counts_what_it_drops(
    tmp_path: Path, influx_factory: Callable[[], Any], topic_prefix: str
) -> None:
    # 32 MiB pod: heap cap 24 MiB, 12 MiB for 8 sessions = 1.5 MiB queue per bridge session
    conf = chart_broker_conf({"limitMiB": 32})
    cap = conf_value(conf, "max_queued_bytes")
    assert cap == 32 * 1024 * 1024 * 75 // 100 // 2 // 8 * 3 // 4
    topics, seq = Topics(topic_prefix), {f"m{i}": 0 for i in range(10)}
    with platform(tmp_path, influx_factory, topic_prefix, conf) as (broker, influx, bridge, sender, keys, store):
        influx.stop()
        size = len(sealed(make_batch("m0", 10**6, 10), keys["m0"]))
        # ~3x the cap while the bridge cannot store (plus what the broker keeps in flight to it)
        n = (3 * cap) // size + 200
        sent = publish_paced(
            sender, topics, keys, seq, msgs_per_s=n // 3 + 1, seconds=3, readings=10, check=lambda: None
        )
        wait_for(lambda: sender.acked == sent, "the broker acknowledged every publish", timeout=60)
        watcher = SysWatcher(broker.port)  # the admin, whose session is not the saturated one
        wait_for(lambda: watcher.dropped > 0, "the broker's $SYS drop count", timeout=30)
        watcher.close()
        assert broker.child.is_running and mqtt_connect_probe("127.0.0.1", broker.port) in (0, 4, 5)
        # The broker's $SYS drop count reaches the bridge only once its window has room again (a QoS 0
        # $SYS message to a saturated session is itself dropped): so the count is read after recovery.
        influx.start()
        # Everything the broker kept is stored exactly once; the rest was dropped, and counted.
        wait_for(lambda: bridge.ingest.backlog == 0 and store.count() > 0, "the backlog drained", timeout=120)
        stored_msgs = int(bridge.metrics.messages_stored._value.get())
        wait_for(lambda: store.count() == stored_msgs * 10, "the store agrees with the bridge", timeout=60)
        wait_for(lambda: bridge.metrics.broker_dropped._value.get() >= sent - stored_msgs,
                 "the drop count after recovery", timeout=60)  # fmt: skip
        lost = sent - stored_msgs
        counted = int(bridge.metrics.broker_dropped._value.get())
        # the broker's count is the telemetry it dropped, plus the few QoS 0 $SYS updates it could not send the
        # saturated bridge session (one per 10 s sys_interval at most)
        assert lost > 0 and lost <= counted <= lost + 10, (sent, stored_msgs, counted)
        # it kept what its caps allow (in flight + queued), not more and not much less
        kept = stored_msgs * size
        inflight = conf_value(conf, "max_inflight_bytes")
        assert 0.9 * (cap + inflight) <= kept <= 1.1 * (cap + inflight), (kept, cap, inflight)
        assert broker.child.is_running
