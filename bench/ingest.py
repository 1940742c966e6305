"""Ingest benchmark: raw Mosquitto, raw InfluxDB, and the bridge end to end, in one run.

    .venv/bin/python bench/ingest.py                 # default run, about 2-3 minutes
    .venv/bin/python bench/ingest.py --replicas 2 --single 40000 --batch50 4000

Starts its own servers (iot_testing.servers: mosquitto, influxd, PostgreSQL, Redis) on free ports and
measures, on this machine, in this run:

(a) raw Mosquitto QoS1 throughput with ``mosquitto_pub -l`` -> ``mosquitto_sub`` (200-byte payloads);
(b) raw InfluxDB line-protocol writes with the bridge's point shape (best of 1,000 / 5,000-point
    batches over 1 and 2 connections);
(c) the bridge's sustained end-to-end throughput (``iotctl bridge run`` subprocesses on one shared
    subscription), counted in InfluxDB at the end, with signed batches of 50 readings and of 1 reading
    from many devices, all signed before the clock starts; the load is published by a minimal
    pre-encoded QoS1 publisher so the load generator costs little;
(d) publish -> receipt latency p50/p99 at half the measured batch-50 load (a receipt is sent only
    after the durable write, so this bounds publish-to-queryable from above);
and the CPU seconds used by each process in each phase.

Broker limits used for the bridge: max_queued_messages 10,000,000, max_inflight_messages 1000 (so a
bridge that falls behind never makes Mosquitto drop QoS1 messages); the bridge's Receive Maximum is
its default (10,000). Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchargs import count, pause, seconds  # noqa: E402

from broker_bridge.testing import ReceiptCollector, make_batch, register_devices  # noqa: E402
from cloud_core.broker.mosquitto_process import dies_with_this_process  # noqa: E402
from cloud_core.core.db import make_engine  # noqa: E402
from cloud_core.tsdb import open_tsdb  # noqa: E402
from cloud_core.tsdb.base import Point  # noqa: E402
from cloud_core.tsdb.lineprotocol import encode_points  # noqa: E402
from iot_protocol import Topics, seal_batch  # noqa: E402
from iot_testing.servers import InfluxServer, MosquittoServer, PostgresServer, RedisServer, free_port  # noqa: E402

BROKER_LIMITS = {"max_queued_messages": 10_000_000, "max_inflight_messages": 1000}
HZ = os.sysconf("SC_CLK_TCK")
TREES = {"postgres"}  # measured with their child processes


# ---------------------------------------------------------------------------------------- CPU
def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int, *, tree: bool = False) -> float:
    """utime + stime of ``pid`` in seconds; with ``tree``, plus its live children's (PostgreSQL's
    backends are children of the postmaster; one that exits between two readings is not counted)."""
    if not tree:
        fields = _stat(pid)
        return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / HZ
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields is not None and (int(entry) == pid or fields[1] == str(pid)):
            total += int(fields[11]) + int(fields[12])
    return total / HZ


class CpuMeter:
    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {name: cpu_seconds(pid, tree=name in TREES) for name, pid in pids.items()}
        self.t0 = time.monotonic()

    def result(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        return {
            name: round((cpu_seconds(pid, tree=name in TREES) - self.start[name]) / wall, 2)
            for name, pid in self.pids.items()
        }


# ------------------------------------------------------------------------ minimal QoS1 publisher
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


def _str(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


class RawPublisher:
    """MQTT 3.1.1 QoS1 publisher of pre-encoded PUBLISH packets, at most ``window`` unacknowledged."""

    def __init__(self, host: str, port: int, *, window: int = 2000, client_id: str = "bench-pub") -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(
            _packet(0x10, _str(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60) + _str(client_id.encode()))
        )
        ack = self._recv_exact(4)
        if ack[0] != 0x20 or ack[3] != 0:
            raise RuntimeError(f"CONNACK refused: {ack!r}")
        self.window = window
        self.sent = 0
        self.acked = 0
        self._partial = 0

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            buf += chunk
        return buf

    @staticmethod
    def encode(topic: str, payload: bytes, pid: int) -> bytes:
        return _packet(0x32, _str(topic.encode()) + struct.pack("!H", pid) + payload)

    def _read_acks(self, block: bool) -> None:
        self.sock.setblocking(block)
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        finally:
            self.sock.setblocking(True)
        if not data:
            raise ConnectionError("broker closed the connection")
        total = self._partial + len(data)
        self.acked += total // 4  # only PUBACKs (4 bytes) come back: nothing is subscribed
        self._partial = total % 4

    def send(self, packets: Sequence[bytes], on_sent: Callable[[int], None] | None = None) -> None:
        i = 0
        while i < len(packets):
            room = self.window - (self.sent - self.acked)
            if room <= 0:
                self._read_acks(True)
                continue
            chunk = packets[i : i + min(room, 500)]
            self.sock.sendall(b"".join(chunk))
            if on_sent is not None:
                now = time.time()
                for k in range(len(chunk)):
                    on_sent(i + k)
                del now
            i += len(chunk)
            self.sent += len(chunk)
            self._read_acks(False)

    def drain(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.acked < self.sent:
            if time.monotonic() > deadline:
                raise TimeoutError(f"PUBACKs {self.acked}/{self.sent}")
            self._read_acks(True)

    def close(self) -> None:
        self.sock.sendall(b"\xe0\x00")
        self.sock.close()


def encode_all(messages: Sequence[tuple[str, bytes]], start_pid: int = 1) -> list[bytes]:
    return [RawPublisher.encode(t, p, (start_pid + i) % 65535 + 1) for i, (t, p) in enumerate(messages)]


# ------------------------------------------------------------------------------- (a) raw mosquitto
def bench_mosquitto(n: int) -> tuple[float, dict[str, float]]:
    """msg/s of QoS1 200-byte messages through a private broker with mosquitto_pub -l / mosquitto_sub."""
    if not shutil.which("mosquitto_pub"):
        raise SystemExit("mosquitto_pub not found: apt-get install -y mosquitto-clients")
    broker = MosquittoServer(**BROKER_LIMITS)
    broker.start()
    try:
        sub = subprocess.Popen(
            [
                "mosquitto_sub",
                "-h",
                broker.host,
                "-p",
                str(broker.port),
                "-q",
                "1",
                "-t",
                "bench/raw",
                "-C",
                str(n),
                "-i",
                "bench-sub",
            ],
            stdout=subprocess.DEVNULL,
            preexec_fn=dies_with_this_process(),
        )
        time.sleep(0.5)
        line = b"x" * 199 + b"\n"
        pub = subprocess.Popen(
            [
                "mosquitto_pub",
                "-h",
                broker.host,
                "-p",
                str(broker.port),
                "-q",
                "1",
                "-t",
                "bench/raw",
                "-l",
                "-i",
                "bench-pubraw",
            ],
            stdin=subprocess.PIPE,
            preexec_fn=dies_with_this_process(),
        )
        meter = CpuMeter({"mosquitto": broker.pid or 0, "mosquitto_pub": pub.pid, "mosquitto_sub": sub.pid})
        t0 = time.monotonic()
        assert pub.stdin is not None
        pub.stdin.write(line * n)
        pub.stdin.close()
        sub.wait(120)
        dt = time.monotonic() - t0
        cpu = meter.result()
        pub.wait(30)
        return n / dt, cpu
    finally:
        broker.close()


# -------------------------------------------------------------------------------- (b) raw influx
def bench_influx(influx: InfluxServer, n_points: int) -> tuple[float, dict[str, Any]]:
    """Best points/s over batch sizes 1,000 / 5,000 and 1 / 2 connections, bridge point shape."""
    base = int(time.time() * 1000) - 3_600_000
    results: dict[str, float] = {}
    for batch in (1000, 5000):
        for conns in (1, 2):
            db = f"raw_{batch}_{conns}"
            influx.query(f'CREATE DATABASE "{db}"')
            points = [
                Point(
                    f"dev{i % 1000}",
                    "bme280",
                    "room",
                    base + i,
                    {"temperature": 21.5, "humidity": 40.0, "pressure": 1013.2, "quality_score": 0.9},
                )
                for i in range(n_points)
            ]
            bodies = [encode_points(points[i : i + batch]) for i in range(0, n_points, batch)]
            path = f"/write?db={db}&precision=ms"

            def worker(mine: list[bytes], path: str = path) -> None:
                c = http.client.HTTPConnection(influx.host, influx.port, timeout=60)
                for body in mine:
                    while True:
                        c.request("POST", path, body, {"Content-Type": "text/plain"})
                        r = c.getresponse()
                        r.read()
                        if r.status == 204:
                            break
                        time.sleep(0.05)  # 500 "error syncing wal" under load: retry, never skip
                c.close()

            threads = [threading.Thread(target=worker, args=(bodies[k::conns],)) for k in range(conns)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            results[f"{batch}x{conns}"] = n_points / (time.monotonic() - t0)
    return max(results.values()), {k: round(v) for k, v in results.items()}


# ---------------------------------------------------------------------------------- (c) bridge
class Bridges:
    """``iotctl bridge run`` subprocesses on one shared subscription."""

    def __init__(self, n: int, env: dict[str, str], log_dir: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        iotctl = str(Path(sys.executable).with_name("iotctl"))
        for i in range(n):
            port = free_port()
            log = open(log_dir / f"bridge{i}.log", "ab")  # noqa: SIM115 - closed with the process
            e = {**env, "EDU_BRIDGE_CLIENT_ID": f"bench-bridge-{i}", "EDU_BRIDGE_METRICS_PORT": str(port)}
            self.procs.append(
                subprocess.Popen(
                    [iotctl, "bridge", "run", "--log-level", "WARNING"],
                    env=e,
                    stdout=log,
                    stderr=log,
                    preexec_fn=dies_with_this_process(),
                )
            )
            self.ports.append(port)

    def _metric(self, port: int, name: str) -> float:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith(name + " "):
                        return float(line.split()[1])
        except OSError:
            pass
        return 0.0

    def cpu_meter(self, server_pids: dict[str, int], bench_label: str) -> CpuMeter:
        """CPU of the servers, this process (as ``bench_label``) and each bridge, from now on."""
        pids = {**server_pids, bench_label: os.getpid()}
        pids.update({f"bridge{i}": p.pid for i, p in enumerate(self.procs)})
        return CpuMeter(pids)

    def ready(self) -> bool:
        for port in self.ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                    if r.status != 200:
                        return False
            except OSError:
                return False
        return True

    def slow_writes(self, over_s: float = 1.0) -> int:
        """Store writes (all replicas) that took longer than ``over_s`` (from the latency histogram)."""
        total = 0.0
        for p in self.ports:
            count = self._metric(p, "bridge_write_latency_seconds_count")
            fast = self._metric(p, f'bridge_write_latency_seconds_bucket{{le="{over_s}"}}')
            total += count - fast
        return int(total)

    def stored_readings(self) -> float:
        return sum(self._metric(p, "bridge_readings_stored_total") for p in self.ports)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def bridge_cpu_us(cores: dict[str, float], rate: float) -> float:
    """CPU microseconds the bridge processes spent per reading (or message) at ``rate`` per second."""
    used = sum(v for name, v in cores.items() if name.startswith("bridge"))
    return round(used / rate * 1e6, 1) if rate else 0.0


def wait(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(interval)


def signed_messages(
    topics: Topics, keys: dict[str, Any], per_msg: int, n_msgs: int, ts0: int
) -> list[tuple[str, bytes]]:
    devices = list(keys)
    out = []
    for k in range(n_msgs):
        d = devices[k % len(devices)]
        seq = k // len(devices) + 1
        out.append((topics.telemetry(d), seal_batch(make_batch(d, seq, per_msg, ts0=ts0), keys[d])))
    return out


def run_bridge_phase(
    name: str,
    *,
    broker: MosquittoServer,
    env: dict[str, str],
    replicas: int,
    log_dir: Path,
    messages: list[tuple[str, bytes]],
    per_msg: int,
    store_url: str,
    server_pids: dict[str, int],
) -> tuple[float, dict[str, float], int]:
    bridges = Bridges(replicas, env, log_dir)
    try:
        wait(bridges.ready, 60, "bridges ready")
        packets = encode_all(messages)
        total = len(messages) * per_msg
        pub = RawPublisher(broker.host, broker.port, client_id=f"bench-{name}")
        meter = bridges.cpu_meter(server_pids, "bench (publisher)")
        t0 = time.monotonic()
        sender = threading.Thread(target=lambda: (pub.send(packets), pub.drain()))
        sender.start()
        # The stored counter comes from each bridge's /metrics page, which costs the bridge CPU to
        # render: poll it every 0.5 s, and every 0.05 s near the end so the phase's time stays exact.
        deadline = t0 + 600
        while (stored := bridges.stored_readings()) < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: {total} readings stored (got {stored:.0f})")
            time.sleep(0.05 if stored >= 0.9 * total else 0.5)
        dt = time.monotonic() - t0
        cpu = meter.result()
        sender.join()
        pub.close()
    finally:
        bridges.stop()
    store = open_tsdb(store_url)
    counted = store.count()
    store.close()
    return total / dt, cpu, counted


def run_latency_phase(
    *,
    broker: MosquittoServer,
    env: dict[str, str],
    replicas: int,
    log_dir: Path,
    messages: list[tuple[str, bytes]],
    rate_msgs: float,
    topics: Topics,
    warmup: int,
    server_pids: dict[str, int],
) -> tuple[float, float, dict[str, float]]:
    """p50/p99 publish -> receipt of ``messages`` sent at ``rate_msgs``; the first ``warmup`` messages
    (the bridges' first writes: schema checks, cold caches) are sent at the same rate but not counted.
    Also the cores each process used meanwhile: a long tail with the cores full is CPU starvation (of
    the bridges, or of this process, which timestamps the receipts), not the bridge waiting."""
    bridges = Bridges(replicas, env, log_dir)
    rc = ReceiptCollector(broker.host, broker.port, topics)
    try:
        wait(bridges.ready, 60, "bridges ready")
        sent_at: dict[tuple[str, int], float] = {}
        keys = []
        for topic, payload in messages:
            device_id = topic.split("/")[-2]
            seq = orjson.loads(__import__("iot_protocol").jws.decode(payload).payload)["seq"]
            keys.append((device_id, seq))
        packets = encode_all(messages)
        pub = RawPublisher(broker.host, broker.port, client_id="bench-latency")
        meter = bridges.cpu_meter(server_pids, "bench (publisher, receipts)")
        t0 = time.monotonic()
        step = 0.01
        i = 0
        while i < len(packets):
            due = min(len(packets), int((time.monotonic() - t0) * rate_msgs) + 1)
            if due > i:
                now = time.time()
                for k in range(max(i, warmup), due):
                    sent_at[keys[k]] = now
                pub.send(packets[i:due])
                i = due
            time.sleep(step)
        pub.drain()
        wait(lambda: len(rc.stored()) >= len(messages), 60, "latency receipts")
        cpu = meter.result()
        lat = []
        seen: set[tuple[str, int]] = set()
        for at, device_id, receipt in list(rc.receipts):
            for seq in receipt.stored:
                k = (device_id, seq)
                if k in sent_at and k not in seen:
                    seen.add(k)
                    lat.append((at - sent_at[k]) * 1000)
        lat.sort()
        pub.close()
        slow = bridges.slow_writes(1.0)
        if slow:
            print(f"(d) note: {slow} store writes took over 1 s during the latency phase", file=sys.stderr)
        return statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.99))], cpu
    finally:
        rc.close()
        bridges.stop()


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mqtt-msgs", type=count, default=60_000, help="(a) messages (mosquitto_pub -l stops ~65k)")
    ap.add_argument("--influx-points", type=count, default=200_000, help="(b) points per configuration")
    ap.add_argument("--batch50", type=count, default=20_000, help="(c) messages of 50 readings (1M: sustained)")
    ap.add_argument("--single", type=count, default=60_000, help="(c) messages of 1 reading")
    ap.add_argument("--devices", type=count, default=200, help="devices publishing")
    ap.add_argument("--replicas", type=count, default=2, help="bridge processes on the shared subscription")
    ap.add_argument("--latency-s", type=seconds, default=10.0, help="(d) seconds of half-load traffic")
    ap.add_argument(
        "--protocol", default="5", choices=["5", "3.1.1"], help="the bridge's MQTT protocol (3.1.1: one replica)"
    )
    ap.add_argument(
        "--broker-inflight",
        type=count,
        default=BROKER_LIMITS["max_inflight_messages"],
        help="mosquitto max_inflight_messages for the bridge's broker",
    )
    ap.add_argument("--settle-s", type=pause, default=5.0, help="pause between phases (InfluxDB compaction)")
    ap.add_argument("--skip-raw", action="store_true", help="skip (a) and (b); ratios then use LIMITS.md's figures")
    args = ap.parse_args()
    if args.protocol == "3.1.1" and args.replicas > 1:
        ap.error("--protocol 3.1.1 subscribes without sharing (the amqtt fallback): use --replicas 1")

    rows: list[tuple[str, str, str]] = []
    out: dict[str, Any] = {"replicas": args.replicas, "devices": args.devices, "protocol": args.protocol}
    log_dir = Path(os.environ.get("BENCH_LOG_DIR", "/tmp/bench-ingest"))
    log_dir.mkdir(parents=True, exist_ok=True)

    print("(a) raw mosquitto ...", file=sys.stderr)
    mq_rate, mq_cpu = (41_000.0, {}) if args.skip_raw else bench_mosquitto(args.mqtt_msgs)
    out["mosquitto_qos1_msgs_per_s"] = round(mq_rate)
    rows.append(("raw mosquitto QoS1 200 B (mosquitto_pub -l -> mosquitto_sub)", f"{mq_rate:,.0f} msg/s", str(mq_cpu)))

    limits = {**BROKER_LIMITS, "max_inflight_messages": args.broker_inflight}
    out["broker_limits"] = limits
    influx, pg, redis, broker = InfluxServer(), PostgresServer(), RedisServer(), MosquittoServer(**limits)
    servers = [influx, pg, redis, broker]
    try:
        for s in servers:
            s.start()
        print("(b) raw influx ...", file=sys.stderr)
        ix_rate, ix_detail = (410_000.0, {}) if args.skip_raw else bench_influx(influx, args.influx_points)
        out["influx_points_per_s"] = round(ix_rate)
        out["influx_detail"] = ix_detail
        rows.append(
            ("raw InfluxDB line protocol (best of batch x connections)", f"{ix_rate:,.0f} points/s", str(ix_detail))
        )
        for db in ix_detail:  # drop the raw runs' data so their compaction does not tax the bridge phases
            influx.query(f'DROP DATABASE "raw_{db.replace("x", "_")}"')

        db_url = pg.create_database("bench")
        engine = make_engine(db_url)
        topics = Topics("bench")
        ts0 = int(time.time() * 1000) - 6 * 3_600_000
        print("signing ...", file=sys.stderr)
        keys50 = register_devices(engine, [f"b{i}" for i in range(args.devices)], location="bench")
        keys1 = register_devices(engine, [f"s{i}" for i in range(args.devices)], location="bench")
        keysl = register_devices(engine, [f"l{i}" for i in range(args.devices)], location="bench")
        engine.dispose()
        msgs50 = signed_messages(topics, keys50, 50, args.batch50, ts0)
        msgs1 = signed_messages(topics, keys1, 1, args.single, ts0)
        server_pids = {
            "mosquitto": broker.pid or 0,
            "influxd": influx.pid or 0,
            "redis": redis.pid or 0,
            "postgres": pg.pid or 0,
        }
        base_env = {
            **os.environ,
            "EDU_BRIDGE_MQTT_URL": broker.url,
            "EDU_BRIDGE_DB_URL": db_url,
            "EDU_BRIDGE_CACHE_URL": redis.url_for(0),
            "EDU_BRIDGE_TOPIC_PREFIX": "bench",
            "EDU_BRIDGE_SHARE_GROUP": "bench",
            "EDU_BRIDGE_MQTT_PROTOCOL": args.protocol,
            # The load generator is one publisher sending for many devices as fast as it can: the
            # per-device flood limit would throttle it, and throttling is not what this measures.
            "EDU_BRIDGE_RATE_LIMIT_MSGS_PER_S": "0",
        }

        def bridge_phase(
            tag: str, db: str, messages: list[tuple[str, bytes]], per_msg: int
        ) -> tuple[float, dict[str, float], int]:
            """One end-to-end phase into a fresh database: what run_bridge_phase measures."""
            time.sleep(args.settle_s)  # let influxd finish compacting the previous phase
            print(f"(c) bridge, {per_msg} reading(s) per message ...", file=sys.stderr)
            influx.query(f'CREATE DATABASE "{db}"')
            url = influx.url_for(db)
            return run_bridge_phase(
                tag,
                broker=broker,
                env={**base_env, "EDU_BRIDGE_TSDB_URL": url},
                replicas=args.replicas,
                log_dir=log_dir,
                messages=messages,
                per_msg=per_msg,
                store_url=url,
                server_pids=server_pids,
            )

        r50, cpu50, n50 = bridge_phase("b50", "bridge50", msgs50, 50)
        out["bridge_batch50_readings_per_s"] = round(r50)
        out["bridge_batch50_stored"] = n50
        out["bridge_batch50_expected"] = len(msgs50) * 50
        out["bridge_batch50_cpu_us_per_reading"] = bridge_cpu_us(cpu50, r50)
        rows.append(("bridge end to end, 50 readings/msg", f"{r50:,.0f} readings/s (counted {n50:,})", str(cpu50)))

        r1, cpu1, n1 = bridge_phase("s1", "bridge1", msgs1, 1)
        out["bridge_single_msgs_per_s"] = round(r1)
        out["bridge_single_stored"] = n1
        out["bridge_single_expected"] = len(msgs1)
        out["bridge_single_cpu_us_per_msg"] = bridge_cpu_us(cpu1, r1)
        rows.append(("bridge end to end, 1 reading/msg", f"{r1:,.0f} msg/s (counted {n1:,})", str(cpu1)))

        time.sleep(args.settle_s)  # let influxd finish compacting the previous phase
        print("(d) latency at half load ...", file=sys.stderr)
        rate = r50 / 50 / 2
        warmup = int(rate)  # one second
        n_lat = warmup + max(50, int(rate * args.latency_s))
        msgsl = signed_messages(topics, keysl, 50, n_lat, ts0)
        influx.query('CREATE DATABASE "bridgelat"')
        lat_env = {**base_env, "EDU_BRIDGE_TSDB_URL": influx.url_for("bridgelat")}
        p50, p99, cpul = run_latency_phase(
            broker=broker,
            env=lat_env,
            replicas=args.replicas,
            log_dir=log_dir,
            messages=msgsl,
            rate_msgs=rate,
            topics=topics,
            warmup=warmup,
            server_pids=server_pids,
        )
        out["latency_p50_ms"] = round(p50, 1)
        out["latency_p99_ms"] = round(p99, 1)
        out["latency_load_readings_per_s"] = round(rate * 50)
        rows.append(
            (
                f"publish -> receipt at half load ({rate * 50:,.0f} readings/s, 50/msg)",
                f"p50 {p50:.0f} ms, p99 {p99:.0f} ms",
                str(cpul),
            )
        )
    finally:
        for s in servers:
            with contextlib.suppress(Exception):
                s.close()

    out["ratio_batch50_to_influx"] = round(out["bridge_batch50_readings_per_s"] / out["influx_points_per_s"], 3)
    out["ratio_single_to_mosquitto"] = round(out["bridge_single_msgs_per_s"] / out["mosquitto_qos1_msgs_per_s"], 3)
    out["targets"] = targets = {k: f"{op} {lim}" for k, (op, lim) in TARGETS.items()}
    out["meets_targets"] = meets_targets(out)
    width = max(len(r[0]) for r in rows)
    print(f"{'stage'.ljust(width)}  {'result':<40}  cores used per process")
    for a, b, c in rows:
        print(f"{a.ljust(width)}  {b:<40}  {c}")
    print(
        f"ratios: batch50/influx {out['ratio_batch50_to_influx']}, "
        f"single/mosquitto {out['ratio_single_to_mosquitto']}"
        f" (targets {targets['ratio_batch50_to_influx']} and {targets['ratio_single_to_mosquitto']});"
        f" p99 {out['latency_p99_ms']} ms (target {targets['latency_p99_ms']});"
        f" meets targets: {out['meets_targets']}"
    )
    print(orjson.dumps(out).decode())


# Issue 20's targets, each a ratio to the raw reference measured in the same run (or a latency).
TARGETS: dict[str, tuple[str, float]] = {
    "ratio_single_to_mosquitto": (">=", 0.5),
    "ratio_batch50_to_influx": (">=", 0.6),
    "latency_p99_ms": ("<", 1000.0),
}


def meets_targets(out: dict[str, object]) -> bool:
    """Whether every figure of ``out`` named in TARGETS meets its target."""
    for key, (op, lim) in TARGETS.items():
        value = float(out[key])  # type: ignore[arg-type]
        if not (value >= lim if op == ">=" else value < lim):
            return False
    return True


if __name__ == "__main__":
    main()
