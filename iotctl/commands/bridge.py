"""``iotctl bridge run``: run one ingest bridge replica until SIGINT/SIGTERM.

Every flag has an ``EDU_BRIDGE_*`` environment variable (flags win); see docs/bridge.md.
"""

from __future__ import annotations

from typing import Any

import typer

from iotctl.errors import CliError

app = typer.Typer(no_args_is_help=True, help="Run the ingest bridge (broker -> verification -> time-series store).")


@app.callback()
def _bridge() -> None:
    """Run the ingest bridge (broker -> verification -> time-series store)."""


@app.command("run")
def run(
    mqtt_url: str | None = typer.Option(None, "--mqtt-url", help="Broker, mqtt://host:port [EDU_BRIDGE_MQTT_URL]."),
    mqtt_username: str | None = typer.Option(None, "--mqtt-username", help="Service-account user name."),
    mqtt_password: str | None = typer.Option(
        None, "--mqtt-password", envvar="EDU_BRIDGE_MQTT_PASSWORD", help="Service-account password."
    ),
    db_url: str | None = typer.Option(None, "--db-url", help="Metadata DB: sqlite:///PATH or postgresql://..."),
    tsdb_url: str | None = typer.Option(
        None, "--tsdb-url", help="Readings: sqlite:///PATH or influxdb://HOST:PORT/DB."
    ),
    cache_url: str | None = typer.Option(None, "--cache-url", help="memory:// or redis://HOST:PORT/DB."),
    topic_prefix: str | None = typer.Option(None, "--topic-prefix", help="Topic prefix (default edu)."),
    share_group: str | None = typer.Option(None, "--share-group", help="Shared-subscription group of the replicas."),
    client_id: str | None = typer.Option(
        None, "--client-id", help="Stable per replica: a restart resumes the session and its unacked messages."
    ),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="/health /ready /metrics port (0 = any)."),
    no_metrics: bool = typer.Option(False, "--no-metrics", help="Do not serve HTTP."),
    batch_max_points: int | None = typer.Option(None, "--batch-max-points", help="Points per store write."),
    batch_max_delay: float | None = typer.Option(None, "--batch-max-delay", help="Seconds a write waits to fill."),
    receive_maximum: int | None = typer.Option(None, "--receive-maximum", help="MQTT 5 Receive Maximum."),
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING, ERROR."),
) -> None:
    """Run one bridge replica in the foreground (JSON logs on stderr)."""
    from pydantic import ValidationError

    from broker_bridge import BridgeSettings, ConfigError, run_bridge
    from cloud_core.core.logging import setup_logging

    given: dict[str, Any] = {
        "mqtt_url": mqtt_url,
        "mqtt_username": mqtt_username,
        "mqtt_password": mqtt_password,
        "db_url": db_url,
        "tsdb_url": tsdb_url,
        "cache_url": cache_url,
        "topic_prefix": topic_prefix,
        "share_group": share_group,
        "client_id": client_id,
        "metrics_port": metrics_port,
        "batch_max_points": batch_max_points,
        "batch_max_delay_s": batch_max_delay,
        "receive_maximum": receive_maximum,
    }
    kwargs = {k: v for k, v in given.items() if v is not None}
    if no_metrics:
        kwargs["metrics_port"] = None
    setup_logging(log_level)
    try:
        settings = BridgeSettings(**kwargs)
        run_bridge(settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "settings"
        raise CliError(f"bad bridge setting {loc}: {first['msg']}") from None
    except ConfigError as exc:
        raise CliError(str(exc)) from None
