"""``iotctl up``: run the whole platform on this machine with a live view; Ctrl-C stops it cleanly.

Embedded defaults need no server: a ``mosquitto`` child process (or in-process amqtt), SQLite and the
embedded time-series store, all under the state directory, which keeps the data after exit. Give
URLs to run against real servers instead.
"""

from __future__ import annotations

import ipaddress
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


def _cli() -> str:
    """How to run this very iotctl from another terminal: plain ``iotctl`` when that is what PATH finds,
    else its full path (``./scripts/up`` installs into .venv, which is not on PATH)."""
    import shutil

    mine = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    found = shutil.which("iotctl")
    if mine is not None and mine.name == "iotctl" and (found is None or Path(found).resolve() != mine):
        return str(mine)
    if found is None:
        venv = Path(sys.executable).parent / "iotctl"
        return str(venv) if venv.exists() else f"{sys.executable} -m iotctl"
    return "iotctl"


def _view(platform, started: float, rate: float):  # type: ignore[no-untyped-def]
    from rich.table import Table

    st = platform.stats()
    table = Table(title="edu-platform", title_justify="left", show_header=False, expand=False)
    table.add_column(style="bold cyan")
    table.add_column()
    table.add_row("broker", platform.broker_desc)
    table.add_row("devices connect to", f"{platform.public_mqtt_url}   (enroll with --api {platform.public_api_url})")
    table.add_row("API", platform.api_url if platform.api_url == platform.public_api_url
                  else f"{platform.api_url}  (network: {platform.public_api_url})")  # fmt: skip
    table.add_row("console", f"{platform.public_api_url}/console/")
    table.add_row("state dir", str(platform.state_dir))
    table.add_row("devices", f"{st.devices_registered} registered: {st.devices_online} online, "
                  f"{st.devices_stale} stale, {st.devices_offline} offline")  # fmt: skip
    if st.fleet_size:
        table.add_row("simulated here", f"{st.fleet_connected}/{st.fleet_size} connected ({platform.s.fleet_prefix}-*)")
    table.add_row("readings/s", f"{rate:,.1f} (last 10 s)")
    table.add_row("readings stored", f"{st.readings_stored:,} this run")
    rejected_b = sum(st.batches_rejected.values())
    reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(st.batches_rejected.items()))
    table.add_row("batches", f"{st.batches_stored:,} stored, {st.duplicates:,} duplicates (resends stored once), "
                  f"{rejected_b:,} rejected" + (f" ({reasons})" if reasons else ""))  # fmt: skip
    readings_rej = {k: v - st.batches_rejected.get(k, 0) for k, v in st.rejected.items()}
    readings_rej = {k: v for k, v in readings_rej.items() if v > 0}
    if readings_rej:
        table.add_row("readings rejected", ", ".join(f"{k} {v:,}" for k, v in sorted(readings_rej.items()))
                      + " (in stored batches)")  # fmt: skip
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
        None,
        "--state-dir",
        envvar="EDU_STATE_DIR",
        help="Where data lives (default: $EDU_STATE_DIR, else the user's data dir). One 'iotctl up' per state dir.",
    ),
    bind: str = typer.Option(
        "127.0.0.1",
        "--bind",
        help="Address the API and the broker listen on: 127.0.0.1 (this machine only) or 0.0.0.0 (the network).",
    ),
    advertise: str | None = typer.Option(
        None,
        "--advertise",
        help="Host name or address devices are told to connect to (default: the --bind address, or this "
        "machine's LAN address with --bind 0.0.0.0).",
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
    mqtt_port: int | None = typer.Option(
        None,
        "--mqtt-port",
        min=0,
        max=65535,
        help="Embedded broker port (0: any free one). Default: the one this state dir used before; "
        "first start: 1883, or a free one if taken.",
    ),
    mqtts_port: int | None = typer.Option(
        None,
        "--mqtts-port",
        min=0,
        max=65535,
        help="With --bind beyond loopback: the broker's TLS port for devices (0: any free one). Default: the one "
        "this state dir used before; first start: 8883, or a free one if taken.",
    ),
    api_port: int | None = typer.Option(
        None,
        "--api-port",
        min=0,
        max=65535,
        help="API port (0: any free one). Default: the one this state dir used before; first start: 8080, or a "
        "free one if taken.",
    ),
    broker_kind: str = typer.Option("auto", "--embedded-broker", help="auto | mosquitto | amqtt"),
    duration: float | None = typer.Option(None, "--duration", help="Stop after this many seconds."),
    no_view: bool = typer.Option(False, "--no-view", help="Print one status line every few seconds instead."),
) -> None:
    """Run the whole platform on this machine (embedded defaults, or real servers by URL)."""
    from cloud_core.core.logging import setup_logging
    from cloud_core.paths import default_state_dir

    from ..network import can_bind, is_wildcard
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
    try:
        bind_ip = ipaddress.ip_address(bind)
    except ValueError:
        raise CliError(f"--bind {bind!r}: give an IP address of this machine, e.g. 127.0.0.1 or 0.0.0.0") from None
    if not is_wildcard(bind) and not can_bind(bind):
        raise CliError(f"--bind {bind}: not an address of this machine (try 0.0.0.0, every interface)")
    if advertise and bind_ip.is_loopback and advertise not in ("localhost", "127.0.0.1", "::1"):
        raise CliError(
            f"--advertise {advertise} with --bind {bind}: the platform listens on loopback only, so devices could "
            "not reach it there; add --bind 0.0.0.0"
        )
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
        mqtts_port=mqtts_port,
        broker_kind=broker_kind, bind_host=bind, advertised_host=advertise,
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
        cli = _cli()
        flag = "" if state == default_state_dir() else f" --state-dir {state}"
        banner = [
            f"console {platform.public_api_url}/console/  (sign in with the key in {state / 'admin.token'})",
            f"API {platform.public_api_url}  broker {platform.public_mqtt_url}  (devices enroll with "
            f"--api {platform.public_api_url})",
        ]
        if platform.ca_file is not None:
            banner.append(
                f"  listening on {bind} (the network) over TLS with this platform's own CA: devices enroll with "
                f"--api {platform.public_api_url} --ca {platform.ca_file} (copy that file to them)"
            )
        banner.append(  # always the banner's last line (iot_testing.up waits for it)
            f"  in another terminal: {cli} devices list{flag}  |  {cli} query --since 5m{flag}  |  "
            f"{cli} sim run --devices 20 --speed 60 --duration 10m{flag}"
        )
        print("\n".join(banner), file=sys.stderr, flush=True)
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
                    f"devices {st.devices_registered} registered, {st.devices_online} online  "
                    f"stored {st.readings_stored} readings in {st.batches_stored} batches  "
                    f"rejected {sum(st.batches_rejected.values())} batches  backlog {st.backlog}",
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
