"""The rig the durability tests share: a real Mosquitto, the real `iotctl agent run` subprocess, and a
cloud side that is either embedded (the in-process bridge, SQLite metadata and time-series store) or
production (an `iotctl bridge run` subprocess, PostgreSQL, InfluxDB, Redis).

Two oracles judge every run (``Rig.drain_and_check``):

- committed => stored: storage holds exactly the readings the agent committed (its produced log, written
  in the same SQLite transaction as the buffer rows): same keys, same values, nothing twice;
- handed over => stored: a probe sensor outside the agent (``iot_testing.oracle.SensorJournal``) journals
  each reading before the agent reads it; storage holds every one, except the one an agent that was
  killed or powered off held between the hand-over and its commit.

``EDU_TEST_AGENT=trusts-puback`` runs the deliberately broken agent of tests/agent_mutants.py instead of
the real one (to show which tests catch it; see docs/testing.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, func, select

from broker_bridge import Bridge, BridgeSettings
from broker_bridge.testing import register_devices
from cloud_core.broker.mosquitto_process import ChildProcess
from cloud_core.core.db import make_engine
from cloud_core.models import BatchLedger, RejectedMessage
from cloud_core.tsdb import open_tsdb
from edge_agent.buffer import Buffer
from edge_agent.identity import write_identity
from iot_protocol import Topics, decode_batch, generate_private_key, jws, public_key_b64
from iot_testing import InfluxServer, RedisServer, free_port, wait_for
from iot_testing.oracle import PROBE_FIELD, JournalVerdict, SensorJournal
from iot_testing.powercut import PowerCut

IOTCTL = str(Path(sys.executable).with_name("iotctl"))
MUTANTS = str(Path(__file__).with_name("agent_mutants.py"))
AGENT_UNDER_TEST = os.environ.get("EDU_TEST_AGENT", "real")  # or a name in agent_mutants.MUTANTS
DEVICE = "agent-dur-1"
FAST_BRIDGE = {"batch_max_delay_s": 0.02, "effects_interval_s": 0.2, "retry_initial_s": 0.1, "retry_max_s": 0.5}


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


# ------------------------------------------------------------------------------------------ cloud sides


class EmbeddedCloud:
    """The in-process bridge on SQLite metadata and the embedded SQLite time-series store."""

    name = "embedded"

    def __init__(self, tmp: Path, broker: Any, prefix: str) -> None:
        self.broker = broker
        self.prefix = prefix
        self.db_url = f"sqlite:///{tmp / 'meta.db'}"
        self.tsdb_url = f"sqlite:///{tmp / 'readings.db'}"
        self.bridge: Bridge | None = None

    def settings(self) -> BridgeSettings:
        return BridgeSettings(
            mqtt_url=self.broker.url,
            db_url=self.db_url,
            tsdb_url=self.tsdb_url,
            topic_prefix=self.prefix,
            client_id=f"bridge-{self.prefix}"[:64],
            metrics_port=None,
            sys_topics=False,
            **FAST_BRIDGE,
        )

    @property
    def bridge_running(self) -> bool:
        return self.bridge is not None

    def start_bridge(self) -> None:
        self.bridge = Bridge(self.settings())
        self.bridge.start()
        self.bridge.wait_ready(15)

    def stop_bridge(self) -> None:
        if self.bridge is not None:
            self.bridge.stop()
            self.bridge = None

    def close(self) -> None:
        self.stop_bridge()


class ProductionCloud:
    """`iotctl bridge run` as a subprocess (killable), PostgreSQL, InfluxDB and Redis (private servers, so a
    test may stop or kill them)."""

    name = "production"

    def __init__(
        self, tmp: Path, broker: Any, prefix: str, *, pg_url: str, influx: InfluxServer, redis: RedisServer
    ) -> None:
        self.tmp = tmp
        self.broker = broker
        self.prefix = prefix
        self.influx = influx
        self.redis = redis
        self.db_url = pg_url
        self.tsdb_url = influx.url_for("durability")
        self.cache_url = redis.url
        self.metrics_port = free_port()
        self.proc: ChildProcess | None = None
        self.bridges_started = 0

    @property
    def bridge_running(self) -> bool:
        return self.proc is not None and self.proc.is_running

    def start_bridge(self) -> None:
        self.proc = ChildProcess(
            [
                IOTCTL, "bridge", "run", "--mqtt-url", self.broker.url, "--db-url", self.db_url,
                "--tsdb-url", self.tsdb_url, "--cache-url", self.cache_url, "--topic-prefix", self.prefix,
                "--client-id", f"bridge-{self.prefix}"[:64], "--metrics-port", str(self.metrics_port),
                "--batch-max-delay", "0.02", "--log-level", "WARNING",
            ],
            log_path=self.tmp / "bridge.log",
            env={
                "EDU_BRIDGE_EFFECTS_INTERVAL_S": str(FAST_BRIDGE["effects_interval_s"]),
                "EDU_BRIDGE_RETRY_INITIAL_S": str(FAST_BRIDGE["retry_initial_s"]),
                "EDU_BRIDGE_RETRY_MAX_S": str(FAST_BRIDGE["retry_max_s"]),
            },
        )  # fmt: skip
        self.proc.spawn()
        self.bridges_started += 1
        wait_for(self._ready, f"`iotctl bridge run` ready (log {self.tmp / 'bridge.log'})", 60)

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.is_running, f"the bridge exited; log:\n{self.log_tail()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/ready", timeout=2) as r:
                return int(r.status) == 200
        except OSError:
            return False

    def metric(self, name: str) -> float:
        """The value of one of the bridge process's unlabelled metrics (its /metrics endpoint)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and not sample.labels:
                    return float(sample.value)
        raise AssertionError(f"the bridge exposes no metric {name}")

    def log_tail(self) -> str:
        lines = (self.tmp / "bridge.log").read_text(errors="replace").splitlines()
        return "\n".join(lines[-20:])

    def stop_bridge(self) -> None:
        if self.proc is not None:
            self.proc.terminate(30)
            self.proc = None

    def kill_bridge(self) -> None:
        """kill -9 of the bridge process (a crash: what it held unacknowledged, the broker redelivers)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc = None

    def close(self) -> None:
        self.stop_bridge()


Cloud = EmbeddedCloud | ProductionCloud


# ------------------------------------------------------------------------------------------ the rig


@dataclass(frozen=True)
class Counts:
    """One consistent snapshot of the agent's buffer (read while the agent may be running)."""

    produced: int = 0
    stored: int = 0
    depth: int = 0
    last_seq: int = 0


