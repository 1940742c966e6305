"""Simulator scale: one process runs N devices (default 10,000) at one reading per 10 s each over
real MQTT connections to a private Mosquitto, with the real bridge (in a child process) sending
the receipts that keep every device's pipeline flowing.

    .venv/bin/python bench/sim_scale.py                  # 10,000 devices, ~3 min
    .venv/bin/python bench/sim_scale.py --devices 1000 --steady 30

Prints the device count, the message rate, the simulator process's CPU and memory, and as the last
line one JSON object with ``devices_connected``, ``msgs_per_s``, ``rss_mb_peak``, ``cpu_share_one_core``.

Broker limits used (stated, since defaults drop messages): iot_testing's MosquittoServer defaults
(max_queued_messages 100000, max_inflight_messages 100), ``max_connections -1``, and the file
descriptor limit raised to 65536 for this process and the broker it starts. CPU and RSS are the
simulator process's own (the broker and the bridge run in other processes on the same cores).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from benchargs import count, seconds

from cloud_core.broker.mosquitto_process import dies_with_this_process
from firmware_sim.fleet import Fleet, FleetSettings, device_key, raise_fd_limit
from firmware_sim.registration import register_in_db
from firmware_sim.scenario import parse_scenario
from iot_testing.servers import MosquittoServer

_BRIDGE = """
import sys, threading, signal
from broker_bridge import BridgeSettings, run_bridge
s = BridgeSettings(mqtt_url=sys.argv[1], db_url=sys.argv[2], tsdb_url=sys.argv[3], topic_prefix=sys.argv[4],
                   metrics_port=None, sys_topics=False, client_id="bench-sim-bridge")
