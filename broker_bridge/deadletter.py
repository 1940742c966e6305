"""Dead letters: RejectedMessage rows in the metadata DB, written in batches.

Rejections are queued in memory (bounded; what overflows is dropped and counted, never silent)
and flushed by the side-effect thread; while the DB is down they wait and are retried. A letter the
DB refuses for good is set aside on its own (:func:`broker_bridge.sinks.write_isolating`), counted
and logged, and the others are written.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.engine import Engine

from cloud_core.models import RejectedMessage

from .sinks import write_isolating

__all__ = ["DeadLetter", "DeadLetterQueue"]

PAYLOAD_KEEP = 4096

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    device_id: str | None
    topic: str
    reason: str
    detail: str | None
    seq: int | None
    reading_index: int | None
    received_at: datetime
    payload_sha256: str
    payload: bytes | None


def _text(s: str) -> str:
    # PostgreSQL text cannot hold NUL; lone surrogates cannot be encoded: keep the rest readable.
    return s.replace("\x00", "\\0").encode("utf-8", "replace").decode("utf-8")


class DeadLetterQueue:
    """Bounded buffer of dead letters in front of the metadata DB."""

    def __init__(self, engine: Engine, *, max_buffer: int) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._buf: deque[DeadLetter] = deque()
        self._max = max_buffer
        self.dropped = 0
        self.refused = 0
        self.written = 0

    def put(self, letter: DeadLetter) -> bool:
        """Queue ``letter``; False (and counted in ``dropped``) when the buffer is full."""
        with self._lock:
            if len(self._buf) >= self._max:
                self.dropped += 1
                return False
            self._buf.append(letter)
            return True

    def __len__(self) -> int:
        return len(self._buf)

    def flush(self, limit: int = 5000, *, alive: Callable[[], bool] | None = None) -> int:
        """Write up to ``limit`` queued letters in one transaction; returns how many left the queue.
        A letter the DB refuses (``alive`` says it answers) is dropped and counted in ``refused``;
        raises when the DB is down (the letters stay queued)."""
        with self._lock:
            batch = [self._buf[i] for i in range(min(limit, len(self._buf)))]
        if not batch:
            return 0
        refused, pending = write_isolating(batch, self._insert, alive or (lambda: False))
        for letter, exc in refused:
            log.error(
                "dead letter refused by the DB, dropped: %s",
                str(exc).splitlines()[0][:300],
                extra={"device_id": letter.device_id, "seq": letter.seq, "reason": letter.reason},
            )
        done = len(batch) - len(pending)
        with self._lock:
            for _ in range(done):
                self._buf.popleft()
            self.written += done - len(refused)
            self.refused += len(refused)
        return done

    def _insert(self, batch: Sequence[DeadLetter]) -> None:
        rows = [
            {
                "device_id": d.device_id,
                "topic": _text(d.topic)[:512],
                "reason": d.reason[:64],
                "detail": _text(d.detail)[:2000] if d.detail is not None else None,
                "seq": d.seq,
                "reading_index": d.reading_index,
                "received_at": d.received_at,
                "payload_sha256": d.payload_sha256,
                "payload": d.payload[:PAYLOAD_KEEP] if d.payload is not None else None,
            }
            for d in batch
        ]
        with self._engine.begin() as conn:
            conn.execute(insert(RejectedMessage), rows)
