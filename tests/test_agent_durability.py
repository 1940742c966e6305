"""The agent never loses a reading: real Mosquitto, the real bridge, the real `iotctl agent run`.

Each test ends by draining the agent and asserting that storage holds exactly the readings the
agent produced (its produced log): the same count, the same timestamps and values, no duplicates.
Faults: kill -9 of the agent at random points (>= 20 times), broker stop/start, broker kill -9
mid-stream, a network cut (a TCP proxy we drop), the bridge down for a while.
Long variants are marked ``soak`` and scale with the SOAK_SCALE environment variable.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker_bridge import Bridge, BridgeSettings
from broker_bridge.testing import register_devices
from cloud_core.core.db import make_engine
from cloud_core.tsdb import open_tsdb
from edge_agent.buffer import Buffer
from edge_agent.identity import write_identity
from iot_protocol import generate_private_key, public_key_b64
from iot_testing import wait_for

pytestmark = pytest.mark.integration

IOTCTL = str(Path(sys.executable).with_name("iotctl"))
SOAK_SCALE = float(os.environ.get("SOAK_SCALE", "1"))
DEVICE = "agent-dur-1"


class TcpProxy:
    """A TCP forwarder we can cut: ``cut()`` closes every connection and refuses new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.up = True
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            if not self.up:
                c.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self.conns.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.srv.close()


class Rig:
    """Broker + bridge + an enrolled device directory + agent subprocesses."""

    def __init__(self, tmp: Path, broker: Any, prefix: str) -> None:
        self.tmp = tmp
        self.broker = broker
        self.prefix = prefix
        self.db_url = f"sqlite:///{tmp / 'meta.db'}"
        self.tsdb_url = f"sqlite:///{tmp / 'readings.db'}"
        key = register_devices(make_engine(self.db_url), [DEVICE])[DEVICE]
        write_identity(
            tmp / "identity",
            key,
            {
                "device_id": DEVICE,
                "mqtt_url": broker.url,
                "topic_prefix": prefix,
                "cloud_public_key": public_key_b64(generate_private_key()),
            },
        )
        self.bridge: Bridge | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.proxy: TcpProxy | None = None

    def config(self, name: str = "agent.toml", *, sampling: float = 0.05, mqtt_url: str | None = None) -> Path:
        path = self.tmp / name
        url = f'mqtt_url = "{mqtt_url}"\n' if mqtt_url else ""
        path.write_text(
            f'identity_dir = "identity"\nbuffer_path = "buffer.db"\n{url}'
            f"sampling_interval_s = {sampling}\ntransmission_interval_s = 0.1\nbatch_max_readings = 20\n"
            "receipt_timeout_s = 1.5\nbackoff_initial_s = 0.1\nbackoff_max_s = 0.5\n"
            "heartbeat_interval_s = 5\n"
            'keep_produced_log = true\nlog_level = "WARNING"\nmqtt_keepalive_s = 5\n'
            '[[sensors]]\ntype = "simulated"\nseed = 7\n'
            '[[sensors]]\ntype = "simulated"\nsensor_type = "power"\n'
            'fields = ["battery_level", "signal_strength"]\n'
        )
        return path

    def start_bridge(self) -> None:
        self.bridge = Bridge(
            BridgeSettings(
                mqtt_url=self.broker.url,
                db_url=self.db_url,
                tsdb_url=self.tsdb_url,
                topic_prefix=self.prefix,
                client_id=f"bridge-{self.prefix}"[:64],
                metrics_port=None,
                sys_topics=False,
                batch_max_delay_s=0.02,
                effects_interval_s=0.2,
            )
        )
        self.bridge.start()
        self.bridge.wait_ready(15)

    def stop_bridge(self) -> None:
        if self.bridge is not None:
            self.bridge.stop()
            self.bridge = None

    def start_agent(self, config: Path | None = None) -> None:
        with open(self.tmp / "agent.log", "ab") as log:
            self.agent = subprocess.Popen(
                [IOTCTL, "agent", "run", "--config", str(config or self.config())], stderr=log
            )

    def kill_agent(self, sig: int = signal.SIGKILL) -> None:
        assert self.agent is not None
        self.agent.send_signal(sig)
        self.agent.wait(10)
        self.agent = None

    def buffer_counts(self) -> tuple[int, int]:
        """(produced, depth) read while the agent may be running."""
        path = self.tmp / "buffer.db"
        if not path.exists():
            return 0, 0
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            produced = db.execute("SELECT value FROM counters WHERE name = 'produced'").fetchone()
            depth = db.execute("SELECT count(*) FROM readings").fetchone()[0]
        except sqlite3.OperationalError:
            return 0, 0
        finally:
            db.close()
        return (produced[0] if produced else 0), depth

    def produced_more_than(self, n: int, timeout: float = 60) -> int:
        return wait_for(lambda: (p := self.buffer_counts()[0]) > n and p, f"agent producing > {n}", timeout)

    def drain_and_check(self, timeout: float = 60) -> int:
        """Run the agent with (almost) no sampling until its buffer is empty, stop it, compare."""
        if self.agent is not None:
            self.kill_agent(signal.SIGTERM)
        if self.bridge is None:
            self.start_bridge()
        self.start_agent(self.config("drain.toml", sampling=86_400))
        try:
            wait_for(
                lambda: self.buffer_counts()[1] == 0 and self.buffer_counts()[0] > 0,
                "buffer drained",
                timeout,
            )
        finally:
            self.kill_agent(signal.SIGTERM)
        buf = Buffer(self.tmp / "buffer.db", keep_produced_log=True)
        produced = buf.produced_log()
        st = buf.stats()
        buf.close()
        assert st.dropped == 0 and st.rejected == 0 and st.depth == 0
        assert st.produced == len(produced)
        expected = {(r.ts, r.sensor_type): {**r.values, "quality_score": r.quality} for r in produced}
        assert len(expected) == len(produced), "the agent produced two readings with the same key"
        store = open_tsdb(self.tsdb_url)

        def stored() -> dict[tuple[int, str | None], dict[str, Any]]:
            rows = store.query(device_id=DEVICE, fields=None, start_ms=0, end_ms=2**62)
            return {(r.ts_ms, r.sensor_type): dict(r.values) for r in rows}

        got = stored()
        assert store.count(device_id=DEVICE) == len(produced)
        assert len(got) == len(expected)
        assert got == expected
        store.close()
        return len(produced)

    def close(self) -> None:
        if self.agent is not None:
            self.kill_agent()
        self.stop_bridge()
        if self.proxy is not None:
            self.proxy.close()


