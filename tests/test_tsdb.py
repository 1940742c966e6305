"""The time-series seam: the embedded store and a real InfluxDB pass the same tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_core.tsdb import Point, StoreRejected, StoreUnavailable, TimeSeriesStore, open_tsdb
from cloud_core.tsdb.base import DAY_MS, HOUR_MS, pick_resolution
from cloud_core.tsdb.embedded import EmbeddedStore
from cloud_core.tsdb.influx import InfluxStore
from cloud_core.tsdb.lineprotocol import encode_points, encode_points_fast

# Two days ago at midnight UTC: inside InfluxDB's 30-day raw retention, aligned to every window used.
BASE = (int(time.time() * 1000) // DAY_MS - 2) * DAY_MS


@pytest.fixture(params=["embedded", pytest.param("influxdb", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[TimeSeriesStore]:
    if request.param == "embedded":
        s = open_tsdb(f"sqlite:///{tmp_path / 'readings.db'}")
    else:
        s = open_tsdb(request.getfixturevalue("influx_url"))
    s.init_schema()
    yield s
    s.close()


def _rollup(store: TimeSeriesStore, start_ms: int, end_ms: int) -> None:
    """InfluxDB's continuous queries only run after each interval ends: run them by hand here.
    The embedded rollups are maintained on every write."""
    if isinstance(store, InfluxStore):
        store.backfill_rollups(start_ms, end_ms)


def _series(
    device: str, n: int, *, step_ms: int = 1000, start: int = BASE, sensor: str = "bme280"
) -> list[Point]:
    return [
        Point(
            device, sensor, "lab 1", start + i * step_ms, {"temperature": float(i + 1), "humidity": 50.0 + i}
        )
        for i in range(n)
    ]


# ---- line protocol --------------------------------------------------------------------------------


def test_line_protocol_golden_bytes() -> None:
    body = encode_points(
        [
            Point("dev-1", "bme280", "lab 1", 1700000000123, {"temperature": 21.5, "humidity": 40}),
            Point("a,b=c d", "x=y", "r,1", 5, {"odd key,=": -0.25}),
            Point("dev-2", "dht22", "", 7, {"t": 1e-05}),
        ]
    )
    assert body == (
        b"sensor_readings,device_id=dev-1,location=lab\\ 1,sensor_type=bme280 "
        b"temperature=21.5,humidity=40.0 1700000000123\n"
        b"sensor_readings,device_id=a\\,b\\=c\\ d,location=r\\,1,sensor_type=x\\=y odd\\ key\\,\\==-0.25 5\n"
        b"sensor_readings,device_id=dev-2,sensor_type=dht22 t=1e-05 7\n"
    )


@pytest.mark.parametrize(
    ("point", "problem"),
    [
        (Point("d", "s", "l", 1, {}), "no fields"),
        (Point("d", "s", "l", 1, {"t": float("nan")}), "not finite"),
        (Point("d", "s", "l", 1, {"t": float("inf")}), "not finite"),
        (Point("d", "s", "l", 1, {"t": True}), "not a number"),  # type: ignore[dict-item]
        (Point("d\n", "s", "l", 1, {"t": 1.0}), "newline"),
    ],
)
def test_line_protocol_refuses_what_influx_cannot_store(point: Point, problem: str) -> None:
    with pytest.raises(StoreRejected, match=problem):
        encode_points([point])


def test_fast_line_protocol_golden_bytes() -> None:
    body = encode_points_fast(
        [
            Point("dev-1", "bme280", "lab 1", 1700000000123, {"temperature": 21.5, "humidity": 40, "q_2": -0.25}),
            Point("dev-2", "dht22", "", 7, {"t": 1e-05, "big": 1e20, "µ": 0.1 + 0.2}),
        ]
    )
    assert body == (
        b"sensor_readings,device_id=dev-1,location=lab\\ 1,sensor_type=bme280 "
        b"temperature=21.5,humidity=40,q_2=-0.25 1700000000123\n"
        b"sensor_readings,device_id=dev-2,sensor_type=dht22 t=0.00001,big=1e+20,\xc2\xb5=0.30000000000000004 7\n"
    )
    assert encode_points_fast([]) == b""


@pytest.mark.parametrize(
    "fields",
    [
        {"odd key": 1.0},
        {"a,b": 1.0},
        {"a=b": 1.0},
        {'a"b': 1.0},
        {"a\\b": 1.0},
        {"a:b": 1.0},
        {"a{": 1.0},
        {"t": 2**70},
    ],
)
def test_fast_line_protocol_hands_anything_unusual_to_the_reference(fields: dict[str, float]) -> None:
    points = [Point("d", "s", "l", 1, {"x": 1.5}), Point("d", "s", "l", 2, fields)]
    assert encode_points_fast(points) == encode_points(points)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({}, "no fields"),
        ({"t": float("nan")}, "not finite"),
        ({"t": float("-inf")}, "not finite"),
        ({"t": True}, "not a number"),
        ({"t": False}, "not a number"),
        ({"t": None}, "not a number"),
        ({"t": "1.0"}, "not a number"),
        ({"t": [1.0]}, "not a number"),
        ({"t": {"u": 1.0}}, "not a number"),
        ({"": 1.0}, "empty field name"),
        ({"a\n": 1.0}, "newline"),
        ({"a\\": 1.0}, "backslash"),
    ],
)
def test_fast_line_protocol_refuses_what_the_reference_refuses(fields: dict[str, Any], problem: str) -> None:
    points = [Point("d", "s", "l", 1, {"x": 1.5}), Point("d", "s", "l", 2, fields)]
    with pytest.raises(StoreRejected, match=problem):
        encode_points_fast(points)


def _parsed(body: bytes) -> list[tuple[bytes, dict[bytes, float], bytes]]:
    out = []
    for line in body.splitlines():
        series, fields, ts = line.rsplit(b" ", 2)
        out.append((series, {k: float(v) for k, v in (f.split(b"=") for f in fields.split(b","))}, ts))
    return out


def test_fast_line_protocol_stores_the_same_numbers_as_the_reference() -> None:
    import random

    rng = random.Random(7)
    names = ["temperature", "humidity", "pressure", "quality_score", "co2", "x"]
    points = []
    for i in range(2000):
        k = rng.randint(1, 5)
        values: dict[str, float] = {}
        for name in rng.sample(names, k):
            kind = rng.random()
            if kind < 0.2:
                values[name] = rng.randint(-(2**62), 2**62)
            elif kind < 0.4:
                values[name] = rng.uniform(-1, 1) * 10 ** rng.randint(-300, 300)
            else:
                values[name] = round(rng.uniform(-50, 1100), rng.randint(0, 6))
        points.append(Point(f"dev-{i % 7}", "bme280", "lab", 1_700_000_000_000 + i, values))
    fast = encode_points_fast(points)
    ref = encode_points(points)
    assert _parsed(fast) == _parsed(ref)
    assert len(fast.splitlines()) == 2000


_field_names = st.one_of(
    st.sampled_from(["temperature", "humidity", "quality_score", "µ", "a-b.c+d_e", ""]),
    st.text(alphabet=st.sampled_from(list('ab:"\\,= {}[]\nµ-')), max_size=6),
)
_field_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(_field_names, _field_values, max_size=4), min_size=1, max_size=5))
def test_fast_line_protocol_agrees_with_the_reference_on_any_fields(field_sets: list[dict[str, Any]]) -> None:
    """Whatever the field names and values, the fast encoder writes what the reference writes (up to
    the spelling of numbers) or refuses with the reference's error."""
    points = [Point("d", "s", "l", i + 1, fields) for i, fields in enumerate(field_sets)]
    try:
        ref = encode_points(points)
    except StoreRejected as exc:
        with pytest.raises(StoreRejected) as fast_exc:
            encode_points_fast(points)
        assert str(fast_exc.value) == str(exc)
        return
    fast = encode_points_fast(points)
    assert fast == ref or _parsed(fast) == _parsed(ref)


