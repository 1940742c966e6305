"""The durable store-and-forward buffer: SQLite in WAL mode, one file per device.

A reading is committed here before anything is published, and deleted only when the cloud's
receipt names the batch that carries it. Tables:

- ``readings``: one row per reading (autoincrement ``id`` = production order), the reading's
  exact JSON ``body``, and ``seq`` once it is assigned to a batch;
- ``batches``: ``seq`` (per-device, monotonic, never reused), ``batch_id`` and the exact sealed
  JWS ``token``, so a resend after a crash sends identical bytes;
- ``counters``: produced, dropped, stored, rejected, quarantined, last_seq (persisted with each change);
- ``state``: small key/value records (the applied config);
- ``quarantine``: batches the cloud never verified, set aside after bounded resends (the exact token
  kept for inspection), and readings too large to send at all; the newest ``QUARANTINE_KEEP`` kept;
- ``produced_log``: optional, every reading ever produced (tests and ground truth), never pruned.

A batch is sealed within the contract's message limit (``iot_protocol.MAX_TOKEN_BYTES``, 256 KiB,
well under the broker's packet limit): ``next_batch`` takes fewer readings when their bytes would not
fit, so the agent never sends a message the bridge refuses as ``too_large`` or the broker drops with
the connection.

The bound (rows and optionally payload bytes) is enforced on every write; with ``drop_oldest``
the oldest readings go first (a sealed batch holding the oldest reading goes whole); with
``drop_newest`` the new readings are refused. Either way the count of dropped
readings is persisted and reported. One writer process owns a buffer; calls are thread-safe.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from iot_protocol import jws
from iot_protocol.jws import MAX_TOKEN_BYTES
from iot_protocol.messages import Batch, Reading
from iot_protocol.signing import seal_batch

from .errors import BufferError

if TYPE_CHECKING:
    from iot_protocol.keys import SigningKey

__all__ = ["Buffer", "BufferStats", "PendingBatch", "reading_from_body"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, size INTEGER NOT NULL,
    body BLOB NOT NULL, seq INTEGER);
CREATE INDEX IF NOT EXISTS readings_unbatched ON readings(id) WHERE seq IS NULL;
CREATE INDEX IF NOT EXISTS readings_by_seq ON readings(seq) WHERE seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY, batch_id TEXT NOT NULL UNIQUE, token BLOB NOT NULL,
    n INTEGER NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS produced_log (id INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER, batch_id TEXT, n INTEGER NOT NULL,
    reason TEXT NOT NULL, at INTEGER NOT NULL, data BLOB NOT NULL);
"""
_COUNTERS = ("produced", "dropped", "stored", "rejected", "quarantined", "last_seq")
QUARANTINE_KEEP = 1000
# The batch's JSON around its readings (ids, seq, times) and the JWS around the payload, with room to
# spare: readings are taken while their bodies fit in what remains of MAX_TOKEN_BYTES.
_PAYLOAD_BUDGET = (MAX_TOKEN_BYTES - 512) * 3 // 4 - 512


def reading_body(r: Reading) -> bytes:
    return orjson.dumps(r.to_json())


def reading_from_body(body: bytes) -> Reading:
    o = orjson.loads(body)
    return Reading(o["ts"], o["sensor_type"], o["values"], o.get("quality", 1.0), tuple(o.get("flags", ())))


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """A sealed batch waiting for its receipt; ``token`` is the exact message to (re)send."""

    seq: int
    batch_id: str
    token: bytes
    n: int


@dataclass(frozen=True, slots=True)
class BufferStats:
    depth: int  # readings held (batched or not)
    unbatched: int
    batches: int  # sealed, unreceipted
    bytes: int
    produced: int
    dropped: int
    stored: int
    rejected: int
    last_seq: int
    quarantined: int = 0


