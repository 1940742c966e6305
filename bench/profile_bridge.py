"""Profile the bridges of one bench/ingest.py phase with py-spy, attached by pid.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile_bridge.py --phase bridge1 --seconds 10 --out /tmp/prof -- \
        --skip-raw --batch50 1000 --single 60000 --latency-s 1

Runs ``bench/ingest.py`` with the arguments after ``--``; when the bridges of the phase whose InfluxDB
database is ``--phase`` (``bridge50``, ``bridge1``, ``bridgelat``) are running, it attaches ``py-spy
record`` to each for ``--seconds`` (CPU samples only, all threads) and writes an SVG flame graph of the
first and the collapsed stacks (``--format raw``) of the others into ``--out``. Attaching costs the
bridges CPU: take figures from separate runs. ``--breakdown FILE --us-per-msg X`` prints the per-stage
table of a raw file (docs/performance.md, "The single-reading path, per stage").
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# Leaves that are waits, not CPU: py-spy's own idle detection lets them through on this machine.
IDLE = (
    "Condition.wait",
    "_PollLikeSelector.select",
    "Connection.wait (psycopg",
    "SocketIO.readinto",
    "Event.wait",
    "select (selectors",
    "sleep",
    "_HiredisParser.read_from_socket",
)
STAGES = [  # (stage, markers) checked leaf-upwards: the innermost match wins
    ("Ed25519 verify (libsodium)", ["crypto_sign_open", "verify (iot_protocol/jws"]),
    ("JWS split + base64url", ["decode (iot_protocol/jws", "b64url_decode"]),
    ("batch decode (msgspec)", ["decode_verified_batch", "decode_batch_fast", "decode_wire"]),
    ("checks -> points", ["checked_batch", "_check (broker_bridge/pipeline"]),
    ("payload SHA-256", ["payload_hash"]),
    ("topic parse", ["Topics.parse", "_parse (iot_protocol/topics"]),
    ("registry lookup", ["KeyDirectory.lookup"]),
    ("rate limit / quota gate", ["_rate_limited", "QuotaGate.check", "QuotaGate.charge"]),
    ("process() rest", ["process (broker_bridge/pipeline"]),
    ("submit: unit, counters", ["Ingest.submit"]),
    ("paho callback + Inbound", ["MqttConsumer._message"]),
    ("line protocol", ["encode_points"]),
    ("InfluxDB write (HTTP)", ["write_encoded", "InfluxStore.write", "_write_points"]),
    ("dedup/replay check (ledger lookup)", ["Ingest._decide"]),
    ("stored-key check", ["_check_stored_keys"]),
    ("ledger record (PostgreSQL)", ["Ingest._record", "Ledger.record"]),
    ("receipts + PUBACKs", ["_flush_receipts"]),
    ("writer: _finish rest (ledger memory, effects hand-off)", ["Ingest._finish"]),
    ("writer: rest", ["bridge-writer"]),
    ("side effects: Redis", ["_flush_cache"]),
    ("side effects: PostgreSQL", ["_flush_db"]),
    ("side effects: rest", ["bridge-effects"]),
    ("MQTT read (socket, PUBLISH parse, paho)", ["paho-mqtt-client"]),
    ("/metrics, quotas, other", [""]),
]


def stage_of(frames: list[str]) -> str:
    for f in reversed(frames):
        for name, marks in STAGES[:-1]:
            if any(m and m in f for m in marks):
                return name
    return STAGES[-1][0]


def breakdown(paths: list[Path], us_per_msg: float) -> str:
    """A markdown table: each stage's share of the bridges' CPU samples (idle ones dropped) and its
    microseconds per message, given the bridges' CPU per message from bench/ingest.py."""
    total = idle = 0
    count: collections.Counter[str] = collections.Counter()
    for path in paths:
        for line in path.read_text().splitlines():
            stack, n_ = line.rsplit(" ", 1)
            n = int(n_)
            frames = stack.split(";")
            if "MainThread" in frames[0]:  # start-up
                continue
            if any(m in frames[-1] for m in IDLE):
                idle += n
                continue
            total += n
            count[stage_of(frames)] += n
    out = [f"samples {total} (+{idle} idle dropped); {us_per_msg} us of bridge CPU per message"]
    out += ["| stage | share of bridge CPU | µs per message |", "|---|---|---|"]
    for name, _ in STAGES:
        if count[name]:
            out.append(f"| {name} | {count[name] / total * 100:.1f}% | {count[name] / total * us_per_msg:.1f} |")
    return "\n".join(out)


def bridge_pids(phase: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            if b"bridge\0run" not in cmd:
                continue
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for var in env:
            if var.startswith(b"EDU_BRIDGE_TSDB_URL=") and var.rstrip(b"/").endswith(b"/" + phase.encode()):
                pids.append(int(proc.name))
    return pids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", default="bridge1")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--delay-s", type=float, default=2.0, help="wait after the bridges start (start-up)")
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bridge-profile"))
    ap.add_argument("--breakdown", type=Path, nargs="+", help="only print the per-stage table of these raw files")
    ap.add_argument("--us-per-msg", type=float, default=100.0, help="bridge CPU per message, for --breakdown")
    ap.add_argument("ingest_args", nargs="*")
    args = ap.parse_args()
    if args.breakdown:
        print(breakdown(args.breakdown, args.us_per_msg))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).with_name("py-spy"))
    bench = subprocess.Popen([sys.executable, str(ROOT / "bench" / "ingest.py"), *args.ingest_args])
    pids: list[int] = []
    while bench.poll() is None and len(pids) < 1:
        time.sleep(0.2)
        pids = bridge_pids(args.phase)
    time.sleep(args.delay_s)
    pids = bridge_pids(args.phase)
    spies = []
    for i, pid in enumerate(pids):  # the replicas do the same work: a flame graph of one, stacks of the other
        fmt, ext = ("flamegraph", "svg") if i == 0 else ("raw", "txt")
        out = args.out / f"{args.phase}-{pid}.{ext}"
        cmd = [spy, "record", "--pid", str(pid), "--duration", str(args.seconds), "--rate", str(args.rate), "--threads"]
        spies.append(subprocess.Popen([*cmd, "--format", fmt, "-o", str(out)]))
    for s in spies:
        s.wait()
    sys.exit(bench.wait())


if __name__ == "__main__":
    main()