# ---- both stores ----------------------------------------------------------------------------------


def test_round_trip_is_exact(store: TimeSeriesStore) -> None:
    tricky = [0.1 + 0.2, 1e-300, 123456789.123456789, -40.0, 2.0**53, 1013.25]
    points = [
        Point(
            "dev-a", "bme280", "lab 1, east=2", BASE + 1, {"temperature": tricky[0], "pressure": tricky[5]}
        ),
        Point(
            "dev-a", "bme280", "lab 1, east=2", BASE + 999, {"temperature": tricky[1], "pressure": tricky[2]}
        ),
        Point("dev b,=x", "dht 22", "hall", BASE + 1, {"temperature": tricky[3], "humidity": tricky[4]}),
    ]
    store.write(points)
    rows = store.query(device_id=None, fields=None, start_ms=BASE, end_ms=BASE + 1000)
    got = [(r.ts_ms, r.device_id, r.sensor_type, r.location, dict(r.values)) for r in rows]
    assert got == [
        (BASE + 1, "dev b,=x", "dht 22", "hall", {"temperature": -40.0, "humidity": 2.0**53}),
        (BASE + 1, "dev-a", "bme280", "lab 1, east=2", {"temperature": 0.1 + 0.2, "pressure": 1013.25}),
        (
            BASE + 999,
            "dev-a",
            "bme280",
            "lab 1, east=2",
            {"temperature": 1e-300, "pressure": 123456789.123456789},
        ),
    ]
    one = store.query(device_id="dev-a", fields=["pressure"], start_ms=BASE, end_ms=BASE + 999)
    assert [(r.ts_ms, dict(r.values)) for r in one] == [(BASE + 1, {"pressure": 1013.25})]


