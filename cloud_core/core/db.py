"""Metadata database: one SQLModel engine per process, built from a URL at the entry point.

``sqlite:///path/meta.db`` (embedded, WAL) or ``postgresql://user@host:port/db`` (production).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

__all__ = ["create_all", "make_engine", "register_models", "session_scope"]


def make_engine(url: str) -> Engine:
    """Engine for ``url``; ``postgresql://`` uses psycopg 3. Raises ValueError for other schemes."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    if url.startswith("sqlite:///"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    raise ValueError(f"unsupported metadata database URL {url!r}: use sqlite:///PATH or postgresql://...")


def register_models() -> None:
    """Import every table module, so ``SQLModel.metadata`` holds the whole schema."""
    from .. import models  # noqa: F401 - registers the tables on SQLModel.metadata
    from ..analytics import models as analytics_models  # noqa: F401 - the anomalies table
    from ..rollouts import models as rollout_models  # noqa: F401 - rollouts, releases, firmware events


def create_all(engine: Engine) -> None:
    """Bring the schema to the newest revision this code knows (idempotent; see
    :func:`cloud_core.core.migrate.ensure_schema`). Raises SchemaTooNew when the database was
    migrated by newer code."""
    from .migrate import ensure_schema

    ensure_schema(engine)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