run_bridge(s)
"""


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def trace_report(devices: int) -> None:
    """The Python heap (tracemalloc) per device, by allocating line: what C libraries (SQLite, the
    allocator's slack) hold does not show here, only in RSS."""
    snap = tracemalloc.take_snapshot()
    stats = snap.statistics("lineno")
    total = sum(s.size for s in stats)
    print(f"tracemalloc: {total / devices / 1024:.1f} KB of Python heap per device; largest lines:", file=sys.stderr)
    for s in stats[:20]:
        fr = s.traceback[0]
        print(
            f"  {s.size / devices / 1024:6.2f} KB  {fr.filename.split('/site-packages/')[-1]}:{fr.lineno}",
            file=sys.stderr,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=count, default=10_000)
    ap.add_argument("--interval", type=seconds, default=10.0, help="seconds between readings per device")
    ap.add_argument("--steady", type=seconds, default=60.0, help="seconds measured after all devices connected")
    ap.add_argument("--no-bridge", action="store_true", help="no receipts (devices stall at their inflight cap)")
    ap.add_argument(
        "--trace", action="store_true", help="tracemalloc: print where the Python heap per device goes (slower)"
    )
    args = ap.parse_args()

    raise_fd_limit(65536)
    work = Path(tempfile.mkdtemp(prefix="sim-scale-"))
    prefix = "simscale"
    sc = parse_scenario(
        {
            "simulation": {
                "name": "sim-scale",
                "seed": 1,
                "duration": args.steady + args.interval + 300.0,  # room to connect; it stops after steady
                "speed": 1.0,
                "topic_prefix": prefix,
            },
            "devices": [
                {
                    "count": args.devices,
                    "id_prefix": "s",
                    "sampling_interval": args.interval,
                    "transmission_interval": args.interval,
                    "batch_max_readings": 10,
                }
            ],
        }
    )
    plan = sc.plan()
    keys = {d.device_id: device_key(1, d.device_id) for d in plan.devices}
    db_url, ts_url = f"sqlite:///{work}/meta.db", f"sqlite:///{work}/readings.db"
    t0 = time.monotonic()
    register_in_db(db_url, plan.devices, keys)
    print(f"registered {args.devices} devices in {time.monotonic() - t0:.1f}s", file=sys.stderr)

    with MosquittoServer(max_connections=-1) as broker:
        bridge = None
        if not args.no_bridge:
            bridge = subprocess.Popen(
                [sys.executable, "-c", _BRIDGE, broker.url, db_url, ts_url, prefix],
                stdout=subprocess.DEVNULL, stderr=open(work / "bridge.log", "wb"),  # noqa: SIM115
                preexec_fn=dies_with_this_process(),
            )  # fmt: skip
            time.sleep(2.0)
        settings = FleetSettings(mqtt_url=broker.url, topic_prefix=prefix, connects_per_tick=200, drain_timeout_s=5)
        gc.collect()
        rss_before = rss_now_mb()  # the process before any device: interpreter, pydantic, SQLAlchemy, plan, keys
        if args.trace:
            tracemalloc.start(1)
        fleet = Fleet(plan, settings, keys=keys)
        rss_built = rss_now_mb()
        state: dict[str, float] = {}

        def tick(f: Fleet) -> None:
            now = time.monotonic()
            if "t_conn" not in state and f.connected >= args.devices:
                state["t_conn"] = now
                print(f"all {args.devices} connected after {now - t_start:.1f}s", file=sys.stderr)
            # Measure from one full transmission interval after the last connect (steady state).
            if "t_all" not in state and "t_conn" in state and now - state["t_conn"] >= args.interval + 1:
                state.update(t_all=now, m0=f.report.mqtt_messages, c0=cpu_seconds())
            if "t_all" in state and "t_end" not in state and now - state["t_all"] >= args.steady:
                state.update(t_end=now, m1=f.report.mqtt_messages, c1=cpu_seconds(), conn=f.connected)
                state["rss_steady"] = rss_now_mb()
                if args.trace:
                    trace_report(args.devices)
                f.stop()
            if now >= state.get("next_progress", 0.0):  # a progress line every 10 s, however slow the ticks
                state["next_progress"] = now + 10.0
                print(f"  t={now - t_start:5.1f}s connected={f.connected} msgs={f.report.mqtt_messages}"
                      f" rss={rss_now_mb():.0f}MB", file=sys.stderr)  # fmt: skip

        t_start = time.monotonic()
        report = fleet.run(on_tick=tick, drain=False)
        if bridge is not None:
            bridge.terminate()
            try:
                bridge.wait(30)  # it drains its last unit first
            except subprocess.TimeoutExpired:
                bridge.kill()
                bridge.wait()
    if "t_end" not in state:  # never reached the steady window: report what we had
        state.setdefault("t_all", t_start)
        state.setdefault("m0", 0)
        state.setdefault("c0", 0.0)
        state.update(t_end=time.monotonic(), m1=report.mqtt_messages, c1=cpu_seconds(), conn=report.connected_peak)
    window = state["t_end"] - state["t_all"]
    msgs_per_s = (state["m1"] - state["m0"]) / window if window > 0 else 0.0
    cpu_share = (state["c1"] - state["c0"]) / window if window > 0 else 0.0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_device_kb = (rss_mb - rss_before) * 1024 / args.devices
    expected = args.devices / args.interval
    print(f"devices connected   {int(state['conn'])} / {args.devices}")
    print(f"message rate        {msgs_per_s:.0f} msg/s (telemetry target {expected:.0f}/s + heartbeats)")
    print(f"readings stored     {report.stored} receipted of {report.produced} produced")
    print(f"simulator CPU       {cpu_share:.2f} of one core over {window:.0f}s")
    print(f"simulator RSS peak  {rss_mb:.0f} MB ({rss_before:.0f} MB before the fleet, {rss_built:.0f} MB once built)")
    print(f"per device          {per_device_kb:.0f} KB (peak less the process before the fleet; target < 100)")
    print(
        json.dumps(
            {
                "devices_connected": int(state["conn"]),
                "devices": args.devices,
                "msgs_per_s": round(msgs_per_s, 1),
                "target_readings_per_s": round(expected, 1),
                "rss_mb_peak": round(rss_mb, 1),
                "rss_mb_before_fleet": round(rss_before, 1),
                "rss_mb_fleet_built": round(rss_built, 1),
                "rss_mb_steady": round(state.get("rss_steady", 0.0), 1),
                "kb_per_device": round(per_device_kb, 1),
                "targets": {"kb_per_device": "< 100", "rss_mb_peak_at_10000_devices": "< 1024"},
                "meets_targets": int(state["conn"]) == args.devices
                and per_device_kb < 100
                and (args.devices < 10_000 or rss_mb < 1024),
                "at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "cpu_share_one_core": round(cpu_share, 3),
                "window_s": round(window, 1),
                "receipted_readings": report.stored,
                "produced_readings": report.produced,
                "pid": os.getpid(),
            }
        )
    )


if __name__ == "__main__":
    main()