class Rig:
    """Broker + cloud side + an enrolled device directory + agent subprocesses and the probe's journal."""

    def __init__(self, tmp: Path, broker: Any, cloud: Cloud, *, agent: str = AGENT_UNDER_TEST) -> None:
        self.tmp = tmp
        self.broker = broker
        self.cloud = cloud
        self.prefix = cloud.prefix
        self.agent_kind = agent
        key = register_devices(make_engine(cloud.db_url), [DEVICE])[DEVICE]
        write_identity(
            tmp / "identity",
            key,
            {
                "device_id": DEVICE,
                "mqtt_url": broker.url,
                "topic_prefix": self.prefix,
                "cloud_public_key": public_key_b64(generate_private_key()),
            },
        )
        self.buffer_dir = tmp / "buf"
        self.buffer_path = self.buffer_dir / "buffer.db"
        self.journal = SensorJournal(tmp / "probe")
        self.lives = 0  # agent processes started; each runs its probe under its own life (the oracle)
        self.cut_lives: set[str] = set()  # agents killed or powered off: each may lose the reading in hand
        self.power: PowerCut | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.proxy: TcpProxy | None = None
        self.verdict: JournalVerdict | None = None  # the probe's, after drain_and_check

    # -- agent
    def config(
        self,
        name: str = "agent.toml",
        *,
        sampling: float = 0.05,
        mqtt_url: str | None = None,
        synchronous: str = "full",
        receipt_timeout: float = 1.5,
        max_inflight: int = 8,
    ) -> Path:
        path = self.tmp / name
        url = f'mqtt_url = "{mqtt_url}"\n' if mqtt_url else ""
        path.write_text(
            f'identity_dir = "identity"\nbuffer_path = "{self.buffer_path}"\n{url}'
            f"sampling_interval_s = {sampling}\ntransmission_interval_s = 0.1\nbatch_max_readings = 20\n"
            f"receipt_timeout_s = {receipt_timeout}\nmax_inflight_batches = {max_inflight}\n"
            "backoff_initial_s = 0.1\nbackoff_max_s = 0.5\nheartbeat_interval_s = 5\n"
            f'buffer_synchronous = "{synchronous}"\n'
            'keep_produced_log = true\nlog_level = "WARNING"\nmqtt_keepalive_s = 5\n'
            '[[sensors]]\ntype = "simulated"\nseed = 7\n'
            '[[sensors]]\ntype = "simulated"\nsensor_type = "power"\n'
            'fields = ["battery_level", "signal_strength"]\n' + self.journal.sensor_toml()
        )
        return path

    def start_agent(self, config: Path | None = None) -> int:
        cfg = str(config or self.config())
        if self.agent_kind == "real":
            argv = [IOTCTL, "agent", "run", "--config", cfg]
        else:
            argv = [sys.executable, MUTANTS, self.agent_kind, "--config", cfg]
        self.lives += 1
        env = {
            **os.environ,
            "PYTHONFAULTHANDLER": "1",
            **self.journal.life_env(str(self.lives)),
            **(self.power.env() if self.power is not None else {}),
        }
        with open(self.tmp / "agent.log", "ab") as log:
            self.agent = subprocess.Popen(argv, stderr=log, env=env)
        return self.agent.pid

    def kill_agent(self, sig: int = signal.SIGKILL) -> None:
        assert self.agent is not None
        self.agent.send_signal(sig)
        try:
            self.agent.wait(60)  # a clean stop takes at most ~20 s (its own timeouts), a kill milliseconds
        except subprocess.TimeoutExpired:
            self.agent.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's stack to agent.log
            self.agent.wait(30)
            tail = "\n".join((self.tmp / "agent.log").read_text(errors="replace").splitlines()[-60:])
            raise AssertionError(f"the agent did not exit within 60 s of signal {sig}; agent.log:\n{tail}") from None
        if sig == signal.SIGKILL:
            self.cut_lives.add(str(self.lives))
        self.agent = None

    def watch_power(self) -> PowerCut:
        """From the next agent start on, record what a power cut would leave of the buffer."""
        self.power = PowerCut(self.buffer_dir)
        return self.power

    def power_cut(self) -> None:
        """The agent's machine loses power: the process dies and the buffer keeps only what was synced."""
        assert self.power is not None and self.agent is not None
        self.kill_agent(signal.SIGKILL)
        self.power.restore()

    # -- observation
    def counts(self, path: Path | None = None) -> Counts:
        """A consistent snapshot of the buffer's counters and depth (one read transaction)."""
        path = path or self.buffer_path
        if not path.exists():
            return Counts()
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, isolation_level=None)
        try:
            db.execute("BEGIN")
            c = dict(db.execute("SELECT name, value FROM counters").fetchall())
            depth = db.execute("SELECT count(*) FROM readings").fetchone()[0]
            db.execute("COMMIT")
        except sqlite3.OperationalError:
            return Counts()
        finally:
            db.close()
        return Counts(c.get("produced", 0), c.get("stored", 0), depth, c.get("last_seq", 0))

    def produced_more_than(self, n: int, timeout: float = 60) -> int:
        return wait_for(lambda: (p := self.counts().produced) > n and p, f"agent producing > {n}", timeout)

    def stored(self) -> dict[tuple[int, str | None], dict[str, Any]]:
        store = open_tsdb(self.cloud.tsdb_url)
        try:
            end = int(time.time() * 1000) + 86_400_000  # InfluxDB refuses times past 2262
            rows = store.query(device_id=DEVICE, fields=None, start_ms=0, end_ms=end)
            assert store.count(device_id=DEVICE) == len(rows)
        finally:
            store.close()
        out: dict[tuple[int, str | None], dict[str, Any]] = {}
        for r in rows:
            key = (r.ts_ms, r.sensor_type)
            assert key not in out, f"reading {key} stored twice"
            out[key] = {k: v for k, v in r.values.items() if v is not None}
        return out

    def points(self) -> int:
        """How many of the device's readings the time-series store holds."""
        store = open_tsdb(self.cloud.tsdb_url)
        try:
            return store.count(device_id=DEVICE)
        finally:
            store.close()

    def ledger_seqs(self) -> list[int]:
        """The seqs of the device's batch_ledger rows, in order."""
        engine = make_engine(self.cloud.db_url)
        try:
            with Session(engine) as s:
                return sorted(s.exec(select(BatchLedger.seq).where(BatchLedger.device_id == DEVICE)).all())
        finally:
            engine.dispose()

    def dead_letters(self) -> dict[str, int]:
        engine = make_engine(self.cloud.db_url)
        try:
            with Session(engine) as s:
                rows = s.exec(select(RejectedMessage.reason, func.count()).group_by(RejectedMessage.reason)).all()
        finally:
            engine.dispose()
        return dict(rows)

    # -- the verdict
    def drain(self, timeout: float = 90) -> None:
        """Run the agent with (almost) no sampling until its buffer is empty, then stop it (SIGTERM)."""
        if self.agent is not None:
            self.kill_agent(signal.SIGTERM)
        if not self.cloud.bridge_running:
            self.cloud.start_bridge()
        before = self.counts().produced
        self.start_agent(self.config("drain.toml", sampling=86_400))  # samples once, at its start
        try:
            wait_for(
                lambda: (c := self.counts()).depth == 0 and c.produced > before,
                "buffer drained, the drain agent's own sample included",
                timeout,
            )
        finally:
            self.kill_agent(signal.SIGTERM)

    def drain_and_check(self, timeout: float = 90) -> int:
        """Drain, then judge by both oracles (module docstring). Returns the readings produced."""
        self.drain(timeout)
        buf = Buffer(self.buffer_path, keep_produced_log=True)
        try:
            produced = buf.produced_log()
            st = buf.stats()
        finally:
            buf.close()
        assert st.dropped == 0 and st.rejected == 0 and st.depth == 0, st
        assert st.produced == len(produced)
        expected = {(r.ts, r.sensor_type): {**r.values, "quality_score": r.quality} for r in produced}
        assert len(expected) == len(produced), "the agent produced two readings with the same key"
        got = self.stored()
        missing = sorted(expected.keys() - got.keys())
        assert not missing, f"{len(missing)} committed readings are not stored, e.g. {missing[:5]}"
        assert got == expected
        probe = [v.get(PROBE_FIELD) for (_, sensor), v in got.items() if sensor == self.journal.sensor_type]
        assert None not in probe, "a probe reading without its number: the probe sensor failed (see agent.log)"
        self.verdict = self.journal.check_stored(probe, cut_lives=self.cut_lives)
        assert self.verdict.stored > 0, "the probe sensor handed nothing over"
        return len(produced)

    def close(self) -> None:
        if self.agent is not None:
            self.kill_agent()
        self.cloud.close()
        if self.proxy is not None:
            self.proxy.close()


