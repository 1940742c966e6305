"""``iotctl query`` and ``iotctl db init`` run as a user runs them (a subprocess), against both stores."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_core.tsdb import Point, open_tsdb
from cloud_core.tsdb.base import DAY_MS
from iotctl.commands.query import iso_ms

BASE = (int(time.time() * 1000) // DAY_MS - 2) * DAY_MS
START, END = iso_ms(BASE), iso_ms(BASE + 3_600_000)
IOTCTL = str(Path(sys.executable).with_name("iotctl"))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("IOTCTL_TSDB", "IOTCTL_DB")}
    full_env.update(env or {})
    return subprocess.run(
        [IOTCTL, *args], capture_output=True, text=True, timeout=60, env=full_env, check=False
    )


@pytest.fixture(params=["embedded", pytest.param("influxdb", marks=pytest.mark.integration)])
def tsdb_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = (
        f"sqlite:///{tmp_path / 'readings.db'}"
        if request.param == "embedded"
        else request.getfixturevalue("influx_url")
    )
    store = open_tsdb(url)
    store.init_schema()
    store.write(
        [
            Point("dev-1", "bme280", "lab 1", BASE + 1, {"temperature": 21.5, "humidity": 40.25}),
            Point("dev-1", "bme280", "lab 1", BASE + 30_000, {"temperature": 22.5, "humidity": 41.0}),
            Point("dev-2", "dht22", "hall", BASE + 60_123, {"temperature": 0.1 + 0.2}),
        ]
    )
    store.close()
    yield url


def test_csv_raw(tsdb_url: str) -> None:
    r = run("query", "--tsdb", tsdb_url, "--start", START, "--end", END, "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "time,device_id,sensor_type,location,humidity,temperature",
        f"{iso_ms(BASE + 1)},dev-1,bme280,lab 1,40.25,21.5",
        f"{iso_ms(BASE + 30_000)},dev-1,bme280,lab 1,41.0,22.5",
        f"{iso_ms(BASE + 60_123)},dev-2,dht22,hall,,0.30000000000000004",
    ]
    assert iso_ms(BASE + 60_123).endswith(".123Z")


def test_json_aggregated_per_device(tsdb_url: str) -> None:
    r = run(
        "query",
        "--tsdb",
        tsdb_url,
        "--start",
        START,
        "--end",
        END,
        "--window",
        "1m",
        "--agg",
        "max",
        "--field",
        "temperature",
        "--format",
        "json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [
        {"time": iso_ms(BASE), "device_id": "dev-1", "temperature": 22.5},
        {"time": iso_ms(BASE + 60_000), "device_id": "dev-2", "temperature": 0.30000000000000004},
    ]


def test_table_for_one_device(tsdb_url: str) -> None:
    r = run("query", "--tsdb", tsdb_url, "--device", "dev-1", "--start", START, "--end", END)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if "dev-" in line]
    assert len(lines) == 2
    assert iso_ms(BASE + 1) in lines[0] and "21.5" in lines[0] and "40.25" in lines[0] and "lab 1" in lines[0]
    assert iso_ms(BASE + 30_000) in lines[1] and "22.5" in lines[1]
    assert "dev-2" not in r.stdout


def test_env_var_and_since(tsdb_url: str) -> None:
    # --resolution raw: over 30 days "auto" would read the hourly means
    r = run(
        "query",
        "--since",
        "30d",
        "--resolution",
        "raw",
        "--format",
        "csv",
        "--limit",
        "1",
        env={"IOTCTL_TSDB": tsdb_url},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1:] == [f"{iso_ms(BASE + 1)},dev-1,bme280,lab 1,40.25,21.5"]


def test_auto_resolution_reads_hourly_means_for_long_ranges(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    with open_tsdb(url) as store:
        store.write(
            [
                Point("dev-1", "bme280", "lab 1", BASE + i * 60_000, {"temperature": float(i)})
                for i in range(60)
            ]
        )
    r = run("query", "--tsdb", url, "--since", "30d", "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1:] == [f"{iso_ms(BASE)},dev-1,bme280,lab 1,29.5"]


def test_unknown_device_is_an_error(tsdb_url: str) -> None:
    r = run("query", "--tsdb", tsdb_url, "--device", "ghost", "--start", START, "--end", END)
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: no readings for device ghost from {START} to {END}"


def test_unknown_field_is_an_error_naming_the_fields_there(tsdb_url: str) -> None:
    """It printed "no readings" and exited 0, as if the range were empty."""
    r = run("query", "--tsdb", tsdb_url, "--field", "nosuchfield", "--start", START, "--end", END)
    assert r.returncode == 1, r.stdout
    assert r.stderr.strip() == (
        "error: no field 'nosuchfield' in the readings of that range; fields there: humidity, quality_score, "
        "temperature"
    ) or r.stderr.strip() == (
        "error: no field 'nosuchfield' in the readings of that range; fields there: humidity, temperature"
    )
    ok = run("query", "--tsdb", tsdb_url, "--field", "humidity", "--start", START, "--end", END, "--format", "csv")
    assert ok.returncode == 0, ok.stderr  # a field some rows lack is fine


def test_an_empty_range_says_where_the_readings_are(tsdb_url: str) -> None:
    """The classroom scenario's data was months old and 'query --since 1d' found nothing, silently."""
    r = run("query", "--tsdb", tsdb_url, "--since", "1h")
    assert r.returncode == 0
    assert f"the store has older readings, from {iso_ms(BASE + 1)} on (try --start {iso_ms(BASE + 1)[:19]}Z)" in (
        r.stderr
    )


