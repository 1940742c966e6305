"""InfluxDB 1.x store over its HTTP API: line-protocol writes to ``/write``, InfluxQL on ``/query``.

URL: ``influxdb://[user:pass@]host:port/db[?rp=rp_raw&retention=30d&timeout=10]``:
``rp`` is the raw retention policy written to (created by :meth:`InfluxStore.init_schema` as the
database's DEFAULT with duration ``retention``); downsampled means go to ``rp_hourly`` (365d,
measurement ``sensor_readings_hourly``) and ``rp_daily`` (INF, ``sensor_readings_daily``) through
the continuous queries ``cq_hourly_avg`` and ``cq_daily_avg``.

One persistent ``http.client`` connection per thread (measured faster than httpx for 1k-5k point
writes: less per-request overhead). Errors: any non-2xx answer or connection failure raises
StoreUnavailable (retryable; InfluxDB 1.6 answers some writes under load with 500 "engine: error
syncing wal"), except 400 on a write (partial write, field type conflict, unparsable, beyond
retention), which raises StoreRejected. A write to a database or retention policy that does not
exist yet runs :meth:`InfluxStore.init_schema` once and retries.
"""

from __future__ import annotations

import base64
import http.client
import logging
import re
import socket
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import orjson

from .base import (
    DAILY_MEASUREMENT,
    HOURLY_MEASUREMENT,
    MEASUREMENT,
    Point,
    PointKey,
    QueryRow,
    StoreError,
    StoreRejected,
    StoreUnavailable,
    TimeSeriesStore,
    check_query_args,
    pick_resolution,
)
from .lineprotocol import encode_points_fast

__all__ = ["CONTINUOUS_QUERIES", "InfluxStore"]

log = logging.getLogger(__name__)

HOURLY_RP = "rp_hourly"
DAILY_RP = "rp_daily"
#: name -> (target rp, target measurement, bucket)
CONTINUOUS_QUERIES = {
    "cq_hourly_avg": (HOURLY_RP, HOURLY_MEASUREMENT, "1h"),
    "cq_daily_avg": (DAILY_RP, DAILY_MEASUREMENT, "1d"),
}
_TAGS = ("device_id", "sensor_type", "location")
_DURATION = re.compile(r"^(INF|\d+(ns|u|µ|ms|s|m|h|d|w))$")
_BODY_MAX = 500


