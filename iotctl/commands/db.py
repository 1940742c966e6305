"""``iotctl db init``: create the metadata tables and the time-series schema (both idempotent)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from ..errors import CliError
from ..statedir import StateDirOption

app = typer.Typer(no_args_is_help=True)


@app.callback()
def _db() -> None:
    """Initialise databases: metadata tables, InfluxDB retention and downsampling."""


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