def test_rewrite_is_idempotent_and_last_value_wins(store: TimeSeriesStore) -> None:
    points = _series("dev-1", 20) + _series("dev-2", 10)
    store.write(points)
    store.write(points)
    assert store.count() == 30
    assert store.count(device_id="dev-1") == 20
    assert store.count(device_id="dev-1", start_ms=BASE + 5000, end_ms=BASE + 10_000) == 5
    store.write([Point("dev-1", "bme280", "lab 1", BASE, {"temperature": 99.5, "humidity": 50.0})])
    assert store.count() == 30
    first = store.query(device_id="dev-1", fields=["temperature"], start_ms=BASE, end_ms=BASE + 1)
    assert [dict(r.values) for r in first] == [{"temperature": 99.5}]


@pytest.mark.parametrize(
    ("agg", "expected"),
    [
        ("mean", (3.0, 8.0)),
        ("min", (1.0, 6.0)),
        ("max", (5.0, 10.0)),
        ("sum", (15.0, 40.0)),
        ("count", (5.0, 5.0)),
        ("first", (1.0, 6.0)),
        ("last", (5.0, 10.0)),
        ("median", (3.0, 8.0)),
    ],
)
def test_aggregation_windows(store: TimeSeriesStore, agg: str, expected: tuple[float, float]) -> None:
    store.write(_series("dev-1", 10) + _series("dev-2", 5, start=BASE + 60_000))
    rows = store.query(
        device_id="dev-1", fields=["temperature"], start_ms=BASE, end_ms=BASE + 3_600_000, window_s=5, agg=agg
    )
    assert [(r.ts_ms, r.device_id, dict(r.values)) for r in rows] == [
        (BASE, "dev-1", {"temperature": expected[0]}),
        (BASE + 5000, "dev-1", {"temperature": expected[1]}),
    ]


def test_aggregation_over_all_devices_is_per_device(store: TimeSeriesStore) -> None:
    store.write(_series("dev-2", 4, step_ms=15_000) + _series("dev-1", 4, step_ms=15_000))
    rows = store.query(
        device_id=None, fields=None, start_ms=BASE, end_ms=BASE + 120_000, window_s=60, agg="max"
    )
    assert [(r.ts_ms, r.device_id, dict(r.values)) for r in rows] == [
        (BASE, "dev-1", {"humidity": 53.0, "temperature": 4.0}),
        (BASE, "dev-2", {"humidity": 53.0, "temperature": 4.0}),
    ]
    limited = store.query(device_id=None, fields=None, start_ms=BASE, end_ms=BASE + 60_000, limit=3)
    assert [(r.ts_ms, r.device_id) for r in limited] == [
        (BASE, "dev-1"),
        (BASE, "dev-2"),
        (BASE + 15_000, "dev-1"),
    ]


