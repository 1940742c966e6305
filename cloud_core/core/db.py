"""Metadata database: one SQLModel engine per process, built from a URL at the entry point.

``sqlite:///path/meta.db`` (embedded, WAL) or ``postgresql://user@host:port/db`` (production).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

__all__ = ["CONNECT_TIMEOUT_S", "create_all", "make_engine", "register_models", "session_scope"]

#: How long a PostgreSQL connection attempt may take, start-up and authentication included, unless the
#: URL says otherwise (``?connect_timeout=N``). libpq's own default is to wait for ever: a database
#: host that drops packets (a firewall, a dead node) would hang the API, the bridge's writer and every
#: ``iotctl`` command for the kernel's TCP retries (minutes) or, behind a proxy that accepts and never
#: answers, indefinitely.
CONNECT_TIMEOUT_S = 10


def make_engine(url: str) -> Engine:
    """Engine for ``url``; ``postgresql://`` uses psycopg 3. Raises ValueError for other schemes."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
        query = url.partition("?")[2]
        connect_args = {} if "connect_timeout=" in query else {"connect_timeout": CONNECT_TIMEOUT_S}
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args=connect_args)
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