def _ident(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(text: str) -> str:
    """An InfluxQL single-quoted string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxStore(TimeSeriesStore):
    """InfluxDB 1.x. Thread-safe: one keep-alive connection per thread."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "influxdb" or not parts.hostname:
            raise ValueError(f"bad InfluxDB URL {self._redact(url)!r}: use influxdb://[USER:PASS@]HOST:PORT/DB")
        db = unquote(parts.path.lstrip("/"))
        if not db or "/" in db:
            raise ValueError(f"InfluxDB URL {self._redact(url)!r} names no database: influxdb://HOST:PORT/DB")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"rp", "retention", "timeout"}
        if unknown:
            raise ValueError(f"unknown InfluxDB URL parameter(s) {sorted(unknown)}: accepted rp, retention, timeout")
        self.url = self._redact(url)
        self.host = parts.hostname
        try:
            self.port = parts.port or 8086
        except ValueError:
            raise ValueError(f"bad port in InfluxDB URL {self.url!r}") from None
        self.db = db
        self.rp = query.get("rp", "rp_raw")
        self.retention = query.get("retention", "30d")
        if not _DURATION.match(self.retention):
            raise ValueError(f"bad retention {self.retention!r}: use e.g. 30d, 12w or INF")
        try:
            self.timeout = float(query.get("timeout", "10"))
        except ValueError:
            raise ValueError(f"bad timeout {query['timeout']!r} in InfluxDB URL: seconds") from None
        self._headers: dict[str, str] = {}
        if parts.username is not None:
            cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
        self._write_path = "/write?" + urlencode({"db": db, "rp": self.rp, "precision": "ms"})
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    @staticmethod
    def _redact(url: str) -> str:
        return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)

    # ---- HTTP ----------------------------------------------------------------------------------
    def _conn(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One request on this thread's connection; a connection the server closed while idle is
        reopened once (every request we send is idempotent). Raises StoreUnavailable."""
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "text/plain; charset=utf-8"
        for attempt in (0, 1):
            conn = self._conn()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self._drop_conn()
                return resp.status, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop_conn()
                if attempt == 0:
                    continue
                raise StoreUnavailable(f"InfluxDB at {self.host}:{self.port} closed the connection: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop_conn()
                reason = "timed out" if isinstance(exc, socket.timeout) else str(exc) or type(exc).__name__
                raise StoreUnavailable(f"InfluxDB at {self.host}:{self.port} unreachable: {reason}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _error_text(data: bytes) -> str:
        try:
            doc = orjson.loads(data)
            if isinstance(doc, dict) and "error" in doc:
                return str(doc["error"])[:_BODY_MAX]
        except orjson.JSONDecodeError:
            pass
        return data[:_BODY_MAX].decode("utf-8", "replace")

    def _influxql(self, statement: str, *, write: bool = False) -> list[dict[str, Any]]:
        """Run one InfluxQL statement; returns its series (name, tags, columns, values merged over
        chunks). Raises StoreUnavailable (transport, 5xx) or StoreError (the statement failed)."""
        params = {"db": self.db, "q": statement, "epoch": "ms", "chunked": "true", "chunk_size": "10000"}
        path = "/query?" + urlencode(params, quote_via=quote)
        status, data = self._request("POST" if write else "GET", path, b"" if write else None)
        if status >= 500 or status in (401, 403, 408, 429):
            raise StoreUnavailable(
                f"InfluxDB query failed: HTTP {status}: {self._error_text(data)}",
                status=status,
                body=self._error_text(data),
            )
        series: list[dict[str, Any]] = []
        for line in data.splitlines():
            if not line.strip():
                continue
            doc = orjson.loads(line)
            if "error" in doc:
                raise StoreError(f"InfluxDB: {doc['error']}", status=status, body=str(doc["error"]))
            for result in doc.get("results", ()):
                if "error" in result:
                    raise StoreError(f"InfluxDB: {result['error']}", status=status, body=str(result["error"]))
                for s in result.get("series", ()):
                    if (
                        series
                        and series[-1].get("name") == s.get("name")
                        and series[-1].get("tags") == s.get("tags")
                        and series[-1].get("columns") == s.get("columns")
                    ):
                        series[-1]["values"].extend(s.get("values", ()))  # continuation chunk
                    else:
                        s.setdefault("values", [])
                        series.append(s)
        if status >= 300:
            raise StoreUnavailable(f"InfluxDB query failed: HTTP {status}: {self._error_text(data)}", status=status)
        return series

    # ---- writes --------------------------------------------------------------------------------
    encodes_points = True

    def write(self, points: Sequence[Point]) -> None:
        if not points:
            return
        self.write_lines(encode_points_fast(points))

    def encode_points(self, points: Sequence[Point]) -> bytes:
        return encode_points_fast(points)

    def write_encoded(self, body: bytes) -> None:
        if body:
            self.write_lines(body)

    def write_lines(self, body: bytes) -> None:
        """Write a ready line-protocol body (millisecond precision) to the raw retention policy."""
        status, data = self._request("POST", self._write_path, body)
        if status == 404 or (status == 500 and b"retention policy not found" in data):
            # database (404) or retention policy (500) missing: a fresh database; create, retry once
            log.info("influxdb schema missing, running init_schema", extra={"db": self.db})
            self.init_schema()
            status, data = self._request("POST", self._write_path, body)
        if 200 <= status < 300:
            return
        text = self._error_text(data)
        if status == 400:
            raise StoreRejected(f"InfluxDB refused the points: {text}", status=status, body=text)
        raise StoreUnavailable(f"InfluxDB write failed: HTTP {status}: {text}", status=status, body=text)

    # ---- schema --------------------------------------------------------------------------------
    def init_schema(self) -> None:
        """Database, retention policies and continuous queries; idempotent (existing ones are
        altered to the configured durations, existing continuous queries kept)."""
        db = _ident(self.db)
        self._influxql(f"CREATE DATABASE {db}", write=True)
        existing = {row[0]: row[1] for s in self._influxql(f"SHOW RETENTION POLICIES ON {db}") for row in s["values"]}
        for name, duration, default in (
            (self.rp, self.retention, True),
            (HOURLY_RP, "365d", False),
            (DAILY_RP, "INF", False),
        ):
            verb = "ALTER" if name in existing else "CREATE"
            stmt = f"{verb} RETENTION POLICY {_ident(name)} ON {db} DURATION {duration} REPLICATION 1"
            if default:
                stmt += " DEFAULT"
            self._influxql(stmt, write=True)
        have = {
            row[0] for s in self._influxql("SHOW CONTINUOUS QUERIES") if s.get("name") == self.db for row in s["values"]
        }
        src = f"{db}.{_ident(self.rp)}.{_ident(MEASUREMENT)}"
        for name, (rp, measurement, bucket) in CONTINUOUS_QUERIES.items():
            if name in have:
                continue
            self._influxql(
                f"CREATE CONTINUOUS QUERY {_ident(name)} ON {db} BEGIN "
                f"SELECT mean(*) INTO {db}.{_ident(rp)}.{_ident(measurement)} FROM {src} "
                f"GROUP BY time({bucket}), * END",
                write=True,
            )

    def continuous_queries(self) -> list[str]:
        """Names of this database's continuous queries (``SHOW CONTINUOUS QUERIES``)."""
        return [
            row[0] for s in self._influxql("SHOW CONTINUOUS QUERIES") if s.get("name") == self.db for row in s["values"]
        ]

    def backfill_rollups(self, start_ms: int, end_ms: int) -> None:
        """Run the continuous queries' SELECT ... INTO by hand over [start_ms, end_ms): continuous
        queries only cover each interval just after it ends, so late or imported data needs this."""
        db = _ident(self.db)
        src = f"{db}.{_ident(self.rp)}.{_ident(MEASUREMENT)}"
        for rp, measurement, bucket in CONTINUOUS_QUERIES.values():
            self._influxql(
                f"SELECT mean(*) INTO {db}.{_ident(rp)}.{_ident(measurement)} FROM {src} "
                f"WHERE time >= {start_ms}ms AND time < {end_ms}ms GROUP BY time({bucket}), *",
                write=True,
            )

    def ping(self) -> None:
        status, data = self._request("GET", "/ping")
        if status >= 300:
            raise StoreUnavailable(f"InfluxDB ping: HTTP {status}: {self._error_text(data)}", status=status)

    # ---- reads ---------------------------------------------------------------------------------
    def _source(self, resolution: str) -> tuple[str, str]:
        """(FROM clause, column prefix) for a resolution: rollups store ``mean_<field>``."""
        db = _ident(self.db)
        if resolution == "hourly":
            return f"{db}.{_ident(HOURLY_RP)}.{_ident(HOURLY_MEASUREMENT)}", "mean_"
        if resolution == "daily":
            return f"{db}.{_ident(DAILY_RP)}.{_ident(DAILY_MEASUREMENT)}", "mean_"
        return f"{db}.{_ident(self.rp)}.{_ident(MEASUREMENT)}", ""

    @staticmethod
    def _where(device_id: str | None, start_ms: int, end_ms: int | None) -> str:
        cond = [f"time >= {int(start_ms)}ms"]
        if end_ms is not None:
            cond.append(f"time < {int(end_ms)}ms")
        if device_id is not None:
            cond.append(f"{_ident('device_id')} = {_literal(device_id)}")
        return " WHERE " + " AND ".join(cond)

    def _run_read(self, statement: str) -> list[dict[str, Any]]:
        try:
            return self._influxql(statement)
        except StoreUnavailable:
            raise
        except StoreError as exc:
            if "database not found" in str(exc) or "retention policy not found" in str(exc):
                return []
            raise

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
        src, prefix = self._source(table)
        where = self._where(device_id, start_ms, end_ms)
        if window_s is None:
            return self._query_raw(src, prefix, where, fields, limit)
        return self._query_agg(src, prefix, where, fields, window_s, agg, limit)

    def _query_raw(
        self, src: str, prefix: str, where: str, fields: Sequence[str] | None, limit: int | None
    ) -> list[QueryRow]:
        if fields:
            cols = ", ".join(f"{_ident(prefix + f)} AS {_ident(f)}" for f in fields)
            select = f"SELECT {cols}, {', '.join(_ident(t) for t in _TAGS)}"
        else:
            select = "SELECT *"
        stmt = f"{select} FROM {src}{where}"
        if limit is not None:
            stmt += f" LIMIT {int(limit)}"
        rows: list[QueryRow] = []
        for s in self._run_read(stmt):
            columns: list[str] = s["columns"]
            idx = {c: i for i, c in enumerate(columns)}
            tag_idx = [idx.get(t) for t in _TAGS]
            value_cols = [
                (i, c[len(prefix) :] if (not fields and prefix and c.startswith(prefix)) else c)
                for i, c in enumerate(columns)
                if c != "time" and c not in _TAGS
            ]
            for v in s["values"]:
                values = {name: float(v[i]) for i, name in value_cols if v[i] is not None}
                if not values:
                    continue
                dev, sensor, loc = (v[i] if i is not None else None for i in tag_idx)
                rows.append(QueryRow(int(v[0]), dev or "", values, sensor or "", loc or ""))
        rows.sort(key=lambda r: (r.ts_ms, r.device_id, r.sensor_type or "", r.location or ""))
        return rows[:limit] if limit is not None else rows

    def _query_agg(
        self,
        src: str,
        prefix: str,
        where: str,
        fields: Sequence[str] | None,
        window_s: int,
        agg: str,
        limit: int | None,
    ) -> list[QueryRow]:
        cols = ", ".join(f"{agg}({_ident(prefix + f)}) AS {_ident(f)}" for f in fields) if fields else f"{agg}(*)"
        group = f"GROUP BY time({int(window_s)}s), {_ident('device_id')} fill(none)"
        stmt = f"SELECT {cols} FROM {src}{where} {group}"
        rows: list[QueryRow] = []
        strip = f"{agg}_{prefix}"
        names_seen: set[str] = set()
        for s in self._run_read(stmt):
            dev = (s.get("tags") or {}).get("device_id", "")
            columns: list[str] = s["columns"]
            names = [c if fields else (c[len(strip) :] if c.startswith(strip) else c) for c in columns]
            for v in s["values"]:
                values = {names[i]: (None if v[i] is None else float(v[i])) for i in range(1, len(v))}
                if all(x is None for x in values.values()):
                    continue
                names_seen.update(k for k, x in values.items() if x is not None)
                rows.append(QueryRow(int(v[0]), dev, values))
        if not fields:
            # mean(*) names every field of the measurement's shards; keep those with data here
            rows = [
                QueryRow(r.ts_ms, r.device_id, {k: x for k, x in r.values.items() if k in names_seen}) for r in rows
            ]
        rows.sort(key=lambda r: (r.ts_ms, r.device_id))
        return rows[:limit] if limit is not None else rows

    def latest_ts(self, device_ids: Sequence[str]) -> dict[str, int]:
        """From ``last(quality_score)``: every point the bridge writes carries that field."""
        src, _ = self._source("raw")
        ids = list(dict.fromkeys(device_ids))
        out: dict[str, int] = {}
        for i in range(0, len(ids), 200):
            cond = " OR ".join(f"{_ident('device_id')} = {_literal(d)}" for d in ids[i : i + 200])
            stmt = f"SELECT last({_ident('quality_score')}) FROM {src} WHERE {cond} GROUP BY {_ident('device_id')}"
            for s in self._run_read(stmt):
                dev = (s.get("tags") or {}).get("device_id")
                if dev is not None and s["values"]:
                    out[dev] = int(s["values"][0][0])
        return out

    def stored_fields(self, keys: Sequence[PointKey]) -> dict[PointKey, dict[str, float]]:
        """One request: a ``SELECT *`` per device over the span of its keys' times."""
        if not keys:
            return {}
        spans: dict[str, list[int]] = {}
        for device_id, _, _, ts in keys:
            span = spans.setdefault(device_id, [ts, ts])
            span[0], span[1] = min(span[0], ts), max(span[1], ts)
        src, _ = self._source("raw")
        stmt = "; ".join(
            f"SELECT * FROM {src} WHERE {_ident('device_id')} = {_literal(d)} "
            f"AND time >= {int(lo)}ms AND time <= {int(hi)}ms"
            for d, (lo, hi) in spans.items()
        )
        wanted = set(keys)
        out: dict[PointKey, dict[str, float]] = {}
        for s in self._run_read(stmt):
            columns: list[str] = s["columns"]
            idx = {c: i for i, c in enumerate(columns)}
            tag_idx = [idx.get(t) for t in ("device_id", "sensor_type", "location")]
            value_cols = [(i, c) for i, c in enumerate(columns) if c != "time" and c not in _TAGS]
            for v in s["values"]:
                dev, sensor, loc = (v[i] if i is not None else "" for i in tag_idx)
                key = (dev or "", sensor or "", loc or "", int(v[0]))
                if key in wanted:
                    out[key] = {name: float(v[i]) for i, name in value_cols if v[i] is not None}
        return out

    def count(self, *, device_id: str | None = None, start_ms: int = 0, end_ms: int | None = None) -> int:
        """Points stored: per series, the largest per-field count (exact when every point of a
        series carries the same fields, as each sensor type's do)."""
        src, _ = self._source("raw")
        stmt = f"SELECT count(*) FROM {src}{self._where(device_id, start_ms, end_ms)} GROUP BY *"
        total = 0
        for s in self._run_read(stmt):
            for v in s["values"]:
                total += max((int(x) for x in v[1:] if x is not None), default=0)
        return total

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
