"""The web console in headless Chromium against a real ``iotctl up``: how fast the fleet page of a
500-device fleet renders, and whether a live chart fed 10 readings/s per field keeps up without its
memory growing.

    .venv/bin/python bench/console.py [--devices 500] [--loads 5] [--live-seconds 420]

Fleet: 500 registered devices (rows written into the platform's metadata database, each with a health
message and ledger rows, 60 s of readings for the rates), the page opened ``--loads`` times (a new
navigation each time, signed in); the time from the navigation's start to the rendered table (page,
scripts, who-am-I, /v1/console/fleet, DOM), and the page's own split (the fleet request, the DOM).
Live: one simulated device at ``--interval 0.1`` (10 readings/s, six fields), its page open in live
mode; every 30 s the JS heap after a forced garbage collection (CDP), the points the temperature chart
holds, and how far the newest point shown lags behind the wall clock. A chart keeps 3,000 points at
most (5 minutes at 10/s), so the heap must stop growing once it is full.

Prints a table; the last line is one JSON object. Targets (issue 18): fleet render < 1 s; the heap
after the charts are full within a few percent of itself at the end; lag < 2 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchargs import count, seconds

from iot_testing.browser import chromium
from iot_testing.up import UpProcess


def seed_fleet(state: Path, n: int) -> None:
    from sqlmodel import Session

    from cloud_core.core.db import make_engine
    from cloud_core.models import BatchLedger, Device
    from cloud_core.tsdb import Point, open_tsdb

    engine = make_engine(f"sqlite:///{state / 'meta.db'}")
    now = datetime.now(UTC)
    with Session(engine) as session:
        for i in range(n):
            d = f"bench-{i:04d}"
            session.add(Device(
                id=d, status="active", device_type=("outdoor", "indoor", "greenhouse")[i % 3],
                location=f"room-{i % 40}", firmware="1.0.0", last_seen=now, last_health_at=now,
                presence="online" if i % 10 else "offline", presence_at=now,
                health={"produced": 200, "buffer_depth": 0, "dropped": 0, "last_seq": 20, "at": 1},
            ))  # fmt: skip
            for seq in range(1, 21):
                session.add(BatchLedger(device_id=d, seq=seq, batch_id=f"{d}-{seq}", payload_sha256="0" * 64,
                                        readings=10))  # fmt: skip
        session.commit()
    engine.dispose()
    store = open_tsdb(f"sqlite:///{state / 'readings.db'}")
    t = int(time.time() * 1000)
    store.write([Point(f"bench-{i:04d}", "outdoor", "x", t - 5000 * k, {"temperature": 20.0})
                 for i in range(n) for k in range(12)])  # fmt: skip
    store.close()


def sign_in(page, url: str, token: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{url}/console/#/login")
    page.fill("#token", token)
    page.press("#token", "Enter")
    page.wait_for_selector("#nav:not([hidden])")


def bench_fleet(browser, devices: int, loads: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        with UpProcess(state, "--devices", "0", "--mqtt-port", "0", "--api-port", "0") as up:
            url = up.platform.api_url
            seed_fleet(state, devices)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            sign_in(page, url, (state / "admin.token").read_text().strip())
            totals, fetches, renders = [], [], []
            for _ in range(loads):
                page.goto("about:blank")
                page.goto(f"{url}/console/#/fleet")  # a navigation, as a person opening the page
                page.wait_for_selector(f"tr[data-device='bench-{devices - 1:04d}']")
                timing = page.evaluate("window.__consoleTimings.fleet")
                assert timing["rows"] == devices, timing
                totals.append(timing["since_navigation_ms"])  # navigation start -> table rendered
                fetches.append(timing["fetch_ms"])
                renders.append(timing["render_ms"])
            page.close()
    return {
        "fleet_devices": devices,
        "fleet_load_ms_median": statistics.median(totals),
        "fleet_load_ms_max": max(totals),
        "fleet_fetch_ms_median": statistics.median(fetches),
        "fleet_render_ms_median": statistics.median(renders),
    }


def bench_live(browser, seconds: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        with UpProcess(state, "--devices", "1", "--interval", "0.1", "--mqtt-port", "0", "--api-port", "0") as up:
            url = up.platform.api_url
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            cdp = page.context.new_cdp_session(page)
            sign_in(page, url, (state / "admin.token").read_text().strip())
            page.goto(f"{url}/console/#/device/up-000")
            page.wait_for_selector('.chart[data-field="temperature"]')
            samples = []
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                page.wait_for_timeout(30_000)
                cdp.send("HeapProfiler.collectGarbage")
                heap = cdp.send("Runtime.getHeapUsage")["usedSize"] / 1e6
                points, newest, received = page.evaluate(
                    "() => { const c = document.querySelector('.chart[data-field=\"temperature\"]');"
                    " const s = document.querySelector('#live-status');"
                    " return [Number(c.dataset.points), Date.parse(s.textContent.split('newest ')[1]), "
                    " Number(s.dataset.received)]; }"
                )
                lag = time.time() - newest / 1000
                samples.append((time.monotonic() - start, heap, points, lag, received))
                print(f"  t={samples[-1][0]:5.0f}s heap={heap:6.2f} MB points={points:5d} lag={lag:4.1f}s "
                      f"received={received}", file=sys.stderr)  # fmt: skip
            page.close()
    full = [s for s in samples if s[2] >= 3000]
    rate = (samples[-1][4] - samples[0][4]) / (samples[-1][0] - samples[0][0]) if len(samples) > 1 else 0.0
    return {
        "live_seconds": samples[-1][0],
        "live_rows_per_s": rate,
        "live_points_max": max(s[2] for s in samples),
        "live_heap_mb_first": samples[0][1],
        "live_heap_mb_when_full": full[0][1] if full else float("nan"),
        "live_heap_mb_end": samples[-1][1],
        "live_heap_growth_after_full_pct": (100 * (samples[-1][1] / full[0][1] - 1)) if len(full) > 1 else float("nan"),
        "live_lag_s_max": max(s[3] for s in samples),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=count, default=500)
    ap.add_argument("--loads", type=count, default=5)
    ap.add_argument("--live-seconds", type=seconds, default=420.0)
    args = ap.parse_args()
    with chromium() as browser:
        out = bench_fleet(browser, args.devices, args.loads)
        if args.live_seconds > 0:
            out |= bench_live(browser, args.live_seconds)
    for key, value in out.items():
        print(f"{key:34} {value:10.2f}")
    print(json.dumps({k: round(v, 3) for k, v in out.items()}))


if __name__ == "__main__":
    main()