def test_state_dir_option_finds_the_embedded_store(tmp_path: Path) -> None:
    """'iotctl up' takes --state-dir; 'iotctl query' had none, so it read another (empty) store."""
    state = tmp_path / "class-state"
    store = open_tsdb(f"sqlite:///{state / 'readings.db'}")
    store.init_schema()
    store.write([Point("dev-9", "bme280", "lab", BASE + 5, {"temperature": 19.0})])
    store.close()
    env = {"EDU_STATE_DIR": str(tmp_path / "elsewhere")}
    r = run("query", "--state-dir", str(state), "--start", START, "--end", END, "--format", "csv", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1:] == [f"{iso_ms(BASE + 5)},dev-9,bme280,lab,19.0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tsdb", "mysql://x/y"], "unsupported time-series store URL"),
        (["--since", "5 parsecs"], "bad --since"),
        (["--since", "1h", "--start", "2024-01-01"], "either --since or --start"),
        (["--start", "2024-01-02T00:00:00Z", "--end", "2024-01-01T00:00:00Z"], "is not before the end"),
        (["--start", "yesterday"], "bad --start time"),
        (["--window", "5m", "--agg", "avg"], "bad --agg"),
        (["--window", "1500ms"], "whole seconds"),
        (["--resolution", "weekly"], "bad --resolution"),
        (["--tsdb", "sqlite:////nonexistent/dir/readings.db"], "no embedded store at"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args: list[str], message: str, tmp_path: Path) -> None:
    r = run("query", *args, env={"EDU_STATE_DIR": str(tmp_path)})
    assert r.returncode != 0
    assert "Traceback" not in r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert message in r.stderr


def test_unreachable_influx_names_the_url() -> None:
    url = f"influxdb://127.0.0.1:{_free_port()}/nothing"
    r = run("query", "--tsdb", url)
    assert r.returncode == 1
    assert "Traceback" not in r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert url in r.stderr and "unreachable" in r.stderr


def test_db_init_embedded_then_query_finds_the_store(tmp_path: Path) -> None:
    env = {"EDU_STATE_DIR": str(tmp_path / "state")}
    r = run("db", "init", env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "state" / "meta.db").exists() and (tmp_path / "state" / "readings.db").exists()
    r = run("db", "init", env=env)  # idempotent
    assert r.returncode == 0, r.stderr
    r = run("query", "--format", "json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


@pytest.mark.integration
def test_db_init_influx_and_postgres(pg_url: str, influxdb: Any, influx_url: str) -> None:
    r = run("db", "init", "--db", pg_url, "--tsdb", influx_url)
    assert r.returncode == 0, r.stderr
    db = influx_url.rsplit("/", 1)[1]
    cqs = influxdb.query("SHOW CONTINUOUS QUERIES")["results"][0]["series"]
    assert {row[0] for s in cqs if s["name"] == db for row in s["values"]} == {
        "cq_hourly_avg",
        "cq_daily_avg",
    }


def test_db_init_bad_url_is_one_line(tmp_path: Path) -> None:
    r = run("db", "init", "--db", "oracle://x", env={"EDU_STATE_DIR": str(tmp_path)})
    assert r.returncode != 0
    assert "Traceback" not in r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: unsupported metadata database URL 'oracle://x': use sqlite:///PATH or postgresql://..."
    ]
