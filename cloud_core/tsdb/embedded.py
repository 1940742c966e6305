"""Embedded time-series store: one SQLite file (WAL, synchronous=NORMAL), the same semantics as
the InfluxDB store.

Layout: ``readings`` holds one row per (device_id, ts, sensor_type, location, field) -- the primary
key, so a re-written point replaces itself (an upsert that only touches rows whose value changed).
``readings_hourly`` and ``readings_daily`` are the rollups equivalent to InfluxDB's continuous
queries: per series, bucket and field they keep the sum and count of the raw values, maintained
incrementally inside the write's transaction (a new row adds, a changed value adjusts),
so they are always current; a write folds its rows into them set-wise (see ``_ROLLUP``).

Thread-safe: one connection per thread (WAL lets readers run beside the writer); the schema is
created on first use.
"""

from __future__ import annotations

import sqlite3
import statistics
import threading
from collections.abc import Iterator, Sequence
from itertools import groupby
from pathlib import Path

from .base import (
    DAY_MS,
    HOUR_MS,
    Point,
    PointKey,
    QueryRow,
    StoreRejected,
    StoreUnavailable,
    TimeSeriesStore,
    check_query_args,
    pick_resolution,
)

__all__ = ["EmbeddedStore"]

_KEY = "device_id, ts, sensor_type, location, field"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS readings (
    device_id TEXT NOT NULL, ts INTEGER NOT NULL, sensor_type TEXT NOT NULL, location TEXT NOT NULL,
    field TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY ({_KEY})
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS readings_by_ts ON readings (ts);
""" + "".join(
    f"""
CREATE TABLE IF NOT EXISTS {table} (
    device_id TEXT NOT NULL, ts INTEGER NOT NULL, sensor_type TEXT NOT NULL, location TEXT NOT NULL,
    field TEXT NOT NULL, sum REAL NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY ({_KEY})
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {table}_by_ts ON {table} (ts);
"""
    for table, bucket in (("readings_hourly", HOUR_MS), ("readings_daily", DAY_MS))
)

# A write stages its rows in a per-connection temp table (deduplicated: the last value of a key
# wins), folds the difference each row makes into the rollups (new row: +value and +1; changed
# row: +new-old), then upserts the raw rows. Set-based, about twice as fast as per-row triggers.
_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS staged (device_id TEXT, ts INTEGER, sensor_type TEXT, location TEXT, "
    f"field TEXT, value REAL, PRIMARY KEY ({_KEY})) WITHOUT ROWID"
)
_STAGE_ROW = "INSERT OR REPLACE INTO temp.staged VALUES (?, ?, ?, ?, ?, ?)"
_ROLLUP = [
    f"""INSERT INTO {table} ({_KEY}, sum, n)
    SELECT s.device_id, s.ts - s.ts % {bucket}, s.sensor_type, s.location, s.field,
           sum(s.value - coalesce(r.value, 0)), sum(r.value IS NULL)
    FROM temp.staged s LEFT JOIN readings r ON r.device_id = s.device_id AND r.ts = s.ts
         AND r.sensor_type = s.sensor_type AND r.location = s.location AND r.field = s.field
    GROUP BY s.device_id, s.ts - s.ts % {bucket}, s.sensor_type, s.location, s.field
    ON CONFLICT ({_KEY}) DO UPDATE SET sum = sum + excluded.sum, n = n + excluded.n"""
    for table, bucket in (("readings_hourly", HOUR_MS), ("readings_daily", DAY_MS))
]
_UPSERT = (
    f"INSERT INTO readings ({_KEY}, value) SELECT * FROM temp.staged WHERE true "
    f"ON CONFLICT ({_KEY}) DO UPDATE SET value = excluded.value WHERE value IS NOT excluded.value"
)

# resolution -> a subquery with columns (ts, device_id, sensor_type, location, field, value)
_SOURCES = {
    "raw": "readings",
    "hourly": "(SELECT device_id, ts, sensor_type, location, field, sum / n AS value FROM readings_hourly)",
    "daily": "(SELECT device_id, ts, sensor_type, location, field, sum / n AS value FROM readings_daily)",
}
_SQL_AGG = {
    "mean": "avg(value)",
    "min": "min(value)",
    "max": "max(value)",
    "sum": "sum(value)",
    "count": "count(value)",
    "first": "value, min(ts)",
    "last": "value, max(ts)",
}


class EmbeddedStore(TimeSeriesStore):
    """SQLite store at ``sqlite:///path`` (``sqlite:////abs/path`` for an absolute path)."""

    def __init__(self, url: str) -> None:
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise ValueError(f"bad embedded store URL {url!r}: use sqlite:///PATH")
        self.url = url
        self.path = Path(url[len("sqlite:///") :]).expanduser()
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._schema_ready = False

    # ---- connections ---------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=30000")
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                # Switching needs an exclusive lock and may fail at once ("locked") instead of waiting
                # while another thread creates the schema: one thread switches; WAL persists in the file.
                with self._lock:
                    conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA temp_store=MEMORY")
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        with self._lock:
            self._all.append(conn)
            if not self._schema_ready:
                try:
                    conn.executescript(_SCHEMA)
                except sqlite3.Error as exc:
                    raise StoreUnavailable(f"cannot create the schema in {self.path}: {exc}") from exc
                self._schema_ready = True
        try:
            conn.execute(_STAGE)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot prepare {self.path}: {exc}") from exc
        self._local.conn = conn
        return conn

    def init_schema(self) -> None:
        """Create the tables, rollups and triggers (idempotent; also done on first use)."""
        self._conn()

    def ping(self) -> None:
        try:
            self._conn().execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    # ---- writes --------------------------------------------------------------------------------
    def write(self, points: Sequence[Point]) -> None:
        """All points in one transaction; re-writing a point stores it once."""
        if not points:
            return
        rows = list(self._rows(points))
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_STAGE_ROW, rows)
                for rollup in _ROLLUP:
                    conn.execute(rollup)
                conn.execute(_UPSERT)
                conn.execute("DELETE FROM temp.staged")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"write to {self.path} failed: {exc}") from exc

    @staticmethod
    def _rows(points: Sequence[Point]) -> Iterator[tuple[str, int, str, str, str, float]]:
        for i, p in enumerate(points):
            if not p.fields:
                raise StoreRejected(f"point {i} ({p.device_id}) has no fields")
            for name, value in p.fields.items():
                if type(value) is not float:
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise StoreRejected(
                            f"point {i} ({p.device_id}): field {name!r} is not a number: {value!r}"
                        )
                    value = float(value)
                if value - value != 0.0:  # NaN or infinite, refused like InfluxDB does
                    raise StoreRejected(f"point {i} ({p.device_id}): field {name!r} is not finite: {value!r}")
                yield p.device_id, p.ts_ms, p.sensor_type, p.location, name, value

    # ---- reads ---------------------------------------------------------------------------------
    @staticmethod
    def _where(
        device_id: str | None, fields: Sequence[str] | None, start_ms: int, end_ms: int | None
    ) -> tuple[str, list[object]]:
        cond: list[str] = ["ts >= ?"]
        args: list[object] = [start_ms]
        if end_ms is not None:
            cond.append("ts < ?")
            args.append(end_ms)
        if device_id is not None:
            cond.append("device_id = ?")
            args.append(device_id)
        if fields:
            cond.append(f"field IN ({', '.join('?' * len(fields))})")
            args.extend(fields)
        return " WHERE " + " AND ".join(cond), args

    def _select(self, sql: str, args: Sequence[object]) -> sqlite3.Cursor:
        try:
            return self._conn().execute(sql, args)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"query on {self.path} failed: {exc}") from exc

    def query(
        self,
        *,
        device_id: str | None,
        fields: Sequence[str] | None,
        start_ms: int,
        end_ms: int,
        window_s: int | None = None,
        agg: str = "mean",
        limit: int | None = None,
        resolution: str = "raw",
    ) -> list[QueryRow]:
        check_query_args(start_ms=start_ms, end_ms=end_ms, window_s=window_s, agg=agg)
        table = pick_resolution(resolution, start_ms=start_ms, end_ms=end_ms, window_s=window_s, agg=agg)
        src = _SOURCES[table]
        where, args = self._where(device_id, fields, start_ms, end_ms)
        if window_s is None:
            return self._query_raw(src, where, args, limit)
        rows = self._query_agg(src, where, args, window_s * 1000, agg)
        # Like InfluxDB: every requested field (or every field seen) in each row, None where empty.
        names = list(fields) if fields else sorted({k for r in rows for k in r.values})
        rows = [QueryRow(r.ts_ms, r.device_id, {k: r.values.get(k) for k in names}) for r in rows]
        return rows[:limit] if limit is not None else rows

    def _query_raw(self, src: str, where: str, args: list[object], limit: int | None) -> list[QueryRow]:
        cur = self._select(
            f"SELECT ts, device_id, sensor_type, location, field, value FROM {src}{where} "
            "ORDER BY ts, device_id, sensor_type, location, field",
            args,
        )
        rows: list[QueryRow] = []
        for (ts, dev, sensor, loc), group in groupby(cur, key=lambda r: r[:4]):
            if limit is not None and len(rows) >= limit:
                break
            rows.append(QueryRow(ts, dev, {r[4]: r[5] for r in group}, sensor, loc))
        cur.close()
        return rows

    def _query_agg(
        self, src: str, where: str, args: list[object], window_ms: int, agg: str
    ) -> list[QueryRow]:
        bucket = f"ts - ts % {int(window_ms)}"
        if agg == "median":
            cur = self._select(
                f"SELECT {bucket} AS b, device_id, field, value FROM {src}{where} "
                "ORDER BY b, device_id, field, value",
                args,
            )
            values: list[tuple[int, str, str, float]] = [
                (b, dev, field, statistics.median(r[3] for r in group))
                for (b, dev, field), group in groupby(cur, key=lambda r: r[:3])
            ]
        else:
            cur = self._select(
                f"SELECT {bucket} AS b, device_id, field, {_SQL_AGG[agg]} FROM {src}{where} "
                "GROUP BY b, device_id, field ORDER BY b, device_id, field",
                args,
            )
            values = [(r[0], r[1], r[2], float(r[3])) for r in cur]
        return [
            QueryRow(b, dev, {r[2]: r[3] for r in group})
            for (b, dev), group in groupby(values, key=lambda r: r[:2])
        ]

    def latest_ts(self, device_ids: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        ids = list(dict.fromkeys(device_ids))
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            cur = self._select(
                f"SELECT device_id, max(ts) FROM readings WHERE device_id IN ({', '.join('?' * len(chunk))}) "
                "GROUP BY device_id",
                chunk,
            )
            out.update({d: int(ts) for d, ts in cur if ts is not None})
        return out

    def stored_fields(self, keys: Sequence[PointKey]) -> dict[PointKey, dict[str, float]]:
        spans: dict[str, list[int]] = {}
        for device_id, _, _, ts in keys:
            span = spans.setdefault(device_id, [ts, ts])
            span[0], span[1] = min(span[0], ts), max(span[1], ts)
        wanted = set(keys)
        out: dict[PointKey, dict[str, float]] = {}
        for device_id, (lo, hi) in spans.items():
            cur = self._select(
                "SELECT sensor_type, location, ts, field, value FROM readings "
                "WHERE device_id = ? AND ts >= ? AND ts <= ?",
                [device_id, lo, hi],
            )
            for sensor_type, location, ts, name, value in cur:
                key = (device_id, sensor_type, location, ts)
                if key in wanted:
                    out.setdefault(key, {})[name] = value
        return out

    def count(self, *, device_id: str | None = None, start_ms: int = 0, end_ms: int | None = None) -> int:
        where, args = self._where(device_id, None, start_ms, end_ms)
        cur = self._select(
            "SELECT count(*) FROM (SELECT DISTINCT device_id, ts, sensor_type, location "
            f"FROM readings{where})",
            args,
        )
        return int(cur.fetchone()[0])