class TelemetrySpy:
    """Subscribes to the device's telemetry and records the seq of every batch the broker forwards: a
    batch seen here is one the broker received and acknowledged (Mosquitto routes a QoS 1 publish and
    writes its PUBACK in the same step of its loop)."""

    def __init__(self, broker: Any, prefix: str) -> None:
        self.topic = Topics(prefix).telemetry(DEVICE)
        self.seqs: set[int] = set()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"spy-{prefix}"[:64])
        self.client.on_connect = lambda c, *_a: c.subscribe(self.topic, qos=0)
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.seqs.add(decode_batch(jws.decode(m.payload).payload).seq)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "the spy could not subscribe"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def broker_loses_what_it_acknowledged(rig: Rig, batches: int = 3) -> None:
    """The broker certainly acknowledges batches and then loses them: the bridge's session exists but
    the bridge is away, so the broker holds the batches in memory for it; it saves its state only hourly
    (``autosave_interval``), so a kill -9 loses them. Nothing is left to chance: the spy sees each batch
    once the broker has acknowledged it, and the kill comes after ``batches`` of them, two transmission
    intervals after the first PUBACK at least."""
    rig.cloud.start_bridge()  # the bridge's persistent session and subscription exist from now on
    rig.cloud.stop_bridge()
    spy = TelemetrySpy(rig.broker, rig.prefix)
    try:
        rig.start_agent()
        wait_for(lambda: len(spy.seqs) >= batches, f"the broker acknowledging {batches} batches", 60)
    finally:
        spy.close()
    rig.broker.kill()
    rig.broker.start()
    rig.produced_more_than(rig.counts().produced + 20)
