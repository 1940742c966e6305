"""The batch ledger: which seqs of each device are stored (BatchLedger rows), for replay detection
and loss accounting.

:class:`Ledger` answers "what payload hash is stored under (device, seq)?" for a whole flush in one
query, remembers recent answers in memory, and records new rows in bulk (insert-or-ignore, so
replicas racing on a redelivered batch are harmless). :func:`compute_ledger` balances a device's
books: produced = stored + rejected + buffered + dropped + in flight, naming missing seq ranges.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, text, tuple_
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from cloud_core.models import BatchLedger, Device

__all__ = ["DeviceLedger", "Ledger", "LedgerRow", "compute_ledger", "missing_ranges"]

log = logging.getLogger(__name__)

_CHUNK = 500
_PG_KNOWN = text(
    "SELECT l.device_id, l.seq, l.payload_sha256 FROM batch_ledger l "
    "JOIN unnest(CAST(:d AS text[]), CAST(:s AS bigint[])) AS q(device_id, seq) "
    "ON l.device_id = q.device_id AND l.seq = q.seq"
)
_PG_RECORD = text(
    "INSERT INTO batch_ledger (device_id, seq, batch_id, payload_sha256, readings, rejected_readings, stored_at) "
    "SELECT * FROM unnest(CAST(:device_id AS text[]), CAST(:seq AS bigint[]), CAST(:batch_id AS text[]), "
    "CAST(:payload_sha256 AS text[]), CAST(:readings AS integer[]), CAST(:rejected_readings AS integer[]), "
    "CAST(:stored_at AS timestamptz[])) ON CONFLICT DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class LedgerRow:
    device_id: str
    seq: int
    batch_id: str
    sha256: str
    readings: int
    rejected_readings: int
    stored_at: datetime


class Ledger:
    """Stored-seq lookups (batched, cached) and bulk recording against the metadata DB."""

    def __init__(self, engine: Engine, *, cache_size: int = 200_000) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._recent: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._cache_size = cache_size

    def remember(self, device_id: str, seq: int, sha256: str) -> None:
        with self._lock:
            self._recent[(device_id, seq)] = sha256
            if len(self._recent) > self._cache_size:
                self._recent.popitem(last=False)

    def known(self, pairs: Iterable[tuple[str, int]]) -> dict[tuple[str, int], str]:
        """Stored hash per (device, seq) for those of ``pairs`` that are stored.

        Raises whatever the DB raises when it is down; the caller then decides on what memory knows
        (:meth:`known_in_memory`).
        """
        out: dict[tuple[str, int], str] = {}
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
            with self._engine.connect() as conn:
                rows = conn.execute(_PG_KNOWN, {"d": [p[0] for p in ask], "s": [p[1] for p in ask]})
                for device_id, seq, h in rows:
                    out[(device_id, seq)] = h
            return out
        with Session(self._engine) as session:
            for i in range(0, len(ask), _CHUNK):
                chunk = ask[i : i + _CHUNK]
                stmt = select(BatchLedger.device_id, BatchLedger.seq, BatchLedger.payload_sha256).where(
                    tuple_(BatchLedger.device_id, BatchLedger.seq).in_(chunk)
                )
                for device_id, seq, h in session.exec(stmt):
                    out[(device_id, seq)] = h
        return out

    def known_in_memory(self, pairs: Iterable[tuple[str, int]]) -> dict[tuple[str, int], str]:
        with self._lock:
            return {p: h for p in pairs if (h := self._recent.get(p)) is not None}

    def record(self, rows: Sequence[LedgerRow]) -> None:
        """Insert rows, ignoring those already there. Raises when the DB is down (caller retries)."""
        if not rows:
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
            }
            for r in rows
        ]
        if self._engine.dialect.name == "postgresql":
            # One statement per flush: arrays unnested server-side, far cheaper than executemany.
            values.sort(key=lambda v: (v["device_id"], v["seq"]))  # one lock order across replicas
            cols = {k: [v[k] for v in values] for k in values[0]}
            with self._engine.begin() as conn:
                conn.execute(_PG_RECORD, cols)
            return
        stmt = sqlite.insert(BatchLedger).on_conflict_do_nothing()  # executemany: compiled once, cached
        with self._engine.begin() as conn:
            conn.execute(stmt, values)


def missing_ranges(seqs: Iterable[int], *, first: int, last: int) -> list[tuple[int, int]]:
    """Inclusive ranges of [first, last] not in ``seqs``."""
    have = sorted({s for s in seqs if first <= s <= last})
    out: list[tuple[int, int]] = []
    expect = first
    for s in have:
        if s > expect:
            out.append((expect, s - 1))
        expect = s + 1
    if expect <= last:
        out.append((expect, last))
    return out


@dataclass(frozen=True, slots=True)
class DeviceLedger:
    """A device's books. ``in_flight`` is what the other terms do not explain: sent, not yet stored."""

    device_id: str
    produced: int
    stored: int
    rejected: int
    buffered: int
    dropped: int
    in_flight: int
    stored_batches: int
    last_seq: int
    missing: tuple[tuple[int, int], ...]
    health_at: int | None

    @property
    def balanced(self) -> bool:
        return self.in_flight == 0 and not self.missing


def compute_ledger(session: Session, device_id: str, *, first_seq: int = 1) -> DeviceLedger:
    """Balance ``device_id``'s books from the BatchLedger and its last Health (Device.health).

    produced = stored + rejected + buffered + dropped + in flight, in readings. ``missing`` names the
    seq ranges up to the device's last sent seq (or the highest stored one) that are not stored.

    Raises:
        KeyError: no such device.
    """
    device = session.get(Device, device_id)
    if device is None:
        raise KeyError(device_id)
    stored, rejected, batches, max_seq = session.exec(
        select(
            func.coalesce(func.sum(BatchLedger.readings), 0),
            func.coalesce(func.sum(BatchLedger.rejected_readings), 0),
            func.count(),
            func.coalesce(func.max(BatchLedger.seq), 0),
        ).where(BatchLedger.device_id == device_id)
    ).one()
    health = device.health or {}
    produced = int(health.get("produced", 0) or 0)
    buffered = int(health.get("buffer_depth", 0) or 0)
    dropped = int(health.get("dropped", 0) or 0)
    last_seq = max(int(health.get("last_seq", 0) or 0), int(max_seq))
    seqs = session.exec(select(BatchLedger.seq).where(BatchLedger.device_id == device_id)).all()
    missing = missing_ranges(seqs, first=first_seq, last=last_seq)
    in_flight = produced - int(stored) - int(rejected) - buffered - dropped
    at = health.get("at")
    return DeviceLedger(
        device_id=device_id,
        produced=produced,
        stored=int(stored),
        rejected=int(rejected),
        buffered=buffered,
        dropped=dropped,
        in_flight=in_flight,
        stored_batches=int(batches),
        last_seq=last_seq,
        missing=tuple(missing),
        health_at=int(at) if isinstance(at, int) else None,
    )


def utc_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