@pytest.fixture
def rig(tmp_path: Path, mosquitto_factory: Any, topic_prefix: str) -> Iterator[Rig]:
    r = Rig(tmp_path, mosquitto_factory(), topic_prefix)
    try:
        yield r
    finally:
        r.close()


def _kill9_rounds(rig: Rig, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    rig.start_bridge()
    produced = 0
    for _ in range(rounds):
        rig.start_agent()
        produced = rig.produced_more_than(produced)
        time.sleep(rng.uniform(0.0, 0.6))  # somewhere in sampling, sealing, publishing or receipting
        rig.kill_agent()
    n = rig.drain_and_check()
    assert n > rounds * 3


def test_kill9_agent_at_random_points_20_times(rig: Rig) -> None:
    _kill9_rounds(rig, 20, seed=1)


@pytest.mark.soak
def test_kill9_agent_soak(rig: Rig) -> None:
    _kill9_rounds(rig, int(100 * SOAK_SCALE), seed=2)


def test_broker_stopped_and_restarted(rig: Rig) -> None:
    rig.start_bridge()
    rig.start_agent()
    p = rig.produced_more_than(20)
    rig.broker.stop()
    p = rig.produced_more_than(p + 40)  # the agent keeps sampling into its buffer
    rig.broker.start()
    rig.produced_more_than(p + 20)
    rig.drain_and_check()


def test_broker_kill9_mid_stream(rig: Rig) -> None:
    rig.start_bridge()
    rig.start_agent()
    for _ in range(int(2 * SOAK_SCALE) or 1):
        p = rig.produced_more_than(rig.buffer_counts()[0] + 30)
        rig.broker.kill()  # loses what it acknowledged but had not delivered or saved
        rig.produced_more_than(p + 20)
        rig.broker.start()
    rig.produced_more_than(rig.buffer_counts()[0] + 20)
    rig.drain_and_check()


def test_network_cut_then_restored(rig: Rig) -> None:
    rig.proxy = TcpProxy(rig.broker.port)
    rig.start_bridge()
    rig.start_agent(rig.config(mqtt_url=f"mqtt://127.0.0.1:{rig.proxy.port}"))
    p = rig.produced_more_than(20)
    rig.proxy.cut()
    p = rig.produced_more_than(p + 50)
    rig.proxy.restore()
    rig.produced_more_than(p + 20)
    # drain through the proxy too: the agent's path is the one that was cut
    rig.kill_agent(signal.SIGTERM)
    rig.config("drain.toml")
    drain = rig.config("drain.toml", sampling=86_400, mqtt_url=f"mqtt://127.0.0.1:{rig.proxy.port}")
    rig.start_agent(drain)
    wait_for(lambda: rig.buffer_counts()[1] == 0, "buffer drained through the proxy", 60)
    rig.drain_and_check()


def test_bridge_down_for_a_while(rig: Rig) -> None:
    rig.start_bridge()
    rig.start_agent()
    p = rig.produced_more_than(20)
    rig.stop_bridge()
    p = rig.produced_more_than(p + 60)
    _, depth = rig.buffer_counts()
    assert depth > 0  # nothing receipted while the bridge is away: the agent keeps it all
    rig.start_bridge()
    rig.produced_more_than(p + 20)
    rig.drain_and_check()
