"""Schema migrations of the metadata database (Alembic; revisions in ``cloud_core/migrations/versions``).

Every service calls :func:`ensure_schema` at start (through :func:`cloud_core.core.db.create_all`):
an empty database is migrated to the newest revision, an older one too (unless ``migrate=False``:
then it is refused until ``iotctl db upgrade`` runs), and a database at a revision this code does
not know (migrated by a newer release) is refused. A database created before migrations existed
(tables, no ``alembic_version``) is stamped with the first revision, which equals that schema, and
carried forward. Migrations run under a lock (PostgreSQL advisory lock, or a lock file beside an
SQLite database), so replicas starting together migrate once.

Errors::

    SchemaError              root; the message says what to run
    ├── SchemaTooNew         the database is at a revision newer than this code knows
    └── SchemaOutdated       the database is older and this service may not migrate it
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

__all__ = [
    "FIRST_REVISION",
    "SchemaError",
    "SchemaOutdated",
    "SchemaState",
    "SchemaTooNew",
    "downgrade",
    "ensure_schema",
    "head_revision",
    "schema_state",
    "upgrade",
]

log = logging.getLogger(__name__)

FIRST_REVISION = "0001"
_LOCK_KEY = 0x6564_7500  # "edu\0": the advisory lock migrations hold on PostgreSQL
_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


class SchemaError(Exception):
    """The metadata schema cannot be used as it is; the message says what to run."""


class SchemaTooNew(SchemaError):
    """The database was migrated by a newer release than this one."""


class SchemaOutdated(SchemaError):
    """The database is at an older revision and this service was told not to migrate it."""


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database stands: its revision (None: none recorded), the newest this code knows,
    and whether it holds tables from before migrations (``legacy``) or nothing at all (``empty``)."""

    current: str | None
    head: str
    known: bool
    legacy: bool
    empty: bool

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    """The newest revision this code knows."""
    head = _script().get_current_head()
    assert head is not None, "no migrations found"
    return head


def _state(conn: Connection) -> SchemaState:
    current = MigrationContext.configure(conn).get_current_revision()
    tables = set(inspect(conn).get_table_names())
    script = _script()
    head = head_revision()
    known = current is None
    if current is not None:
        try:
            known = script.get_revision(current) is not None
        except Exception:  # alembic raises for an id it cannot resolve
            known = False
    return SchemaState(
        current=current,
        head=head,
        known=known,
        legacy=current is None and "devices" in tables,
        empty=not (tables - {"alembic_version"}),
    )


def schema_state(engine: Engine) -> SchemaState:
    """Where ``engine``'s database stands (reads only)."""
    with engine.connect() as conn:
        return _state(conn)


@contextlib.contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection holding the migration lock for as long as the block runs."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
            conn.commit()
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
                conn.commit()
        return
    database = engine.url.database
    lock_path = Path(f"{database}.migrate.lock") if database and database != ":memory:" else None
    with contextlib.ExitStack() as stack:
        if lock_path is not None:
            fh = stack.enter_context(lock_path.open("a"))
            fcntl.flock(fh, fcntl.LOCK_EX)
        with engine.connect() as conn:
            # Batch migrations copy and drop tables; with foreign keys enforced, dropping a parent table
            # that has rows pointing at it fails. Off for the migration (outside any transaction), then
            # checked and back on.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            try:
                yield conn
                problems = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if problems:
                    raise SchemaError(f"foreign keys broken after the migration: {problems[:5]}")
            finally:
                conn.rollback()
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")


def _too_new(state: SchemaState) -> SchemaTooNew:
    return SchemaTooNew(
        f"the metadata database is at schema revision {state.current}, which this release does not know "
        f"(its newest is {state.head}): run the newer release, or downgrade the database with it "
        f"('iotctl db downgrade {state.head}')"
    )


def _adopt_legacy(conn: Connection) -> None:
    """Stamp a database created before migrations with the first revision (which equals its schema),
    after adding the one column older installs may lack (``batch_ledger.key_id``)."""
    tables = set(inspect(conn).get_table_names())
    if "batch_ledger" in tables and "key_id" not in {c["name"] for c in inspect(conn).get_columns("batch_ledger")}:
        conn.execute(text("ALTER TABLE batch_ledger ADD COLUMN key_id VARCHAR(16)"))
    conn.commit()
    command.stamp(_config(conn), FIRST_REVISION)
    conn.commit()
    log.info("metadata database from before migrations adopted at revision %s", FIRST_REVISION)


def upgrade(engine: Engine, revision: str = "head") -> SchemaState:
    """Migrate to ``revision`` (default: the newest) under the lock; returns the state after.

    Raises:
        SchemaTooNew: the database is at a revision this code does not know.
    """
    with _locked(engine) as conn:
        state = _state(conn)
        if not state.known:
            raise _too_new(state)
        if state.legacy:
            _adopt_legacy(conn)
        command.upgrade(_config(conn), revision)
        conn.commit()
        if revision == "head":
            _create_unmigrated(conn)
        return _state(conn)


def _create_unmigrated(conn: Connection) -> None:
    """Create tables that models define but no revision does yet (a model added without its
    migration: tests/test_migrations.py fails on that drift; this keeps the service running)."""
    from sqlmodel import SQLModel

    from .db import register_models

    register_models()
    before = set(inspect(conn).get_table_names())
    SQLModel.metadata.create_all(conn)
    conn.commit()
    added = set(inspect(conn).get_table_names()) - before
    if added:
        log.warning("tables without a migration were created directly: %s", ", ".join(sorted(added)))


def downgrade(engine: Engine, revision: str) -> SchemaState:
    """Migrate down to ``revision`` (an id, or ``base`` for nothing) under the lock."""
    with _locked(engine) as conn:
        state = _state(conn)
        if not state.known:
            raise _too_new(state)
        if state.legacy:
            _adopt_legacy(conn)
        command.downgrade(_config(conn), revision)
        conn.commit()
        return _state(conn)


def ensure_schema(engine: Engine, *, migrate: bool = True) -> SchemaState:
    """What a service runs at start: refuse a schema newer than this code; migrate an empty or
    older one (or refuse it when ``migrate`` is False); do nothing when it is current.

    Raises:
        SchemaTooNew: migrated by a newer release.
        SchemaOutdated: older, and ``migrate`` is False.
    """
    state = schema_state(engine)
    if not state.known:
        raise _too_new(state)
    if state.at_head:
        try:
            with engine.connect() as conn:
                _create_unmigrated(conn)
        except Exception as exc:  # a replica racing this one created it first
            log.debug("create_all after the schema check: %s", exc)
        return state
    if not migrate and not state.empty:
        raise SchemaOutdated(
            f"the metadata database is at schema revision {state.current or 'none (before migrations)'}, "
            f"this release needs {state.head}: run 'iotctl db upgrade'"
        )
    return upgrade(engine)
