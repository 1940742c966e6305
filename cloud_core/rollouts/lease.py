"""A lease in the metadata database: one holder at a time across API replicas.

``acquire`` reads the row, decides in Python (the holder is us, or the lease expired), and writes
with an UPDATE conditioned on the row's ``generation`` it read, so of two replicas racing for an
expired lease exactly one wins on PostgreSQL and SQLite alike (no clock comparison in SQL, so
naive and aware timestamps cannot disagree). A holder that stops renewing loses the lease after
``ttl``; a renewal that comes too late finds the generation changed and fails.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from ..models import utcnow
from ..services.registry import as_utc
from .models import EngineLease

__all__ = ["Lease"]


class Lease:
    """Args:
    db: the metadata database.
    name: the lease's name (one row per engine kind).
    holder: this process's identity (unique per process).
    ttl_s: how long an acquisition or renewal holds.
    """

    def __init__(self, db: Engine, name: str, holder: str, ttl_s: float) -> None:
        self.db = db
        self.name = name
        self.holder = holder
        self.ttl = timedelta(seconds=ttl_s)

    def acquire(self) -> bool:
        """Take or renew the lease; True when this process holds it until ``now + ttl``."""
        now = utcnow()
        with Session(self.db) as session:
            row = session.get(EngineLease, self.name)
            if row is None:
                session.add(EngineLease(name=self.name, holder=self.holder, expires_at=now + self.ttl, generation=1))
                try:
                    session.commit()
                except IntegrityError:  # another replica created it first
                    return False
                return True
            mine = row.holder == self.holder
            if not mine and as_utc(row.expires_at) > now:
                return False
            values: dict[str, object] = {
                "holder": self.holder,
                "expires_at": now + self.ttl,
                "generation": row.generation + 1,
            }
            if not mine:
                values["acquired_at"] = now
            result = session.execute(
                update(EngineLease)
                .where(EngineLease.name == self.name, EngineLease.generation == row.generation)  # type: ignore[arg-type]
                .values(**values)
            )
            session.commit()
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def release(self) -> None:
        """Give the lease up at once (a clean shutdown), if this process holds it."""
        with Session(self.db) as session:
            row = session.get(EngineLease, self.name)
            if row is not None and row.holder == self.holder:
                session.execute(
                    update(EngineLease)
                    .where(EngineLease.name == self.name, EngineLease.generation == row.generation)  # type: ignore[arg-type]
                    .values(expires_at=utcnow() - self.ttl, generation=row.generation + 1)
                )
                session.commit()

    def holder_now(self) -> str | None:
        """Who holds the lease now (None: nobody, or it expired)."""
        with Session(self.db) as session:
            row = session.get(EngineLease, self.name)
            if row is None or as_utc(row.expires_at) <= utcnow():
                return None
            return row.holder