def test_empty_and_bad_queries(store: TimeSeriesStore) -> None:
    store.write(_series("dev-1", 3))
    assert store.query(device_id="nobody", fields=None, start_ms=BASE, end_ms=BASE + 10_000) == []
    assert (
        store.query(device_id=None, fields=None, start_ms=BASE + 10_000, end_ms=BASE + 20_000, window_s=5)
        == []
    )
    assert store.count(device_id="nobody") == 0
    with pytest.raises(ValueError, match="aggregation"):
        store.query(device_id=None, fields=None, start_ms=BASE, end_ms=BASE + 1, window_s=5, agg="avg")
    with pytest.raises(ValueError, match="start is after end"):
        store.query(device_id=None, fields=None, start_ms=BASE + 1, end_ms=BASE)
    with pytest.raises(ValueError, match="resolution"):
        store.query(device_id=None, fields=None, start_ms=BASE, end_ms=BASE + 1, resolution="weekly")


def test_rollups_hourly_daily_and_auto(store: TimeSeriesStore) -> None:
    # dev-1: one reading a minute for 2 hours; hour 0 temperatures 1..60 (mean 30.5), hour 1 61..120 (90.5)
    store.write(_series("dev-1", 120, step_ms=60_000))
    _rollup(store, BASE - DAY_MS, BASE + 2 * DAY_MS)
    hourly = store.query(
        device_id="dev-1", fields=["temperature"], start_ms=BASE, end_ms=BASE + DAY_MS, resolution="hourly"
    )
    assert [(r.ts_ms, r.values["temperature"]) for r in hourly] == [
        (BASE, pytest.approx(30.5)),
        (BASE + HOUR_MS, pytest.approx(90.5)),
    ]
    daily = store.query(
        device_id="dev-1", fields=["temperature"], start_ms=BASE, end_ms=BASE + DAY_MS, resolution="daily"
    )
    assert [(r.ts_ms, r.values["temperature"]) for r in daily] == [(BASE, pytest.approx(60.5))]
    # auto: a 10-day range reads the hourly means, a 100-day range the daily ones, 1 day the raw readings
    start = BASE - 8 * DAY_MS
    auto10 = store.query(
        device_id="dev-1",
        fields=["temperature"],
        start_ms=start,
        end_ms=start + 10 * DAY_MS,
        resolution="auto",
    )
    assert len(auto10) == 2
    auto100 = store.query(
        device_id="dev-1",
        fields=["temperature"],
        start_ms=BASE - 98 * DAY_MS,
        end_ms=BASE + 2 * DAY_MS,
        resolution="auto",
    )
    assert len(auto100) == 1
    assert (
        len(
            store.query(
                device_id="dev-1", fields=None, start_ms=BASE, end_ms=BASE + DAY_MS, resolution="auto"
            )
        )
        == 120
    )


def test_pick_resolution() -> None:
    week, span = 7 * DAY_MS, 10 * DAY_MS
    assert pick_resolution("auto", start_ms=0, end_ms=week, window_s=None, agg="mean") == "raw"
    assert pick_resolution("auto", start_ms=0, end_ms=span, window_s=None, agg="mean") == "hourly"
    assert pick_resolution("auto", start_ms=0, end_ms=span, window_s=7200, agg="mean") == "hourly"
    assert pick_resolution("auto", start_ms=0, end_ms=span, window_s=300, agg="mean") == "raw"
    assert pick_resolution("auto", start_ms=0, end_ms=span, window_s=3600, agg="max") == "raw"
    assert pick_resolution("auto", start_ms=0, end_ms=100 * DAY_MS, window_s=86400, agg="mean") == "daily"
    assert pick_resolution("hourly", start_ms=0, end_ms=1, window_s=None, agg="mean") == "hourly"