class Buffer:
    """The buffer at ``path`` (created if missing). See the module docstring for the guarantees.

    ``lean`` trades a little CPU per statement for memory (no prepared-statement cache, 1 KiB pages
    in a new database): for the simulator's thousands of in-memory buffers, not for the agent."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_rows: int = 500_000,
        max_bytes: int | None = None,
        overflow: str = "drop_oldest",
        synchronous: str = "full",
        keep_produced_log: bool = False,
        readonly: bool = False,
        lean: bool = False,
    ) -> None:
        if overflow not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"overflow must be drop_oldest or drop_newest, not {overflow!r}")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.overflow = overflow
        self.keep_produced_log = keep_produced_log
        self._lock = threading.Lock()
        try:
            if readonly:
                self._db = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # lean: no prepared-statement cache and 1 KiB pages (a fresh database only): 160 -> 70 KB
                # for a small in-memory buffer, what thousands of simulated devices in one process need
                self._db = sqlite3.connect(
                    self.path,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=30,
                    cached_statements=0 if lean else 128,  # 128: sqlite3's default
                )
                if lean:
                    self._db.execute("PRAGMA page_size=1024")
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
                self._db.execute("PRAGMA cache_size=-512")  # 512 KiB page cache: the device's RAM is small
                self._db.executescript(_SCHEMA)
                self._db.executemany(
                    "INSERT OR IGNORE INTO counters(name, value) VALUES (?, 0)", [(c,) for c in _COUNTERS]
                )
            self._c: dict[str, int] = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            rows, nbytes, unbatched, last_id = self._db.execute(
                "SELECT count(*), coalesce(sum(size), 0), count(*) - count(seq), coalesce(max(id), 0) FROM readings"
            ).fetchone()
        except sqlite3.Error as exc:
            raise BufferError(f"cannot open buffer {self.path}: {exc}") from None
        self._rows: int = rows
        self._bytes: int = nbytes
        # Kept in memory so the hot path asks SQLite less (every statement is parsed again in a lean
        # buffer): readings not yet in a batch (none: next_batch answers without a query), the highest
        # reading id assigned (ids are never reused), and the counters as last committed (only changed
        # ones are written).
        self._unbatched: int = unbatched
        self._last_id: int = last_id
        self._saved: dict[str, int] = dict(self._c)

    # ------------------------------------------------------------------ writing
    def add(self, readings: Sequence[Reading]) -> int:
        """Commit ``readings`` in one transaction; returns how many were kept (the rest count as dropped)."""
        if not readings:
            return 0
        bodies = [reading_body(r) for r in readings]
        with self._lock, self._tx():
            c = self._c
            c["produced"] += len(bodies)
            keep = bodies
            if self.overflow == "drop_newest":
                keep = []
                rows, nbytes = self._rows, self._bytes
                for b in bodies:
                    if rows + 1 > self.max_rows or (self.max_bytes is not None and nbytes + len(b) > self.max_bytes):
                        break
                    keep.append(b)
                    rows += 1
                    nbytes += len(b)
                c["dropped"] += len(bodies) - len(keep)
            ex = self._db.executemany
            if self.keep_produced_log:
                start = self._db.execute("SELECT coalesce(max(id), 0) FROM produced_log").fetchone()[0]
                ex(
                    "INSERT INTO produced_log(id, body) VALUES (?, ?)",
                    [(start + i + 1, b) for i, b in enumerate(bodies)],
                )
            insert = "INSERT INTO readings(ts, size, body) VALUES (?, ?, ?)"
            rid = None
            if len(keep) == 1:  # one sensor: the id comes with the insert
                rid = self._db.execute(insert, (readings[0].ts, len(keep[0]), keep[0])).lastrowid
            elif keep:
                ex(insert, [(r.ts, len(b), b) for r, b in zip(readings, keep, strict=False)])
            if keep:
                if rid is None:
                    rid = self._db.execute("SELECT max(id) FROM readings").fetchone()[0]
                self._last_id = max(self._last_id, rid)
            self._unbatched += len(keep)
            self._rows += len(keep)
            self._bytes += sum(len(b) for b in keep)
            if self.overflow == "drop_oldest":
                self._enforce_bound()
            self._save_counters("produced", "dropped", "stored", "rejected")
        return len(keep)

    def _over(self) -> bool:
        return self._rows > self.max_rows or (self.max_bytes is not None and self._bytes > self.max_bytes)

    def _enforce_bound(self) -> None:
        """Drop the oldest readings until within the bound; when the oldest reading is in a sealed
        batch, the whole batch goes (it cannot be resealed without it). Every reading is counted."""
        db = self._db
        while self._over():
            limit = max(self._rows - self.max_rows, 64 if self.max_bytes is not None else 1)
            oldest = db.execute("SELECT id, size, seq FROM readings ORDER BY id LIMIT ?", (limit,)).fetchall()
            if oldest and oldest[0][2] is not None:
                n, _ = self._delete_batches([oldest[0][2]])
                self._c["dropped"] += n
                continue
            drop: list[int] = []
            rows, nbytes = self._rows, self._bytes
            for rid, size, seq in oldest:
                if seq is not None or not (
                    rows > self.max_rows or (self.max_bytes is not None and nbytes > self.max_bytes)
                ):
                    break
                drop.append(rid)
                rows -= 1
                nbytes -= size
            db.execute(f"DELETE FROM readings WHERE id IN ({','.join(map(str, drop))})")
            self._c["dropped"] += len(drop)
            self._unbatched -= len(drop)
            self._rows, self._bytes = rows, nbytes

    # ------------------------------------------------------------------ batching
    def next_batch(
        self,
        device_id: str,
        key: SigningKey,
        *,
        max_readings: int,
        now_ms: int,
        after_id: int = 0,
        max_token_bytes: int = MAX_TOKEN_BYTES,
    ) -> PendingBatch | None:
        """Seal the oldest unbatched readings with id > ``after_id`` into the next batch, or None.

        At most ``max_readings``, and no more than fit in a message of ``max_token_bytes`` (a reading
        too large to be sent even alone is quarantined, counted, and skipped). The seq, the batch id,
        the exact token and the readings' assignment commit together, so a batch is sent with
        identical bytes however often it is resent, and a seq is never reused.
        """
        budget = _PAYLOAD_BUDGET - (MAX_TOKEN_BYTES - max_token_bytes) * 3 // 4
        if not self._unbatched:  # nothing to seal: what the query below would find, without it
            return None
        with self._lock, self._tx():
            while True:
                rows = self._db.execute(
                    "SELECT id, size, body FROM readings WHERE seq IS NULL AND id > ? ORDER BY id LIMIT ?",
                    (after_id, max_readings),
                ).fetchall()
                if not rows:
                    return None
                take, used = 0, 0
                for _, size, _ in rows:
                    if take and used + size + 1 > budget:
                        break
                    used += size + 1
                    take += 1
                rows = rows[:take]
                seq = self._c["last_seq"] + 1
                while True:
                    batch = Batch(
                        device_id, uuid.uuid4().hex, seq, now_ms, tuple(reading_from_body(b) for _, _, b in rows)
                    )
                    token = seal_batch(batch, key)
                    if len(token) <= max_token_bytes or len(rows) == 1:
                        break
                    rows = rows[: len(rows) // 2]  # the estimate was short: halve until it fits
                if len(token) <= max_token_bytes:
                    break
                # One reading alone is over the limit: it can never be sent. Set it aside, counted.
                rid, size, body = rows[0]
                self._db.execute("DELETE FROM readings WHERE id = ?", (rid,))
                self._unbatched -= 1
                self._rows -= 1
                self._bytes -= size
                self._quarantine_rows(None, None, 1, "too_large", now_ms, body)
            self._db.execute(
                "INSERT INTO batches(seq, batch_id, token, n, created_at) VALUES (?, ?, ?, ?, ?)",
                (seq, batch.batch_id, token, len(rows), now_ms),
            )
            self._unbatched -= self._db.execute(
                "UPDATE readings SET seq = ? WHERE id BETWEEN ? AND ? AND seq IS NULL AND id > ?",
                (seq, rows[0][0], rows[-1][0], after_id),
            ).rowcount
            self._c["last_seq"] = seq
            self._save_counters("last_seq", "quarantined")
        return PendingBatch(seq, batch.batch_id, token, len(rows))

    def reseal(self, key: SigningKey) -> int:
        """Sign every sealed, unreceipted batch again with ``key`` (after a rotation or re-enrollment):
        the same payload bytes (seq, batch id, readings), a new signature, in one transaction.
        Returns how many batches were re-sealed. Their readings are honest; only the key changed."""
        with self._lock, self._tx():
            rows = self._db.execute("SELECT seq, token FROM batches ORDER BY seq").fetchall()
            for seq, token in rows:
                old = jws.decode(bytes(token))
                new = jws.sign(old.payload, key, kid=old.kid, typ=old.typ)
                self._db.execute("UPDATE batches SET token = ? WHERE seq = ?", (new, seq))
        return len(rows)

    def _quarantine_rows(
        self, seq: int | None, batch_id: str | None, n: int, reason: str, now_ms: int, data: bytes
    ) -> None:
        self._db.execute(
            "INSERT INTO quarantine(seq, batch_id, n, reason, at, data) VALUES (?, ?, ?, ?, ?, ?)",
            (seq, batch_id, n, reason, now_ms, data),
        )
        self._db.execute("DELETE FROM quarantine WHERE id <= (SELECT max(id) FROM quarantine) - ?", (QUARANTINE_KEEP,))
        self._c["quarantined"] += n

    def quarantine(self, seq: int, reason: str, now_ms: int) -> int:
        """Set the sealed batch ``seq`` aside: the cloud never verified it (no receipt while it answered
        other batches). Its token is kept in ``quarantine`` for inspection, its readings leave the
        buffer and are counted as quarantined. Returns how many readings."""
        with self._lock, self._tx():
            row = self._db.execute("SELECT batch_id, token FROM batches WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return 0
            n, _ = self._delete_batches([seq])
            self._quarantine_rows(seq, row[0], n, reason, now_ms, bytes(row[1]))
            self._save_counters("quarantined")
        return int(n)

    def quarantined(self) -> list[tuple[int | None, str, int, int]]:
        """(seq, reason, readings, at ms) of what is in quarantine, oldest first."""
        with self._lock:
            return [
                (seq, reason, n, at)
                for seq, reason, n, at in self._db.execute("SELECT seq, reason, n, at FROM quarantine ORDER BY id")
            ]

    def unreceipted(self) -> list[PendingBatch]:
        """Sealed batches without a receipt, in seq order (to resend after a restart or reconnect)."""
        with self._lock:
            return [
                PendingBatch(s, b, bytes(t), n)
                for s, b, t, n in self._db.execute("SELECT seq, batch_id, token, n FROM batches ORDER BY seq")
            ]

    def ack(
        self,
        stored: Iterable[int] = (),
        rejected: Iterable[int] = (),
        *,
        rejected_readings: Mapping[int, int] | None = None,
    ) -> int:
        """Apply a receipt: delete the named batches and their readings. ``rejected_readings``: per
        stored seq, how many of its readings the receipt says were rejected (counted as rejected, the
        rest as stored). Returns readings deleted; unknown seqs (already receipted, or dropped) are
        ignored."""
        stored, rejected = list(stored), list(rejected)
        if not stored and not rejected:
            return 0
        partial = rejected_readings or {}
        with self._lock, self._tx():
            n_stored, _ = self._delete_batches([s for s in stored if s not in partial])
            n_partial = 0
            for seq in (s for s in stored if s in partial):  # partly stored: count each one's rejections
                n, _ = self._delete_batches([seq])
                k = min(n, partial[seq])
                n_stored += n - k
                n_partial += k
            n_rejected, _ = self._delete_batches(rejected)
            self._c["stored"] += n_stored
            self._c["rejected"] += n_rejected + n_partial
            self._save_counters("stored", "rejected", "dropped")
        return n_stored + n_partial + n_rejected

    def _delete_batches(self, seqs: Sequence[int]) -> tuple[int, int]:
        if not seqs:
            return 0, 0
        marks = ",".join(str(int(s)) for s in seqs)
        sizes = self._db.execute(f"DELETE FROM readings WHERE seq IN ({marks}) RETURNING size").fetchall()
        n, nbytes = len(sizes), sum(size for (size,) in sizes)
        self._db.execute(f"DELETE FROM batches WHERE seq IN ({marks})")
        self._rows -= n
        self._bytes -= nbytes
        return n, nbytes

    # ------------------------------------------------------------------ state, stats
    def max_id(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0])

    @property
    def last_id(self) -> int:
        """The highest reading id assigned so far (at least :meth:`max_id`; ids are never reused, so
        "id > last_id" and "id > max_id()" select the same readings, now and later), without a query."""
        return self._last_id

    def stats(self) -> BufferStats:
        with self._lock:
            unbatched = self._db.execute("SELECT count(*) FROM readings WHERE seq IS NULL").fetchone()[0]
            batches = self._db.execute("SELECT count(*) FROM batches").fetchone()[0]
            c = self._c
            return BufferStats(
                self._rows,
                unbatched,
                batches,
                self._bytes,
                c["produced"],
                c["dropped"],
                c["stored"],
                c["rejected"],
                c["last_seq"],
                c.get("quarantined", 0),
            )

    @property
    def depth(self) -> int:
        return self._rows

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._c)

    def produced_log(self) -> list[Reading]:
        """Every reading produced, in order (only when opened with ``keep_produced_log``)."""
        with self._lock:
            return [reading_from_body(b) for (b,) in self._db.execute("SELECT body FROM produced_log ORDER BY id")]

    def get_state(self, key: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else orjson.loads(row[0])

    def set_state(self, key: str, value: Any) -> None:
        with self._lock, self._tx():
            self._db.execute("INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)", (key, orjson.dumps(value)))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ internals
    def _save_counters(self, *names: str) -> None:
        """Write those of ``names`` whose value differs from the one committed (the rest already are)."""
        c, saved = self._c, self._saved
        rows = [(c[n], n) for n in names if saved.get(n) != c[n]]
        if rows:
            self._db.executemany("UPDATE counters SET value = ? WHERE name = ?", rows)
            for v, n in rows:
                saved[n] = v

    class _Tx:
        __slots__ = ("buf",)

        def __init__(self, buf: Buffer) -> None:
            self.buf = buf

        def __enter__(self) -> None:
            self.buf._db.execute("BEGIN IMMEDIATE")

        def __exit__(self, et: object, ev: object, tb: object) -> None:
            if et is None:
                self.buf._db.execute("COMMIT")
                return
            self.buf._db.execute("ROLLBACK")
            self.buf._saved = {}  # what the database holds is unsure now: write every counter next time

    def _tx(self) -> Buffer._Tx:
        return Buffer._Tx(self)
