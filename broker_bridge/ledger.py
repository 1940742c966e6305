"""The batch ledger: which seqs of each device are stored (BatchLedger rows), for replay detection
and loss accounting.

:class:`Ledger` answers "what payload hash is stored under (device, seq)?" for a whole flush in one
query, remembers recent answers in memory, and records new rows in bulk (insert-or-ignore, so
replicas racing on a redelivered batch are harmless). :func:`compute_ledger` balances a device's
books: produced = stored + rejected + buffered + dropped + quarantined + in flight, naming missing
seq ranges (the books themselves are computed in :mod:`cloud_core.services.ledger`, which the API
uses too; re-exported here).

Seq epochs: each row records the id of the key that signed the batch (``key_id``, see
:func:`pipeline.key_id_of`). A device that re-enrolls or is rotated signs with a new key and may
restart its seqs; a seq stored under another key is a new batch, not a replay, and its row is
overwritten. Rows from before this column (``key_id`` NULL) count as an older epoch.

Each row also keeps what the device was told (``reason`` for a batch finally rejected, NULL when
stored; ``rejections``: its rejected readings as JSON ``[[index, reason], ...]``), so a resend of the
same bytes is receipted exactly as the first time. :func:`ensure_ledger_schema` adds the columns to
an existing table (``create_all`` does not).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from sqlalchemy import inspect, text, tuple_
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, col, select

from cloud_core.models import BatchLedger
from cloud_core.services.ledger import DeviceLedger, compute_ledger, current_key_id, missing_ranges

__all__ = [
    "DeviceLedger",
    "Ledger",
    "LedgerRow",
    "compute_ledger",
    "current_key_id",
    "ensure_ledger_schema",
    "missing_ranges",
]

log = logging.getLogger(__name__)

_CHUNK = 500
# One primary-key probe per asked pair, whatever the planner believes about the table: as a plain
# join, a ledger that grew faster than autovacuum's statistics was hashed whole for every lookup
# (measured: 51 ms instead of 5.6 ms for 2,000 pairs against 60,000 rows, growing with the table).
# LIMIT 1 keeps the subquery from being flattened back into that join; (device_id, seq) is the key.
# Parameters travel as one JSON text (orjson, in C) and are unpacked by the server: psycopg's
# per-element array dumping cost ~2.5 us of bridge CPU per value (measured: a ledger row of 8 values
# 20 us as arrays, under 4 us as JSON; the server's share 10 -> 12 us).
_PG_KNOWN = text(
    "SELECT l.device_id, l.seq, l.payload_sha256, l.key_id, l.reason, l.rejections "
    "FROM json_to_recordset(CAST(:pairs AS json)) AS q(d text, s bigint) "
    "CROSS JOIN LATERAL (SELECT b.device_id, b.seq, b.payload_sha256, b.key_id, b.reason, b.rejections "
    "FROM batch_ledger b WHERE b.device_id = q.d AND b.seq = q.s LIMIT 1) AS l"
)
# A row of another key epoch (or of none recorded) is overwritten; one of the same key is kept (a
# replica racing on a redelivered batch writes the same row). :rows is the JSON of LedgerRow objects.
_PG_RECORD = text(
    "INSERT INTO batch_ledger (device_id, seq, batch_id, payload_sha256, readings, rejected_readings, stored_at, "
    "key_id, reason, rejections) "
    "SELECT device_id, seq, batch_id, sha256, readings, rejected_readings, stored_at, key_id, reason, rejections "
    "FROM json_to_recordset(CAST(:rows AS json)) AS r(device_id text, seq bigint, batch_id text, sha256 text, "
    "readings integer, rejected_readings integer, stored_at timestamptz, key_id text, reason text, "
    "rejections text) "
    "ON CONFLICT (device_id, seq) DO UPDATE SET batch_id = EXCLUDED.batch_id, "
    "payload_sha256 = EXCLUDED.payload_sha256, readings = EXCLUDED.readings, "
    "rejected_readings = EXCLUDED.rejected_readings, stored_at = EXCLUDED.stored_at, key_id = EXCLUDED.key_id, "
    "reason = EXCLUDED.reason, rejections = EXCLUDED.rejections "
    "WHERE batch_ledger.key_id IS DISTINCT FROM EXCLUDED.key_id"
)

# What is stored under a (device, seq): (payload hash, key id or None, final reason or None, rejected
# readings as JSON or None).
Known = tuple[str, str | None, str | None, str | None]


_ADDED_COLUMNS = (("key_id", "VARCHAR(16)"), ("reason", "VARCHAR(64)"), ("rejections", "TEXT"))


def ensure_ledger_schema(engine: Engine) -> None:
    """Add the columns a ``batch_ledger`` created by an earlier version lacks (``key_id``: seq epochs;
    ``reason`` and ``rejections``: receipts of resends). Idempotent, additive. Raises what the DB
    raises when it is down."""
    if "batch_ledger" not in inspect(engine).get_table_names():
        return
    cols = {c["name"] for c in inspect(engine).get_columns("batch_ledger")}
    missing = [(name, kind) for name, kind in _ADDED_COLUMNS if name not in cols]
    if not missing:
        return
    with engine.begin() as conn:
        for name, kind in missing:
            if engine.dialect.name == "postgresql":
                conn.execute(text(f"ALTER TABLE batch_ledger ADD COLUMN IF NOT EXISTS {name} {kind}"))
            else:
                conn.execute(text(f"ALTER TABLE batch_ledger ADD COLUMN {name} {kind}"))
    log.info("batch_ledger: added the columns %s", ", ".join(n for n, _ in missing))


@dataclass(frozen=True, slots=True)
class LedgerRow:
    device_id: str
    seq: int
    batch_id: str
    sha256: str
    readings: int
    rejected_readings: int
    stored_at: datetime
    key_id: str | None = None
    reason: str | None = None  # the batch's final rejection (None: stored)
    rejections: str | None = None  # its rejected readings, JSON [[index, reason], ...]

    @property
    def known(self) -> Known:
        return (self.sha256, self.key_id, self.reason, self.rejections)


def _row_order(r: LedgerRow) -> tuple[str, int]:
    return (r.device_id, r.seq)


class Ledger:
    """Stored-seq lookups (batched, cached) and bulk recording against the metadata DB."""

    def __init__(self, engine: Engine, *, cache_size: int = 200_000) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._recent: OrderedDict[tuple[str, int], Known] = OrderedDict()
        self._cache_size = cache_size
        # PostgreSQL lookups keep one autocommit connection per thread: one round trip per lookup,
        # instead of a pool checkout with its liveness ping, the query and the reset on return.
        self._conns = threading.local()
        self._open: list[Connection] = []

    @property
    def engine(self) -> Engine:
        return self._engine

    def forget(self, pairs: Iterable[tuple[str, int]]) -> None:
        """Drop (device, seq) pairs from memory (their rows were never written)."""
        with self._lock:
            for pair in pairs:
                self._recent.pop(pair, None)

    def remember(self, device_id: str, seq: int, known: Known) -> None:
        with self._lock:
            self._recent[(device_id, seq)] = known
            self._recent.move_to_end((device_id, seq))
            if len(self._recent) > self._cache_size:
                self._recent.popitem(last=False)

    def known(self, pairs: Iterable[tuple[str, int]]) -> dict[tuple[str, int], Known]:
        """Stored (hash, key id) per (device, seq) for those of ``pairs`` that are stored.

        Raises whatever the DB raises when it is down; the caller then decides on what memory knows
        (:meth:`known_in_memory`).
        """
        out: dict[tuple[str, int], Known] = {}
        ask: list[tuple[str, int]] = []
        with self._lock:
            for pair in set(pairs):
                h = self._recent.get(pair)
                if h is None:
                    ask.append(pair)
                else:
                    out[pair] = h
        if not ask:
            return out
        if self._engine.dialect.name == "postgresql":
            # One constant statement (prepared once by the server) whatever the number of pairs.
            asked = orjson.dumps([{"d": d, "s": seq} for d, seq in ask]).decode()
            conn = self._lookup_connection()
            try:
                rows = conn.execute(_PG_KNOWN, {"pairs": asked}).all()
            except Exception:
                self._drop_lookup_connection()  # a broken connection: the next lookup opens another
                raise
            for device_id, seq, digest, kid, reason, rejections in rows:
                out[(device_id, seq)] = (digest, kid, reason, rejections)
            return out
        with Session(self._engine) as session:
            for i in range(0, len(ask), _CHUNK):
                chunk = ask[i : i + _CHUNK]
                stmt = select(
                    BatchLedger.device_id,
                    BatchLedger.seq,
                    BatchLedger.payload_sha256,
                    BatchLedger.key_id,
                    BatchLedger.reason,
                    BatchLedger.rejections,
                ).where(tuple_(BatchLedger.device_id, BatchLedger.seq).in_(chunk))
                for device_id, seq, digest, kid, reason, rejections in session.exec(stmt):
                    out[(device_id, seq)] = (digest, kid, reason, rejections)
        return out

    def _lookup_connection(self) -> Connection:
        conn: Connection | None = getattr(self._conns, "conn", None)
        if conn is None:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._conns.conn = conn
            with self._lock:
                self._open.append(conn)
        return conn

    def _drop_lookup_connection(self) -> None:
        conn: Connection | None = getattr(self._conns, "conn", None)
        self._conns.conn = None
        if conn is not None:
            with self._lock:
                if conn in self._open:
                    self._open.remove(conn)
            with contextlib.suppress(Exception):
                conn.invalidate()

    def close(self) -> None:
        """Close the lookup connections (the engine's pool is its owner's to dispose)."""
        with self._lock:
            conns, self._open = self._open, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

    def known_in_memory(self, pairs: Iterable[tuple[str, int]]) -> dict[tuple[str, int], Known]:
        with self._lock:
            return {p: h for p in pairs if (h := self._recent.get(p)) is not None}

    def record(self, rows: Sequence[LedgerRow]) -> None:
        """Insert rows; a row already there is kept when it has the same key id and overwritten when
        it belongs to another key epoch. Raises when the DB is down (caller retries)."""
        if not rows:
            return
        # One row per (device, seq): an upsert may not touch a row twice (the last epoch wins).
        rows = list({(r.device_id, r.seq): r for r in rows}.values())
        if self._engine.dialect.name == "postgresql":
            # One statement per flush, rows in one lock order across replicas; orjson writes the
            # aware stored_at as RFC 3339 with its offset.
            rows.sort(key=_row_order)
            with self._engine.begin() as conn:
                conn.execute(_PG_RECORD, {"rows": orjson.dumps(rows).decode()})
            return
        values = [
            {
                "device_id": r.device_id,
                "seq": r.seq,
                "batch_id": r.batch_id,
                "payload_sha256": r.sha256,
                "readings": r.readings,
                "rejected_readings": r.rejected_readings,
                "stored_at": r.stored_at,
                "key_id": r.key_id,
                "reason": r.reason,
                "rejections": r.rejections,
            }
            for r in rows
        ]
        ins = sqlite.insert(BatchLedger)
        new = ins.excluded
        stmt = ins.on_conflict_do_update(  # executemany: compiled once, cached
            index_elements=["device_id", "seq"],
            set_={
                "batch_id": new.batch_id,
                "payload_sha256": new.payload_sha256,
                "readings": new.readings,
                "rejected_readings": new.rejected_readings,
                "stored_at": new.stored_at,
                "key_id": new.key_id,
                "reason": new.reason,
                "rejections": new.rejections,
            },
            where=col(BatchLedger.key_id).is_distinct_from(new.key_id),
        )
        with self._engine.begin() as conn:
            conn.execute(stmt, values)


def utc_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
