"""Side by side: our bridge against Node-RED + node-red-contrib-influxdb, interleaved, same load.

    .venv/bin/python bench/peer_nodered.py                   # 2 rounds, about 4-6 minutes
    .venv/bin/python bench/peer_nodered.py --rounds 3 --single 40000 --batch50 10000

Installs nothing. Node-RED is looked for under ``--prefix`` (default ``$EDU_NODERED_PREFIX`` or
``~/.cache/edu-platform/node-red-peer``); install it there once with the line this script prints
when it is missing:

    npm install --prefix ~/.cache/edu-platform/node-red-peer node-red@4.1 node-red-contrib-influxdb@0.7.0

Without it the script says so, prints ``{"peer": null, ...}`` as its last line and exits 0.

With it, one Mosquitto (max_queued_messages 10,000,000, max_inflight_messages 1000) and one InfluxDB
1.6 (plus PostgreSQL and Redis for the bridge) serve both contenders. Each round runs, in alternating
order, (1) our bridge (2 ``iotctl bridge run`` replicas on a shared subscription, Ed25519 on every
message, dedup, ledger: ``bench/ingest.py``'s phase) and (2) the peer's best flow

    mqtt in (QoS 1, parsed JSON) -> join (10,000 readings' messages or 0.2 s)
        -> function (the joined batches -> points) -> influxdb batch

with signed batches of 50 readings and of 1 reading from 200 devices, published by the same
pre-encoded QoS 1 publisher. The peer gets the same batches unsigned (the batch JSON the signature
covers): it checks no signature and dedups nothing. The completion rule is the same for both: the
clock stops when the contender has written every reading (the bridges' stored counter; the peer's
count of points its ``influxdb batch`` node completed or failed), and the points are then counted in
InfluxDB. Unless ``--no-out-node``, the plain per-message ``influxdb out`` flow also gets the
single-reading load once, and InfluxDB's count is watched until it stops growing: that node writes
every message as its own request and retries nothing, so what InfluxDB refuses under the flood is
lost after Mosquitto was acknowledged (a finding, not a contender).

Last line: one JSON object with each round's figures, the ratios ours/peer and the targets
(ours >= 0.5x the peer at 1 reading/msg, >= 2x at 50 readings/msg).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchargs import count, pause

NODE_RED = "node-red@4.1"
CONTRIB = "node-red-contrib-influxdb@0.7.0"
DEFAULT_PREFIX = "~/.cache/edu-platform/node-red-peer"
TARGETS = {"ratio_single_to_peer": 0.5, "ratio_batch50_to_peer": 2.0}
BENCH_DIR = Path(__file__).resolve().parent


def install_line(prefix: Path) -> str:
    return f"npm install --prefix {prefix} {NODE_RED} {CONTRIB}"


def find_peer(prefix: Path) -> tuple[str, Path] | None:
    """(node binary, red.js) when Node.js, Node-RED and node-red-contrib-influxdb are all present."""
    node = shutil.which("node")
    red = prefix / "node_modules" / "node-red" / "red.js"
    contrib = prefix / "node_modules" / "node-red-contrib-influxdb" / "influxdb.js"
    if node is None or not red.is_file() or not contrib.is_file():
        return None
    return node, red


# --------------------------------------------------------------------------------------- flows
TO_POINTS = """
const out = [];
for (const b of msg.payload) {
    for (const r of b.readings) {
        const f = Object.assign({}, r.values);
        f.quality_score = r.quality === undefined ? 1.0 : r.quality;
        out.push({measurement: "sensor_readings",
                  tags: {device_id: b.device_id, sensor_type: r.sensor_type, location: "bench"},
                  fields: f, timestamp: r.ts});
    }
}
msg.payload = out;
return msg;
"""

TO_OUT_POINTS = """
const b = msg.payload;
msg.measurement = "sensor_readings";
msg.payload = b.readings.map(r => {
    const f = Object.assign({}, r.values);
    f.quality_score = r.quality === undefined ? 1.0 : r.quality;
    f.time = r.ts;
    return [f, {device_id: b.device_id, sensor_type: r.sensor_type, location: "bench"}];
});
return msg;
"""

COUNT = """
const n = Array.isArray(msg.payload) ? msg.payload.length : 1;
const k = msg.error ? "failed" : "ok";
global.set(k, (global.get(k) || 0) + n);
return null;
"""

REPORT = """
msg.payload = {ok: global.get("ok") || 0, failed: global.get("failed") || 0, probe: global.get("probe") || 0};
return msg;
"""
PROBE_TOPIC = "bench/peer-probe"


def flow(
    *, mqtt_port: int, influx_port: int, db: str, topic: str, out_node: bool, join_points: int, per_msg: int
) -> list[dict[str, Any]]:
    """The peer's flow: batched (join -> influxdb batch) or the plain per-message influxdb out node."""
    z = "peer"
    nodes: list[dict[str, Any]] = [
        {"id": z, "type": "tab", "label": "peer"},
        {
            "id": "broker",
            "type": "mqtt-broker",
            "broker": "127.0.0.1",
            "port": str(mqtt_port),
            "clientid": f"peer-nodered-{db}",
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
            "autoConnect": True,
        },
        {
            "id": "idb",
            "type": "influxdb",
            "hostname": "127.0.0.1",
            "port": str(influx_port),
            "database": db,
            "influxdbVersion": "1.x",
        },
        {
            "id": "in",
            "type": "mqtt in",
            "z": z,
            "topic": topic,
            "qos": "1",
            "datatype": "json",
            "broker": "broker",
            "nl": False,
            "rap": True,
            "rh": 0,
            "inputs": 0,
            "wires": [["topoints" if out_node else "join"]],
        },
        {
            "id": "probe",
            "type": "mqtt in",
            "z": z,
            "topic": PROBE_TOPIC,
            "qos": "1",
            "datatype": "utf8",
            "broker": "broker",
            "nl": False,
            "rap": True,
            "rh": 0,
            "inputs": 0,
            "wires": [["probed"]],
        },
        {
            "id": "probed",
            "type": "function",
            "z": z,
            "func": 'global.set("probe", 1);\nreturn null;',
            "outputs": 0,
            "wires": [],
        },
        {"id": "count", "type": "function", "z": z, "func": COUNT, "outputs": 0, "wires": []},
        {"id": "http", "type": "http in", "z": z, "url": "/peer-count", "method": "get", "wires": [["report"]]},
        {"id": "report", "type": "function", "z": z, "func": REPORT, "outputs": 1, "wires": [["resp"]]},
        {"id": "resp", "type": "http response", "z": z, "statusCode": "", "headers": {}, "wires": []},
        {"id": "done", "type": "complete", "z": z, "scope": ["sink"], "uncaught": False, "wires": [["count"]]},
        {"id": "err", "type": "catch", "z": z, "scope": ["sink"], "uncaught": False, "wires": [["count"]]},
    ]
    if out_node:
        nodes += [
            {"id": "topoints", "type": "function", "z": z, "func": TO_OUT_POINTS, "outputs": 1, "wires": [["sink"]]},
            {
                "id": "sink",
                "type": "influxdb out",
                "z": z,
                "influxdb": "idb",
                "measurement": "sensor_readings",
                "precision": "ms",
                "retentionPolicy": "",
                "wires": [],
            },
        ]
    else:  # join the parsed batches first: one function call per write, not one per message
        nodes += [
            {
                "id": "join",
                "type": "join",
                "z": z,
                "mode": "custom",
                "build": "array",
                "property": "payload",
                "propertyType": "msg",
                "key": "topic",
                "joiner": "\\n",
                "joinerType": "str",
                "accumulate": False,
                "timeout": "0.2",
                "count": str(max(1, join_points // per_msg)),
                "reduceRight": False,
                "wires": [["topoints"]],
            },
            {"id": "topoints", "type": "function", "z": z, "func": TO_POINTS, "outputs": 1, "wires": [["sink"]]},
            {
                "id": "sink",
                "type": "influxdb batch",
                "z": z,
                "influxdb": "idb",
                "precision": "ms",
                "retentionPolicy": "",
                "wires": [],
            },
        ]
    for i, n in enumerate(nodes):
        if "z" in n:  # Node-RED takes a node without a position for a config node
            n.update(x=100 + 150 * (i % 6), y=100 + 60 * (i // 6))
    return nodes


class NodeRed:
    """One Node-RED process with one flow, in a fresh user directory."""

    def __init__(self, node: str, red: Path, work: Path, nodes: list[dict[str, Any]], port: int) -> None:
        work.mkdir(parents=True, exist_ok=True)
        (work / "flows.json").write_text(json.dumps(nodes))
        (work / "flows_cred.json").write_text(json.dumps({"idb": {"username": "", "password": ""}}))
        (work / "settings.js").write_text(
            f"module.exports = {{flowFile: 'flows.json', credentialSecret: false, uiPort: {port},"
            " uiHost: '127.0.0.1', httpAdminRoot: '/admin', httpNodeRoot: '/', logging: {console: {level: 'warn'}},"
            " editorTheme: {tours: false}, telemetry: {enabled: false}};\n"
        )
        self.port = port
        self.log = work / "node-red.log"
        from cloud_core.broker.mosquitto_process import dies_with_this_process  # on sys.path via ingest

        self.proc = subprocess.Popen(
            [node, str(red), "--userDir", str(work), "--settings", str(work / "settings.js")],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            preexec_fn=dies_with_this_process(),
        )

    def _report(self) -> dict[str, int] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/peer-count", timeout=2) as r:
                return {k: int(v) for k, v in json.loads(r.read()).items()}
        except OSError:
            return None

    def counts(self) -> tuple[int, int]:
        """(points written, points whose write failed), as the flow's complete/catch nodes counted."""
        d = self._report()
        return (-1, -1) if d is None else (d["ok"], d["failed"])

    def wait_ready(self, probe: Any, timeout: float = 60) -> None:
        """Until the flow answers over HTTP and a probe published to PROBE_TOPIC has reached it (its
        MQTT subscriptions are live); ``probe()`` publishes one."""
        deadline = time.monotonic() + timeout
        while not (d := self._report()) or not d["probe"]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"Node-RED did not start (see {self.log}):\n{tail}")
            if d is not None:
                probe()
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ---------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--prefix",
        type=Path,
        default=Path(os.environ.get("EDU_NODERED_PREFIX", DEFAULT_PREFIX)).expanduser(),
        help="npm prefix holding node-red and node-red-contrib-influxdb",
    )
    ap.add_argument("--rounds", type=count, default=2, help="rounds, each ours and the peer at 50/msg and 1/msg")
    ap.add_argument("--batch50", type=count, default=20_000, help="messages of 50 readings per phase")
    ap.add_argument("--single", type=count, default=60_000, help="messages of 1 reading per phase")
    ap.add_argument("--devices", type=count, default=200)
    ap.add_argument("--replicas", type=count, default=2, help="our bridge processes")
    ap.add_argument("--join-points", type=count, default=10_000, help="the peer's join: points per write")
    ap.add_argument("--settle-s", type=pause, default=5.0, help="pause between phases (InfluxDB compaction)")
    ap.add_argument("--no-out-node", dest="out_node", action="store_false", help="skip the influxdb out finding")
    args = ap.parse_args()
    prefix = args.prefix.expanduser().resolve()

    found = find_peer(prefix)
    if found is None:
        line = install_line(prefix)
        why = "node is not on PATH" if shutil.which("node") is None else f"Node-RED is not installed under {prefix}"
        print(f"peer benchmark skipped: {why}. Install it once (needs npm and the npm registry) with:", file=sys.stderr)
        print(f"  {line}", file=sys.stderr)
        print(json.dumps({"peer": None, "ours": None, "install": line, "prefix": str(prefix), "targets": TARGETS}))
        return
    node, red = found
    run(args, node, red, prefix)


def run(args: argparse.Namespace, node: str, red: Path, prefix: Path) -> None:
    sys.path.insert(0, str(BENCH_DIR))
    import ingest  # bench/ingest.py: the publisher, our bridge's phase, CPU meters

    from broker_bridge.testing import make_batch, register_devices
    from cloud_core.core.db import make_engine
    from cloud_core.tsdb import open_tsdb
    from iot_protocol import Topics, encode
    from iot_testing.servers import MosquittoServer, PostgresServer, RedisServer, free_port

    version = json.loads((prefix / "node_modules" / "node-red" / "package.json").read_text())["version"]
    contrib = json.loads((prefix / "node_modules" / "node-red-contrib-influxdb" / "package.json").read_text())
    log_dir = Path(os.environ.get("BENCH_LOG_DIR", "/tmp/bench-peer"))
    log_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {
        "node_red": version,
        "node_red_contrib_influxdb": contrib["version"],
        "broker_limits": ingest.BROKER_LIMITS,
        "replicas": args.replicas,
        "devices": args.devices,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_1min": os.getloadavg()[0],
    }
    influx, pg, redis = ingest.InfluxServer(), PostgresServer(), RedisServer()
    broker = MosquittoServer(**ingest.BROKER_LIMITS)
    servers = [influx, pg, redis, broker]
    rounds: list[dict[str, Any]] = []
    try:
        for s in servers:
            s.start()
        db_url = pg.create_database("bench")
        engine = make_engine(db_url)
        topics = Topics("bench")
        ts0 = int(time.time() * 1000) - 6 * 3_600_000
        server_pids = {"mosquitto": broker.pid or 0, "influxd": influx.pid or 0, "redis": redis.pid or 0,
                       "postgres": pg.pid or 0}  # fmt: skip
        base_env = {
            **os.environ,
            "EDU_BRIDGE_MQTT_URL": broker.url,
            "EDU_BRIDGE_DB_URL": db_url,
            "EDU_BRIDGE_CACHE_URL": redis.url_for(0),
            "EDU_BRIDGE_TOPIC_PREFIX": "bench",
            "EDU_BRIDGE_SHARE_GROUP": "bench",
            "EDU_BRIDGE_RATE_LIMIT_MSGS_PER_S": "0",
        }
        dbn = iter(range(10_000))

        def plain(per_msg: int, n: int, tag: str) -> list[tuple[str, bytes]]:
            devs = [f"{tag}{i}" for i in range(args.devices)]
            return [
                (topics.telemetry(devs[k % len(devs)]),
                 encode(make_batch(devs[k % len(devs)], k // len(devs) + 1, per_msg, ts0=ts0)))
                for k in range(n)
            ]  # fmt: skip

        def ours(per_msg: int, n: int, tag: str) -> dict[str, Any]:
            keys = register_devices(engine, [f"{tag}{i}" for i in range(args.devices)], location="bench")
            msgs = ingest.signed_messages(topics, keys, per_msg, n, ts0)
            time.sleep(args.settle_s)
            db = f"ours{next(dbn)}"
            influx.query(f'CREATE DATABASE "{db}"')
            url = influx.url_for(db)
            print(f"  ours, {per_msg}/msg ...", file=sys.stderr)
            rate, cpu, counted = ingest.run_bridge_phase(
                tag, broker=broker, env={**base_env, "EDU_BRIDGE_TSDB_URL": url}, replicas=args.replicas,
                log_dir=log_dir, messages=msgs, per_msg=per_msg, store_url=url, server_pids=server_pids,
            )  # fmt: skip
            readings = rate  # run_bridge_phase reports readings per second
            return {
                "readings_per_s": round(readings),
                "stored": counted,
                "expected": n * per_msg,
                "cpu_us_per_reading": ingest.bridge_cpu_us(cpu, readings),
                "cores": cpu,
            }

        def peer(per_msg: int, n: int, tag: str, *, out_node: bool = False) -> dict[str, Any]:
            msgs = plain(per_msg, n, tag)
            time.sleep(args.settle_s)
            db = f"peer{next(dbn)}"
            schema = open_tsdb(influx.url_for(db))
            schema.init_schema()  # the platform's schema (retention policies, continuous queries) for both
            schema.close()
            port = free_port()
            nodes = flow(
                mqtt_port=broker.port, influx_port=influx.port, db=db, topic="bench/devices/+/telemetry",
                out_node=out_node, join_points=args.join_points, per_msg=per_msg,
            )  # fmt: skip
            print(f"  peer ({'influxdb out' if out_node else 'batch'}), {per_msg}/msg ...", file=sys.stderr)
            nr = NodeRed(node, red, log_dir / f"nodered-{db}", nodes, port)
            total = n * per_msg
            try:
                nr.wait_ready(lambda: _probe(ingest, broker))
                packets = ingest.encode_all(msgs)
                pub = ingest.RawPublisher(broker.host, broker.port, client_id=f"bench-{tag}")
                meter = ingest.CpuMeter({**server_pids, "bench (publisher)": os.getpid(), "node-red": nr.proc.pid})
                t0 = time.monotonic()
                sender = threading.Thread(target=lambda: (pub.send(packets), pub.drain()))
                sender.start()
                last, last_change = (0, 0), time.monotonic()
                while out_node:  # the flood: its HTTP counter starves, so watch InfluxDB's count
                    time.sleep(2)
                    ok, failed = _count(open_tsdb, influx.url_for(db)), 0
                    if ok >= total:
                        break
                    if ok != last[0]:
                        last, last_change = (ok, 0), time.monotonic()
                    elif time.monotonic() - last_change > 20 or time.monotonic() - t0 > 600:
                        break
                while not out_node:
                    ok, failed = nr.counts()
                    now = time.monotonic()
                    if ok + failed >= total:
                        break
                    if (ok, failed) != last:
                        last, last_change = (ok, failed), now
                    elif now - last_change > 30:
                        print(f"  peer stalled at {ok} written, {failed} failed of {total}", file=sys.stderr)
                        break
                    time.sleep(0.05 if ok + failed >= 0.9 * total else 0.5)
                # the flood that stopped short: its rate up to the last point InfluxDB kept
                dt = (last_change if out_node and ok < total else time.monotonic()) - t0
                cpu = meter.result()
                sender.join()
                pub.close()
            finally:
                nr.stop()
            counted = _count(open_tsdb, influx.url_for(db))
            node_cpu = cpu.get("node-red", 0.0)
            errors = [ln for ln in nr.log.read_text(errors="replace").splitlines() if "[error]" in ln]
            return {
                "node_red_errors_logged": len(errors),
                "node_red_first_error": errors[0][:300] if errors else None,
                "readings_per_s": round(counted / dt),
                "stored": counted,
                "expected": total,
                "write_failed_points": failed,
                "cpu_us_per_reading": round(node_cpu / (counted / dt) * 1e6, 1) if counted else 0.0,
                "cores": cpu,
            }

        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            res: dict[str, Any] = {"round": r + 1, "at_utc": time.strftime("%H:%M:%S", time.gmtime())}
            order = ["ours", "peer"] if r % 2 == 0 else ["peer", "ours"]
            for who in order:
                fn = ours if who == "ours" else peer
                res[f"{who}_batch50"] = fn(50, args.batch50, f"r{r}{who[0]}b")
                res[f"{who}_single"] = fn(1, args.single, f"r{r}{who[0]}s")
            for kind in ("batch50", "single"):
                p = res[f"peer_{kind}"]["readings_per_s"]
                res[f"ratio_{kind}_to_peer"] = round(res[f"ours_{kind}"]["readings_per_s"] / p, 3) if p else None
            rounds.append(res)
            print(
                f"round {r + 1}: ours {res['ours_batch50']['readings_per_s']:,}/s at 50/msg, "
                f"{res['ours_single']['readings_per_s']:,}/s at 1/msg; peer {res['peer_batch50']['readings_per_s']:,}"
                f" and {res['peer_single']['readings_per_s']:,}; ratios {res['ratio_batch50_to_peer']}"
                f" and {res['ratio_single_to_peer']}",
                file=sys.stderr,
            )
        if args.out_node:
            out["peer_influxdb_out_single"] = peer(1, args.single, "outs", out_node=True)
        engine.dispose()
    finally:
        for s in servers:
            try:
                s.close()
            except Exception as e:  # shutting down: report, go on
                print(f"closing {type(s).__name__}: {e}", file=sys.stderr)

    out["rounds"] = rounds
    for kind in ("batch50", "single"):
        ratios = [r[f"ratio_{kind}_to_peer"] for r in rounds if r[f"ratio_{kind}_to_peer"] is not None]
        out[f"ratio_{kind}_to_peer"] = ratios
        out[f"ours_{kind}_readings_per_s"] = [r[f"ours_{kind}"]["readings_per_s"] for r in rounds]
        out[f"peer_{kind}_readings_per_s"] = [r[f"peer_{kind}"]["readings_per_s"] for r in rounds]
        out[f"ratio_{kind}_to_peer_median"] = statistics.median(ratios) if ratios else None
    out["peer"] = {k: out[f"peer_{k}_readings_per_s"] for k in ("batch50", "single")}
    out["ours"] = {k: out[f"ours_{k}_readings_per_s"] for k in ("batch50", "single")}
    out["all_stored"] = all(
        r[f"{w}_{k}"]["stored"] == r[f"{w}_{k}"]["expected"]
        for r in rounds
        for w in ("ours", "peer")
        for k in ("batch50", "single")
    )
    out["targets"] = TARGETS
    out["meets_targets"] = bool(rounds) and all(min(out[k]) >= lim if out[k] else False for k, lim in TARGETS.items())
    rows = [("", "ours", "Node-RED", "ratio", "target")]
    for kind, label in (("batch50", "50 readings/msg (readings/s)"), ("single", "1 reading/msg (readings/s)")):
        rows.append(
            (
                label,
                ", ".join(f"{v:,}" for v in out["ours"][kind]),
                ", ".join(f"{v:,}" for v in out["peer"][kind]),
                ", ".join(str(v) for v in out[f"ratio_{kind}_to_peer"]),
                f">= {TARGETS[f'ratio_{kind}_to_peer']}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        cells = [r[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(r[1:], widths[1:], strict=True))]
        print("  ".join(cells))
    if "peer_influxdb_out_single" in out:
        o = out["peer_influxdb_out_single"]
        print(f"Node-RED influxdb out (per message, 1/msg): {o['stored']:,} of {o['expected']:,} stored")
    print(json.dumps(out))


def _count(open_tsdb: Any, url: str) -> int:
    store = open_tsdb(url)
    try:
        return int(store.count())
    finally:
        store.close()


def _probe(ingest: Any, broker: Any) -> None:
    p = ingest.RawPublisher(broker.host, broker.port, client_id="bench-probe")
    p.send([p.encode(PROBE_TOPIC, b"probe", 1)])
    p.drain(10)
    p.close()


if __name__ == "__main__":
    main()
