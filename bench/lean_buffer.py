"""Memory and CPU of the simulator's lean in-memory buffers, by how many prepared statements each keeps.

    .venv/bin/python bench/lean_buffer.py               # 0, 4, 8 and 16 statements, 2,000 buffers each
    .venv/bin/python bench/lean_buffer.py --buffers 500 --cached 0 16

For each setting, in a fresh process: opens ``--buffers`` ``Buffer(":memory:", lean=True)`` with
sqlite3's ``cached_statements`` set to it, runs six add + seal + ack cycles on each (one reading, one
signed batch, its receipt: what a simulated device does per message), and prints the RSS added per buffer
and the CPU per cycle. The lean buffer keeps none (``cached_statements=0``): every statement is compiled
again. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def measure(cached: int, buffers: int) -> dict[str, float]:
    """One setting, in this process (run it in a fresh one: RSS is process-wide)."""
    sys.path.insert(0, str(ROOT))
    from edge_agent import buffer as bufmod
    from iot_protocol import Reading
    from iot_protocol.keys import generate_private_key

    real_connect = bufmod.sqlite3.connect

    def connect(*args, **kw):  # type: ignore[no-untyped-def]
        if kw.get("cached_statements") == 0:  # the lean buffer's connection
            kw["cached_statements"] = cached
        return real_connect(*args, **kw)

    bufmod.sqlite3.connect = connect  # type: ignore[assignment]
    key = generate_private_key()
    gc.collect()
    before = _rss_kb()
    bufs = [bufmod.Buffer(":memory:", lean=True) for _ in range(buffers)]
    ts = 1_700_000_000_000
    t0 = time.process_time()
    for cycle in range(6):
        now = ts + cycle * 1000
        for b in bufs:
            b.add([Reading(now, "environment", {"temperature": 20.0, "humidity": 50.0, "pressure": 1000.0})])
            batch = b.next_batch("dev-1", key, max_readings=10, now_ms=now)
            if batch is not None:
                b.ack(stored=[batch.seq])
    cpu = time.process_time() - t0
    gc.collect()
    return {
        "cached_statements": cached,
        "kb_per_buffer": round((_rss_kb() - before) / buffers, 1),
        "us_per_cycle": round(cpu / 6 / buffers * 1e6),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--buffers", type=int, default=2000)
    ap.add_argument("--cached", type=int, nargs="+", default=[0, 4, 8, 16])
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one setting here
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.buffers)))
        return
    rows = []
    for n in args.cached:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--buffers", str(args.buffers)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"statements kept {n:>3}: {r['kb_per_buffer']:6.1f} KB per buffer, {r['us_per_cycle']:5d} us per cycle")
    print(json.dumps({"buffers": args.buffers, "rows": rows}))


if __name__ == "__main__":
    main()
