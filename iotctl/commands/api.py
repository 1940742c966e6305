"""``iotctl api``: run the cloud REST API (uvicorn) with settings from EDU_* and these options."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from iotctl.errors import CliError

app = typer.Typer(help="Run the cloud REST API.")


@app.callback(invoke_without_command=True)
def api(
    host: Annotated[str | None, typer.Option("--host", help="Listen address (default EDU_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Listen port (default EDU_API_PORT).")] = None,
    events: Annotated[
        bool, typer.Option("--events/--no-events", help="Also consume device status/health/config reports.")
    ] = True,
) -> None:
    """Serve the REST API until interrupted. Settings come from EDU_* environment variables (docs/deployment.md)."""
    import uvicorn
    from pydantic import ValidationError

    from cloud_core.api import create_app
    from cloud_core.broker.admin import BrokerAdminError
    from cloud_core.core.config import CloudSettings
    from cloud_core.core.logging import setup_logging
    from cloud_core.core.migrate import SchemaError

    try:
        settings = CloudSettings()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CliError(f"bad setting EDU_{str(first['loc'][0]).upper()}: {first['msg']}") from None
    if host is not None:
        settings.api_host = host
    if port is not None:
        settings.api_port = port
    setup_logging(settings.log_level)
    settings.state_dir.mkdir(parents=True, exist_ok=True)  # the embedded SQLite database lives there
    _check_schema(settings.db_url, migrate=settings.db_auto_migrate)
    app_ = create_app(settings, consume_events=events)
    try:
        tls = {}
        if settings.api_tls_cert_file is not None:  # HTTPS: devices enroll over it
            tls = {"ssl_certfile": str(settings.api_tls_cert_file), "ssl_keyfile": str(settings.api_tls_key_file)}

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                app_.state.stopping.set()  # open live streams (the console's) end by themselves first
                super().handle_exit(sig, frame)

        # what still runs 5 s after the signal (a stream that did not end) is cancelled
        config = uvicorn.Config(
            app_, host=settings.api_host, port=settings.api_port, log_config=None, timeout_graceful_shutdown=5, **tls
        )
        Server(config).run()
    except (BrokerAdminError, SchemaError) as exc:
        raise CliError(f"cannot start the API: {exc}") from None


def _check_schema(db_url: str, *, migrate: bool) -> None:
    """Refuse, in one line, a metadata schema newer than this release (or an older one the API may
    not migrate) before uvicorn starts: an error in the app's lifespan would be a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    from cloud_core.core.db import make_engine
    from cloud_core.core.migrate import SchemaError, ensure_schema

    try:
        engine = make_engine(db_url)
    except ValueError as exc:
        raise CliError(f"bad setting EDU_DB_URL: {exc}") from None
    try:
        ensure_schema(engine, migrate=migrate)
    except SchemaError as exc:
        raise CliError(f"cannot start the API: {exc}") from None
    except SQLAlchemyError as exc:
        first = str(exc.orig if getattr(exc, "orig", None) is not None else exc).splitlines()[0]
        raise CliError(f"cannot start the API: the metadata database {db_url.split('@')[-1]} failed: {first}") from None
    finally:
        engine.dispose()
