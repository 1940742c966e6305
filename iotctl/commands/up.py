"""``iotctl up``: run the whole platform on this machine with a live view; Ctrl-C stops it cleanly.

Embedded defaults need no server: a ``mosquitto`` child process (or in-process amqtt), SQLite and the
embedded time-series store, all under the state directory, which keeps the data after exit. Give
URLs to run against real servers instead.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path

import typer

from ..errors import CliError

app = typer.Typer(add_completion=False)


def _view(platform, started: float, rate: float):  # type: ignore[no-untyped-def]
    from rich.table import Table

    st = platform.stats()
    table = Table(title="edu-platform", title_justify="left", show_header=False, expand=False)
    table.add_column(style="bold cyan")
    table.add_column()
    table.add_row("broker", platform.broker_desc)
    table.add_row("API", platform.api_url)
    table.add_row("state dir", str(platform.state_dir))
    table.add_row("devices", f"{st.devices_registered} registered, {st.devices_connected} connected, "
                  f"{st.devices_online} online")  # fmt: skip
    table.add_row("readings/s", f"{rate:,.1f} (last 10 s)")
    table.add_row("readings stored", f"{st.readings_stored:,} in {st.batches_stored:,} batches")
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(st.rejected.items())) or "none"
    table.add_row("rejections", f"{sum(st.rejected.values()):,} ({rejected})")
    table.add_row("duplicates", f"{st.duplicates:,} (resends stored once)")
    table.add_row("backlog", f"{st.backlog:,} messages awaiting their write")
    table.add_row("anomaly episodes", f"{st.anomalies:,}")
    if platform.fleet_error:
        table.add_row("simulator", f"[red]{platform.fleet_error}[/red]")
    table.add_row("uptime", f"{time.monotonic() - started:,.0f} s   (Ctrl-C stops; data stays on disk)")
    return table, st


@app.callback(invoke_without_command=True)
def up(
    devices: int = typer.Option(5, "--devices", min=0, help="Simulated devices to run (0: none)."),
    interval: float = typer.Option(2.0, "--interval", min=0.1, help="Seconds between a device's readings."),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="Where data lives (default: the user's data dir, or $EDU_STATE_DIR)."
    ),
    broker: str | None = typer.Option(None, "--broker", help="Use this broker (mqtt://host:port) instead."),
    broker_admin_user: str | None = typer.Option(
        None, "--broker-admin-user", envvar="EDU_MQTT_ADMIN_USERNAME", help="Dynamic-security admin of --broker."
    ),
    broker_admin_password: str | None = typer.Option(
        None, "--broker-admin-password", envvar="EDU_MQTT_ADMIN_PASSWORD", help="Its password."
    ),
    db: str | None = typer.Option(None, "--db", help="Metadata DB URL (postgresql://...) instead of SQLite."),
    tsdb: str | None = typer.Option(None, "--tsdb", help="Readings store URL (influxdb://host:port/db)."),
    cache: str | None = typer.Option(None, "--cache", help="Cache URL (redis://host:port/0)."),
    mqtt_port: int = typer.Option(1883, "--mqtt-port", help="Embedded broker port (a free one if taken)."),
    api_port: int = typer.Option(8080, "--api-port", help="API port (a free one if taken)."),
    broker_kind: str = typer.Option("auto", "--embedded-broker", help="auto | mosquitto | amqtt"),
    duration: float | None = typer.Option(None, "--duration", help="Stop after this many seconds."),
    no_view: bool = typer.Option(False, "--no-view", help="Print one status line every few seconds instead."),
) -> None:
    """Run the whole platform on this machine (embedded defaults, or real servers by URL)."""
    from cloud_core.core.logging import setup_logging
    from cloud_core.paths import default_state_dir

    from ..platform import Platform, PlatformError, PlatformSettings

    if broker_kind not in ("auto", "mosquitto", "amqtt"):
        raise CliError(f"--embedded-broker must be auto, mosquitto or amqtt, not {broker_kind!r}")
    for name, url, schemes in (
        ("--broker", broker, ("mqtt://",)),
        ("--db", db, ("sqlite:///", "postgresql://", "postgres://")),
        ("--tsdb", tsdb, ("sqlite:///", "influxdb://")),
        ("--cache", cache, ("memory://", "redis://", "rediss://")),
    ):
        if url is not None and not url.startswith(schemes):
            raise CliError(f"{name} {url!r}: expected a URL starting with {' or '.join(schemes)}")
    state = (state_dir or default_state_dir()).expanduser()
    state.mkdir(parents=True, exist_ok=True)
    log_path = state / "platform.log"
    setup_logging("INFO", stream=log_path.open("a"))
    for noisy in ("transitions", "amqtt", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = PlatformSettings(
        state_dir=state, devices=devices, sampling_interval_s=interval, broker_url=broker,
        broker_admin_username=broker_admin_user, broker_admin_password=broker_admin_password,
        db_url=db, tsdb_url=tsdb, cache_url=cache, mqtt_port=mqtt_port, api_port=api_port,
        broker_kind=broker_kind,
    )  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"starting edu-platform in {state} (logs: {log_path})", file=sys.stderr)
    try:
        platform = Platform(settings).start()
    except PlatformError as exc:
        raise CliError(str(exc), exit_code=1) from None
    except Exception as exc:  # a part failed to start: name it in one line, details in the log
        raise CliError(
            f"could not start the platform: {type(exc).__name__}: {exc} (see {log_path})", exit_code=1
        ) from None
    started = time.monotonic()
    try:
        env = "" if state == default_state_dir() else f"EDU_STATE_DIR={state} "
        print(
            f"API {platform.api_url}  broker {platform.mqtt_url}\n"
            f"  in another terminal: {env}iotctl devices list  |  {env}iotctl query --since 5m  |  "
            f"{env}iotctl sim run --scenario firmware_sim/scenarios/classroom.toml",
            file=sys.stderr,
        )
        deadline = started + duration if duration is not None else None
        history: deque[tuple[float, int]] = deque()  # (time, readings stored) over the last 10 s

        def tick() -> object:
            now = time.monotonic()
            history.append((now, platform.stats().readings_stored))
            while len(history) > 2 and now - history[0][0] > 10.0:
                history.popleft()
            (t0, c0), (t1, c1) = history[0], history[-1]
            rate = (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0
            table, _ = _view(platform, started, rate)
            return table

        if no_view or not sys.stderr.isatty():
            while not stop.wait(5.0) and (deadline is None or time.monotonic() < deadline):
                st = platform.stats()
                print(
                    f"devices connected {st.devices_connected}/{st.devices_registered}  "
                    f"stored {st.readings_stored}  rejected {sum(st.rejected.values())}  backlog {st.backlog}",
                    file=sys.stderr,
                    flush=True,
                )
        else:
            from rich.console import Console
            from rich.live import Live

            with Live(tick(), console=Console(stderr=True), refresh_per_second=2) as live:  # type: ignore[arg-type]
                while not stop.wait(1.0) and (deadline is None or time.monotonic() < deadline):
                    live.update(tick())  # type: ignore[arg-type]
    finally:
        print("stopping ...", file=sys.stderr)
        final = platform.stats()
        platform.stop()
        print(
            f"stopped. {final.readings_stored} readings stored this run; data kept in {state}",
            file=sys.stderr,
        )
