"""Side effects of accepted batches, off the ingest path: dead letters, device last_seen (one UPDATE
per device per flush), the latest reading per device in the cache, and one event per device per
flush on the cache stream for analytics. (Ledger rows are not here: they are replay state, written
by the writer before the batch's receipt.)

Everything here is buffered and flushed every ``effects_interval_s`` by one thread; a sink that is
down keeps its buffer (latest/last_seen coalesce per device; dead letters and event readings are
bounded and their overflow counted) and catches up when it is back. Readings keep flowing meanwhile.
A row the metadata DB refuses for good (a dead letter, a device's last_seen) is set aside on its own
and counted (``bridge_sink_rows_refused_total``), so it cannot hold back the others; a sink failing
for longer than ``sink_unready_after_s`` turns ``/ready`` red (:class:`broker_bridge.sinks.SinkHealth`).

Stream events: one per device per flush, covering every batch accepted since the last one, so a busy
bridge does not make one Redis call per message. Fields (strings): ``device_id``, ``location``,
``seqs`` (JSON list of batch seqs) and ``readings`` (JSON list of ``{"ts", "sensor_type", "values"}``),
the form cloud_core.analytics.worker.parse_entry reads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, text, update
from sqlalchemy.engine import Engine

from cloud_core.cache import Cache, HashSet, StreamAdd
from cloud_core.models import Device
from cloud_core.tsdb.base import Point

from .deadletter import DeadLetterQueue
from .metrics import Metrics
from .pipeline import Accepted
from .settings import BridgeSettings
from .sinks import SinkHealth, write_isolating

__all__ = ["LATEST_KEY", "SideEffects"]

log = logging.getLogger(__name__)

LATEST_KEY = "edu:latest:{device_id}"

# One UPDATE for a whole flush (it was one statement per device: 200 devices, 200 statements every
# half second per replica). The locking subquery takes the rows in id order.
_PG_LAST_SEEN = text(
    "WITH v AS (SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS v(id text, at timestamptz)), "
    "locked AS (SELECT d.id FROM devices d JOIN v ON d.id = v.id ORDER BY d.id FOR UPDATE OF d) "
    "UPDATE devices SET last_seen = v.at FROM v, locked WHERE devices.id = v.id AND locked.id = v.id"
)


def _ts(p: Point) -> int:
    return p.ts_ms


def _reading(p: Point) -> dict[str, object]:
    return {"ts": p.ts_ms, "sensor_type": p.sensor_type, "values": p.fields}


def db_alive(engine: Engine) -> bool:
    """True when the metadata DB answers a trivial query (so a failed write was the rows' own fault)."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


class SideEffects:
    """Buffers of what accepted batches imply, and the thread that flushes them."""

    def __init__(
        self,
        settings: BridgeSettings,
        *,
        engine: Engine,
        cache: Cache,
        deadletters: DeadLetterQueue,
        metrics: Metrics,
        health: SinkHealth,
    ) -> None:
        self._s = settings
        self._engine = engine
        self._cache = cache
        self._dead = deadletters
        self._m = metrics
        self._health = health
        self._lock = threading.Lock()
        self._last_seen: dict[str, datetime] = {}  # pending DB update
        self._latest: dict[str, Point] = {}  # pending cache write: newest reading per device
        # One stream event per device per flush: {device_id, location, seqs, readings} (JSON strings).
        self._events: dict[str, dict[str, Any]] = {}
        self._event_readings = 0
        self.seen_at: dict[str, float] = {}  # for the last-seen-age gauge
        self.db_ok = True
        self.cache_ok = True
        self._dead_refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bridge-effects", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.flush()  # a last attempt; what fails stays unwritten (dead letters, last_seen, cache)

    # ---- called by the writer after a successful write -----------------------------------------
    def accepted(self, batches: Sequence[Accepted], now: datetime) -> None:
        per_device: dict[str, list[Accepted]] = {}
        for a in batches:
            per_device.setdefault(a.device_id, []).append(a)
        now_s = now.timestamp()
        with self._lock:
            for device_id, group in per_device.items():
                self._last_seen[device_id] = now
                self.seen_at[device_id] = now_s
                # readings of a batch are in time order: compare each batch's last one only
                last = max((a.points[-1] for a in group), key=_ts)
                prev = self._latest.get(device_id)
                if prev is None or last.ts_ms >= prev.ts_ms:
                    self._latest[device_id] = last
                ev = self._events.get(device_id)
                if ev is None:
                    if self._event_readings >= self._s.event_buffer_max:
                        self._m.events_dropped.inc(sum(len(a.points) for a in group))
                        continue
                    ev = self._events[device_id] = {"location": last.location, "seqs": [], "readings": []}
                readings = ev["readings"]
                for a in group:
                    ev["seqs"].append(a.batch.seq)
                    readings.extend(a.points)  # serialized by orjson at flush time, no per-reading work here
                    self._event_readings += len(a.points)

    # ---- flushing --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self._s.effects_interval_s):
            self.flush()

    def flush(self) -> None:
        self._flush_db()
        self._flush_cache()

    def _alive(self) -> bool:
        return db_alive(self._engine)

    def _flush_db(self) -> None:
        with self._lock:
            seen, self._last_seen = self._last_seen, {}
        try:
            while self._dead.flush(alive=self._alive):
                pass
            refused = self._dead.refused
            if refused > self._dead_refused:
                self._m.sink_rows_refused.labels("deadletters").inc(refused - self._dead_refused)
                self._dead_refused = refused
            if seen:
                rows = sorted(seen.items())
                refused_rows, pending = write_isolating(rows, self._write_last_seen, self._alive)
                for (device_id, _), exc in refused_rows:
                    self._m.sink_rows_refused.labels("last_seen").inc()
                    log.error(
                        "last_seen refused by the DB, dropped: %s",
                        str(exc).splitlines()[0][:300],
                        extra={"device_id": device_id},
                    )
                seen = dict(pending)
                if pending:
                    raise RuntimeError("metadata DB stopped answering during the flush")
            self.db_ok = True
            self._health.ok("metadata")
        except Exception as exc:  # DB down: keep what was not written, try again next round
            if self.db_ok:
                log.warning("metadata DB unavailable for side effects: %s", exc)
            self.db_ok = False
            self._health.failed("metadata", exc)
            self._m.write_failures.labels("metadata").inc()
            with self._lock:
                for d, at in seen.items():
                    self._last_seen.setdefault(d, at)

    def _write_last_seen(self, rows: Sequence[tuple[str, datetime]]) -> None:
        """Every device's last_seen in one transaction, rows locked in id order (replicas updating the
        same devices then never deadlock); on PostgreSQL one statement for all of them."""
        with self._engine.begin() as conn:
            if self._engine.dialect.name == "postgresql":
                body = orjson.dumps([{"id": d, "at": at} for d, at in rows]).decode()
                conn.execute(_PG_LAST_SEEN, {"rows": body})
                return
            stmt = (
                update(Device)
                .where(Device.id == bindparam("did"))  # type: ignore[arg-type]
                .values(last_seen=bindparam("at"))
            )
            conn.execute(stmt, [{"did": d, "at": at} for d, at in rows])

    def _flush_cache(self) -> None:
        """The latest reading per device and the stream events, in one cache round trip (one Redis
        pipeline). When it fails, everything is kept and sent again next round; a pipeline that failed
        half way may then repeat some events (they were at-least-once before as well: the entry in
        flight when a connection broke could be applied and resent)."""
        with self._lock:
            latest, self._latest = self._latest, {}
            events, self._events, self._event_readings = self._events, {}, 0
        if not latest and not events:
            return
        try:
            ttl = self._s.latest_ttl_s
            stream, maxlen = self._s.stream_name, self._s.stream_maxlen
            dumps = orjson.dumps
            ops: list[HashSet | StreamAdd] = [
                HashSet(
                    LATEST_KEY.format(device_id=device_id),
                    {
                        "ts": str(p.ts_ms),
                        "sensor_type": p.sensor_type,
                        "location": p.location,
                        "values": dumps(p.fields).decode(),
                    },
                    ttl,
                )
                for device_id, p in latest.items()
            ]
            for device_id, ev in events.items():
                fields = {
                    "device_id": device_id,
                    "location": ev["location"],
                    "seqs": dumps(ev["seqs"]).decode(),
                    "readings": dumps([_reading(p) for p in ev["readings"]]).decode(),
                }
                ops.append(StreamAdd(stream, fields, maxlen))
            self._cache.write_many(ops)
            self.cache_ok = True
            self._health.ok("cache")
        except Exception as exc:  # cache down: keep the newest per device, retry next round
            if self.cache_ok:
                log.warning("cache unavailable for side effects: %s", exc)
            self.cache_ok = False
            self._health.failed("cache", exc)
            self._m.write_failures.labels("cache").inc()
            with self._lock:
                for d, p in latest.items():
                    newer_p = self._latest.get(d)
                    if newer_p is None or newer_p.ts_ms < p.ts_ms:
                        self._latest[d] = p
                for d, ev in events.items():  # older first, then what arrived meanwhile
                    newer = self._events.get(d)
                    if newer is not None:
                        ev["seqs"].extend(newer["seqs"])
                        ev["readings"].extend(newer["readings"])
                    self._events[d] = ev
                    self._event_readings += len(ev["readings"]) - (len(newer["readings"]) if newer else 0)

    def pending(self) -> int:
        with self._lock:
            return len(self._last_seen) + len(self._latest) + len(self._events)
