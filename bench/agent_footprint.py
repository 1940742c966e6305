"""Footprint of the edge agent: peak RSS and CPU share of `iotctl agent run` at 1 Hz with 3 sensors
(simulated environment, cpu_temp, command) against a private Mosquitto and the real bridge, and the
SQLite buffer's write and drain rates on this machine.

    .venv/bin/python bench/agent_footprint.py [--duration 180] [--readings 50000]

Prints a table; the last line is one JSON object with rss_mb_peak, cpu_share_one_core,
buffer_write_readings_per_s, drain_readings_per_s, the RSS each imported package adds
(``import_rss_mb``, from the agent's own ``-X importtime`` list replayed one module at a time), and
the targets. Targets (issue 20): < 25 MB peak RSS, < 1% of one core, drain >= 5,000 readings/s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchargs import count, seconds

from cloud_core.broker.mosquitto_process import dies_with_this_process
from edge_agent.buffer import Buffer
from iot_protocol import Reading, generate_private_key, public_key_b64

TICK = os.sysconf("SC_CLK_TCK")
IOTCTL = str(Path(sys.executable).with_name("iotctl"))


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def proc_rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":", 1)
            vals[k] = int(v.split()[0]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


def bench_buffer(tmp: Path, n: int) -> dict[str, float]:
    key = generate_private_key()
    buf = Buffer(tmp / "bench.db", max_rows=10 * n)  # the agent's defaults: WAL, synchronous=FULL
    t0 = 1_750_000_000_000
    per_tick = 3  # the sampler commits one transaction per sampling tick with one reading per sensor
    t = time.perf_counter()
    for i in range(n // per_tick):
        buf.add([Reading(t0 + i * 1000, f"s{k}", {"temperature": 21.5, "humidity": 40.2}) for k in range(per_tick)])
    write_rate = (n // per_tick) * per_tick / (time.perf_counter() - t)
    t = time.perf_counter()
    drained = 0
    while (b := buf.next_batch("bench", key, max_readings=100, now_ms=t0)) is not None:
        drained += buf.ack([b.seq])
    drain_rate = drained / (time.perf_counter() - t)
    buf.close()
    return {"buffer_write_readings_per_s": round(write_rate), "drain_readings_per_s": round(drain_rate)}


def bench_agent(tmp: Path, duration: float) -> dict[str, float]:
    from broker_bridge import Bridge, BridgeSettings
    from broker_bridge.testing import register_devices
    from cloud_core.core.db import make_engine
    from edge_agent.identity import write_identity
    from iot_testing.servers import MosquittoServer

    broker = MosquittoServer()
    broker.start()
    db_url = f"sqlite:///{tmp / 'meta.db'}"
    key = register_devices(make_engine(db_url), ["bench-pi"])["bench-pi"]
    cloud = public_key_b64(generate_private_key())
    write_identity(
        tmp / "identity",
        key,
        {"device_id": "bench-pi", "mqtt_url": broker.url, "topic_prefix": "bench", "cloud_public_key": cloud},
    )
    (tmp / "thermal").write_text("47250\n")
    cfg = tmp / "agent.toml"
    cfg.write_text(
        'identity_dir = "identity"\nbuffer_path = "buffer.db"\nsampling_interval_s = 1.0\n'
        'transmission_interval_s = 5.0\nheartbeat_interval_s = 30\nlog_level = "WARNING"\n'
        '[[sensors]]\ntype = "simulated"\n'
        f'[[sensors]]\ntype = "cpu_temp"\npath = "{tmp / "thermal"}"\n'
        '[[sensors]]\ntype = "command"\nsensor_type = "probe"\ncommand = ["/bin/echo", "{\\"lux\\": 120}"]\n'
    )
    bridge = Bridge(
        BridgeSettings(
            mqtt_url=broker.url,
            db_url=db_url,
            tsdb_url=f"sqlite:///{tmp / 'r.db'}",
            topic_prefix="bench",
            metrics_port=None,
            sys_topics=False,
        )
    )
    bridge.start()
    bridge.wait_ready(15)
    # -X importtime's list of what the agent imported (stderr): replayed by import_breakdown
    agent = subprocess.Popen(
        [IOTCTL, "agent", "run", "--config", str(cfg)],
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
        stderr=(tmp / "agent.stderr").open("wb"),
        preexec_fn=dies_with_this_process(),
    )
    try:
        time.sleep(5)  # start-up (imports, connect) is not the steady state
        cpu0, wall0 = proc_cpu_s(agent.pid), time.monotonic()
        peak = 0.0
        while time.monotonic() - wall0 < duration:
            time.sleep(1)
            peak = max(peak, proc_rss_mb(agent.pid)[0])
        cpu1, wall1 = proc_cpu_s(agent.pid), time.monotonic()
        rss_now, hwm = proc_rss_mb(agent.pid)
        # the agent must not load pydantic (~11 MB): its compiled core would be mapped
        maps = Path(f"/proc/{agent.pid}/maps").read_text()
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(15)
        bridge.stop()
        broker.close()
    stored = Buffer(tmp / "buffer.db").stats().stored
    return {
        "rss_mb_peak": round(max(peak, hwm), 1),
        "rss_mb_steady": round(rss_now, 1),
        "cpu_share_one_core": round((cpu1 - cpu0) / (wall1 - wall0), 4),
        "duration_s": round(wall1 - wall0, 1),
        "readings_stored": stored,
        "pydantic_loaded": "pydantic_core" in maps,
        # what the replay of the agent's imports must refuse too (the agent hides them on plain MQTT)
        "libraries_not_mapped": [lib for lib in ("libcrypto", "libssl") if lib not in maps],
    }


_REPLAY = r"""
import importlib, importlib.abc, json, sys
def rss():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
own, stack = {}, []  # module -> KB it added itself; stack of [module, KB its imports added]
def measured(name, step):
    def call(*args):
        stack.append([name, 0])
        before = rss()
        try:
            return step(*args)
        finally:
            total = rss() - before
            _, children = stack.pop()
            own[name] = own.get(name, 0) + total - children
            if stack:
                stack[-1][1] += total
    return call