def test_non_finite_values_are_rejected(store: TimeSeriesStore) -> None:
    with pytest.raises(StoreRejected) as info:
        store.write([Point("d", "s", "l", BASE, {"t": float("nan")})])
    assert not info.value.retryable
    assert store.count() == 0


def test_embedded_reads_while_another_thread_writes(tmp_path: Any) -> None:
    store = EmbeddedStore(f"sqlite:///{tmp_path / 'r.db'}")
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for k in range(20):
                store.write(_series("dev-w", 50, start=BASE + k * 50_000))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    seen = 0
    while t.is_alive():
        seen = max(
            seen, len(store.query(device_id="dev-w", fields=None, start_ms=BASE, end_ms=BASE + DAY_MS))
        )
    t.join()
    assert errors == []
    assert store.count() == 1000
    store.close()


# ---- InfluxDB only --------------------------------------------------------------------------------


@pytest.mark.integration
def test_influx_schema_retention_and_continuous_queries(influxdb: Any, influx_url: str) -> None:
    store = open_tsdb(influx_url + "?retention=14d")
    store.init_schema()
    store.init_schema()  # idempotent
    db = influx_url.rsplit("/", 1)[1]
    cqs = influxdb.query("SHOW CONTINUOUS QUERIES")["results"][0]["series"]
    ours = next(s for s in cqs if s["name"] == db)
    by_name = {row[0]: row[1] for row in ours["values"]}
    assert set(by_name) == {"cq_hourly_avg", "cq_daily_avg"}
    assert "INTO" in by_name["cq_hourly_avg"] and "sensor_readings_hourly" in by_name["cq_hourly_avg"]
    assert "time(1h)" in by_name["cq_hourly_avg"] and "time(1d)" in by_name["cq_daily_avg"]
    rps = influxdb.query(f'SHOW RETENTION POLICIES ON "{db}"')["results"][0]["series"][0]
    cols = rps["columns"]
    table = {row[0]: dict(zip(cols, row, strict=True)) for row in rps["values"]}
    assert table["rp_raw"]["duration"] == "336h0m0s" and table["rp_raw"]["default"] is True
    assert table["rp_hourly"]["duration"] == "8760h0m0s"
    assert table["rp_daily"]["duration"] == "0s"
    store.close()


@pytest.mark.integration
def test_influx_field_type_conflict_is_rejected_not_retryable(influx_url: str) -> None:
    store = open_tsdb(influx_url)
    assert isinstance(store, InfluxStore)
    store.write_lines(f"sensor_readings,device_id=d,sensor_type=s temperature=1i {BASE}\n".encode())
    with pytest.raises(StoreRejected, match="field type conflict") as info:
        store.write([Point("d", "s", "", BASE + 1, {"temperature": 2.5})])
    assert info.value.status == 400
    store.close()


@pytest.mark.integration
def test_influx_outage_is_unavailable_then_recovers(influx_factory: Callable[[], Any]) -> None:
    server = influx_factory()
    store = open_tsdb(server.url_for("outage"))
    store.write(_series("dev-1", 3))
    server.stop()
    with pytest.raises(StoreUnavailable) as info:
        store.write(_series("dev-1", 3, start=BASE + 10_000))
    assert info.value.retryable
    with pytest.raises(StoreUnavailable):
        store.query(device_id=None, fields=None, start_ms=BASE, end_ms=BASE + DAY_MS)
    server.start()
    store.write(_series("dev-1", 3, start=BASE + 10_000))  # the same connection object recovers
    assert store.count() == 6
    store.close()


def test_open_tsdb_rejects_other_urls() -> None:
    for url in ("postgresql://x/y", "influxdb://host:8086", "sqlite:///", "influxdb://h:1/db?bogus=1"):
        with pytest.raises(ValueError) as info:
            open_tsdb(url)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="sqlite:///PATH or influxdb://"):
        open_tsdb("mysql://x")
    assert "***" in open_tsdb("influxdb://u:secret@h:1/db").url
