"""``iotctl db``: ``init`` (metadata schema at the newest revision and the time-series schema, both
idempotent), and the metadata schema's migrations: ``upgrade``, ``current``, ``downgrade``."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from ..errors import CliError
from ..statedir import StateDirOption

app = typer.Typer(no_args_is_help=True)


@app.callback()
def _db() -> None:
    """Initialise databases and migrate the metadata schema (upgrade, current, downgrade)."""


def _redact(url: str) -> str:
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@app.command("init")
def init(
    db: str | None = typer.Option(
        None,
        "--db",
        envvar="IOTCTL_DB",
        help="Metadata database: sqlite:///PATH or postgresql://... (default: embedded, in the state dir).",
    ),
    tsdb: str | None = typer.Option(
        None,
        "--tsdb",
        envvar="IOTCTL_TSDB",
        help="Time-series store: sqlite:///PATH or influxdb://HOST:PORT/DB (default: the embedded one).",
    ),
    state_dir: StateDirOption = None,
) -> None:
    """Create the metadata tables and the time-series schema (retention policies, continuous queries)."""
    from sqlalchemy.exc import SQLAlchemyError

    from cloud_core.core.db import create_all, make_engine
    from cloud_core.core.migrate import SchemaError
    from cloud_core.paths import default_db_url, default_tsdb_url
    from cloud_core.tsdb import StoreError, open_tsdb

    db_url = db or default_db_url()
    tsdb_url = tsdb or default_tsdb_url()
    for url in (db_url, tsdb_url):
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = make_engine(db_url)
    except ValueError as exc:
        raise CliError(_one_line(exc)) from None
    try:
        create_all(engine)
    except SchemaError as exc:
        raise CliError(str(exc), exit_code=1) from None
    except SQLAlchemyError as exc:
        raise CliError(
            f"cannot create tables in {_redact(db_url)}: {_one_line(exc.orig or exc)}", exit_code=1
        ) from None
    finally:
        engine.dispose()
    typer.echo(f"metadata tables ready in {_redact(db_url)}")
    try:
        store = open_tsdb(tsdb_url)
    except ValueError as exc:
        raise CliError(_one_line(exc)) from None
    try:
        store.init_schema()
    except StoreError as exc:
        raise CliError(f"cannot initialise {store.url}: {_one_line(exc)}", exit_code=1) from None
    finally:
        store.close()
    typer.echo(f"time-series schema ready in {store.url}")


DbOption = typer.Option(
    None,
    "--db",
    envvar="IOTCTL_DB",
    help="Metadata database: sqlite:///PATH or postgresql://... (default: embedded, in the state dir).",
)


def _migrate(db: str | None, action: str, revision: str | None = None) -> None:
    """Run one migration action on the metadata database and print where it stands after."""
    from sqlalchemy.exc import SQLAlchemyError

    from cloud_core.core import migrate
    from cloud_core.core.db import make_engine
    from cloud_core.paths import default_db_url

    db_url = db or default_db_url()
    if db_url.startswith("sqlite:///"):
        path = Path(db_url[len("sqlite:///") :]).expanduser()
        if action != "upgrade" and not path.exists():
            raise CliError(f"no metadata database at {path}: run 'iotctl db upgrade' or pass --db")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = make_engine(db_url)
    except ValueError as exc:
        raise CliError(_one_line(exc)) from None
    try:
        if action == "upgrade":
            state = migrate.upgrade(engine, revision or "head")
        elif action == "downgrade":
            assert revision is not None
            state = migrate.downgrade(engine, revision)
        else:
            state = migrate.schema_state(engine)
    except migrate.SchemaError as exc:
        raise CliError(str(exc), exit_code=1) from None
    except SQLAlchemyError as exc:
        doing = {"current": "read the schema revision of", "upgrade": "upgrade", "downgrade": "downgrade"}[action]
        why = _one_line(exc.orig or exc)
        raise CliError(f"cannot {doing} {_redact(db_url)}: {why}", exit_code=1) from None
    except Exception as exc:  # alembic's own errors (an unknown revision id): one line
        if type(exc).__module__.startswith("alembic"):
            raise CliError(f"cannot {action} to {revision!r}: {_one_line(exc)}") from None
        raise
    finally:
        engine.dispose()
    where = state.current or ("none (tables from before migrations)" if state.legacy else "none (empty)")
    note = "newest" if state.at_head else (f"newest is {state.head}" if state.known else "UNKNOWN to this release")
    typer.echo(f"{_redact(db_url)}: schema revision {where} ({note})")


@app.command("upgrade")
def upgrade(
    revision: str = typer.Argument("head", help="Revision to migrate to (default: the newest)."),
    db: str | None = DbOption,
) -> None:
    """Migrate the metadata schema forward (what the Helm chart's pre-upgrade hook runs)."""
    _migrate(db, "upgrade", revision)


@app.command("current")
def current(db: str | None = DbOption) -> None:
    """Print the metadata schema's revision and whether it is the newest this release knows."""
    _migrate(db, "current")


@app.command("downgrade")
def downgrade(
    revision: str = typer.Argument(..., help="Revision to migrate back to, e.g. 0001 (or 'base': nothing)."),
    db: str | None = DbOption,
) -> None:
    """Migrate the metadata schema back to REVISION (data in dropped tables and columns is lost)."""
    _migrate(db, "downgrade", revision)