class Meter(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        try:  # an extension's create_module maps its shared library; exec_module runs the code
            for step in ("create_module", "exec_module"):
                if hasattr(loader, step):
                    setattr(loader, step, measured(name, getattr(loader, step)))
        except (AttributeError, TypeError):
            pass
        return spec
mods, refused = json.loads(sys.stdin.read())
for lib in refused:  # what the agent refused to load (edge_agent.agent._paho): the same here
    sys.modules[lib] = None
base = rss()
sys.meta_path.insert(0, Meter())
for m in mods:
    if m in sys.modules:
        continue
    try:
        importlib.import_module(m)
    except Exception:
        pass
print(json.dumps([["(interpreter, site)", base]] + sorted(own.items(), key=lambda kv: -kv[1])))
"""


# The shared libraries the agent keeps out on plain MQTT, and the modules that would map them.
_MAPS_LIBRARY = {"libcrypto": ("_hashlib",), "libssl": ("ssl", "_ssl")}


def import_breakdown(importtime_log: str, not_mapped: list[str]) -> tuple[list[tuple[str, float]], dict[str, float]]:
    """RSS (MB) each module the agent imported adds on its own, and per top-level package.

    The modules ``-X importtime`` saw the agent import are imported again, in the same order, in a
    fresh interpreter that measures RSS around each module's own code less what its imports added
    (a shared library is charged to the first module that loads it: libcrypto to ``_hashlib``).
    ``not_mapped``: the libraries the running agent never mapped (``libcrypto``, ``libssl``); the
    modules that would map them are refused in the replay as the agent refused them (``-X importtime``
    lists a module whose import was refused as well, so the list alone cannot tell)."""
    # `iotctl agent run` checks the settings, then execs `python -m edge_agent.agent` (same pid, its
    # peak RSS starts again): only the last interpreter's imports are the agent's.
    mods: list[str] = []
    for line in importtime_log.splitlines():
        if line.rstrip().endswith("| imported package"):
            mods = []
        if line.startswith("import time:") and not line.rstrip().endswith("imported package"):
            mods.append(line.rsplit("|", 1)[1].strip())
    refused = [m for lib, mods_of in _MAPS_LIBRARY.items() if lib in not_mapped for m in mods_of]
    r = subprocess.run(
        [sys.executable, "-c", _REPLAY],
        input=json.dumps([mods, refused]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    rows = [(m, kb / 1024) for m, kb in json.loads(r.stdout)]
    by_pkg: dict[str, float] = {}
    for m, mb in rows:
        top = m.split(".")[0].lstrip("_")
        top = {"hashlib": "hashlib (libcrypto)", "ssl": "ssl (libssl)"}.get(top, top)
        by_pkg[top] = by_pkg.get(top, 0.0) + mb
    return rows, dict(sorted(by_pkg.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=seconds, default=float(os.environ.get("BENCH_DURATION_S", 180)))
    ap.add_argument("--readings", type=count, default=50_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="agent-bench-") as d:
        tmp = Path(d)
        result = {**bench_agent(tmp, args.duration), **bench_buffer(tmp, args.readings)}
        log = (tmp / "agent.stderr").read_text(errors="replace")
        Path(os.environ.get("AGENT_IMPORTTIME_LOG", "/dev/null")).write_text(log)
        rows, by_pkg = import_breakdown(log, result["libraries_not_mapped"])
    print("RSS by import (MB, each module alone, in the agent's import order; largest):")
    for m, mb in sorted(rows, key=lambda r: -r[1])[:15]:
        print(f"  {m:<50} {mb:6.2f}")
    print("RSS by package (MB): " + ", ".join(f"{k} {v:.1f}" for k, v in by_pkg.items() if v >= 0.2))
    import_rss = {k: round(v, 1) for k, v in by_pkg.items() if v >= 0.2}
    targets = {
        "rss_mb_peak": ("<", 25),
        "cpu_share_one_core": ("<", 0.01),
        "drain_readings_per_s": (">=", 5000),
        "buffer_write_readings_per_s": (">=", 2000),
    }
    print(f"{'metric':<30} {'value':>12}  target")
    for k, v in result.items():
        op, lim = targets.get(k, ("", ""))
        ok = "" if not op else ("ok" if (v < lim if op == "<" else v >= lim) else "MISSED")
        print(f"{k:<30} {v!s:>12}  {op}{lim} {ok}")
    result["meets_targets"] = all(
        (result[k] < lim if op == "<" else result[k] >= lim) for k, (op, lim) in targets.items()
    )
    result["targets"] = {k: f"{op} {lim}" for k, (op, lim) in targets.items()}
    result["import_rss_mb"] = import_rss
    result["at_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
