"""``iotctl sim run``: simulate a fleet from a scenario file or a device count, with ground truth."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import typer

from iotctl.apiclient import resolve_token
from iotctl.errors import CliError
from iotctl.profiles import current_profile
from iotctl.statedir import StateDirOption, require_platform
from iotctl.statedir import state_dir as state_dir_path

app = typer.Typer(
    no_args_is_help=True, help="Simulate fleets of devices with faults, attacks and ground truth."
)


@app.callback()
def _sim() -> None:
    """Simulate fleets of devices with faults, attacks and ground truth."""


_FLEET_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def _fleet_ids(data: dict[str, Any], fleet: str, *, from_devices: bool) -> None:
    """Give the fleet its own ids: ``<fleet>-000`` for ``--devices N``, ``<fleet>-<group prefix>-000``
    for a scenario (its events' device patterns follow, so they still name the same devices)."""
    for group in data.get("devices", []):
        group["id_prefix"] = fleet if from_devices else f"{fleet}-{group.get('id_prefix', 'dev')}"
    if not from_devices:
        for event in data.get("events", []):
            if "device" in event:
                event["device"] = f"{fleet}-{event['device']}"
        for event in data.get("random_events", []):
            event["devices"] = f"{fleet}-{event.get('devices', '*')}"


def _platform_ca(api: str | None) -> Path | None:
    """The CA of the platform's own PKI (``iotctl up`` beyond loopback) for an https:// API, when this
    machine has it in the state dir."""
    if api is None or not api.startswith("https://"):
        return None
    path = state_dir_path() / "pki" / "ca.crt"
    return path if path.is_file() else None


def _pinned_ca_file(pem: str) -> Path:
    """The broker CA enrollment sent, in a file for the TLS context (removed at exit)."""
    import atexit
    import tempfile

    fd, name = tempfile.mkstemp(prefix="edu-sim-ca-", suffix=".crt")
    with os.fdopen(fd, "w") as f:
        f.write(pem)
    atexit.register(lambda: Path(name).unlink(missing_ok=True))
    return Path(name)


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


@app.command("run")
def run(
    scenario: Path | None = typer.Option(None, "--scenario", help="Scenario file (.toml or .yaml)."),
    devices: int | None = typer.Option(
        None, "--devices", min=1, help="Without a scenario: this many outdoor devices."
    ),
    speed: float | None = typer.Option(
        None, "--speed", help="Simulated seconds per real second (60: 1 h/min)."
    ),
    duration: str | None = typer.Option(None, "--duration", help="Simulated duration, e.g. 10m, 6h, 1d."),
    interval: str = typer.Option("10s", "--interval", help="Without a scenario: sampling interval."),
    seed: int | None = typer.Option(None, "--seed", help="Override the scenario's seed."),
    fleet_name: str | None = typer.Option(
        None,
        "--fleet",
        help="This fleet's name, the start of its device ids (NAME-000 with --devices, NAME-yard-000 with "
        "a scenario). Default: sim-XXXX, new for every run, so fleets never share ids.",
    ),
    take_over: bool = typer.Option(
        False,
        "--take-over",
        help="Reuse device ids that are already registered: rotate their keys and take them over "
        "(whatever runs as them now is cut off). Without it, a taken id stops the run before it starts.",
    ),
    broker: str | None = typer.Option(
        None, "--broker", help="Broker URL (default: the one enrollment names, else the scenario's)."
    ),
    prefix: str | None = typer.Option(
        None, "--prefix", help="Topic prefix (default: scenario's, else 'edu')."
    ),
    labels_out: Path | None = typer.Option(
        None, "--labels-out", help="Write ground truth here (CSV + .jsonl)."
    ),
    api: str | None = typer.Option(
        None, "--api", help="Register and enroll each device through this API (default: the running 'iotctl up')."
    ),
    admin_token: str | None = typer.Option(
        None,
        "--token",
        "--admin-token",
        envvar=["IOTCTL_TOKEN", "EDU_ADMIN_TOKEN"],
        help="Bearer token or API key that may register devices (default: your 'iotctl login' profile, else the "
        "running platform's admin token).",
        show_default=False,
    ),
    ca: Path | None = typer.Option(
        None,
        "--ca",
        envvar="IOTCTL_CA",
        help="CA certificate of an https:// API (default: the platform's own CA in the state dir, if any).",
        show_default=False,
    ),
    db: str | None = typer.Option(None, "--db", help="Without --api: register devices directly in this DB."),
    buffer_dir: Path | None = typer.Option(
        None, "--buffer-dir", help="SQLite buffer files here (default: memory)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the final report as one JSON object."),
    state_dir: StateDirOption = None,
) -> None:
    """Run a simulated fleet until the scenario's end (Ctrl-C stops early; labels are kept).

    Without --api, --db or --broker, the devices enroll with the platform that 'iotctl up' runs from
    the state dir. A run faster than real time (--speed above 1) without a fixed start ends at the
    wall-clock time it finishes, so every reading is history the platform accepts. Exits 1 when any
    honest reading was not stored (rejected, unreceipted or dropped).
    """
    from firmware_sim.errors import SimError
    from firmware_sim.fleet import Fleet, FleetSettings, device_key
    from firmware_sim.labels import LabelWriter
    from firmware_sim.registration import enroll_via_api, register_in_db
    from firmware_sim.scenario import ahead_of_clock_ms, load_scenario, parse_duration, parse_scenario

    if (scenario is None) == (devices is None):
        raise CliError("give exactly one of --scenario FILE or --devices N")
    if api is not None and db is not None:
        raise CliError("use either --api (real enrollment) or --db (direct registration), not both")
    if fleet_name is None:
        fleet_name = f"sim-{secrets.token_hex(2)}"
    elif not _FLEET_RE.match(fleet_name):
        raise CliError(f"bad --fleet {fleet_name!r}: use 1-32 of A-Z a-z 0-9 _ -")
    try:  # the run's own arguments first: a typo is told as such, platform or not
        if scenario is not None:
            sc = load_scenario(scenario)
            data = sc.model_dump(mode="json", exclude_unset=True)
        else:
            parse_duration(interval)
            data = {
                "simulation": {"name": f"{devices} devices", "duration": "10m"},
                "devices": [{"count": devices, "sampling_interval": interval, "transmission_interval": interval}],
            }  # fmt: skip
        _fleet_ids(data, fleet_name, from_devices=scenario is None)
        sim = data.setdefault("simulation", {})
        if speed is not None:
            sim["speed"] = speed
        if duration is not None:
            sim["duration"] = duration
        if seed is not None:
            sim["seed"] = seed
        if devices is not None and speed is None and duration is None:
            sim["speed"] = 1.0
        if scenario is None:
            sim.pop("start", None)
        sc = parse_scenario(data, source=str(scenario or "--devices"))
        plan = sc.plan()
        now_ms = int(time.time() * 1000)
        ahead = ahead_of_clock_ms(plan, now_ms)
        if ahead > 0:
            raise CliError(
                f"{scenario}: start {_iso(plan.start_ms)} at speed {sc.simulation.speed:g} would stamp readings "
                f"up to {ahead / 3_600_000:.1f} h in the future, which the platform refuses: leave 'start' out "
                f"(the run then ends when it finishes) or set it no later than {_iso(plan.start_ms - ahead)}"
            )
        keys = {d.device_id: device_key(sc.simulation.seed, d.device_id) for d in plan.devices}
    except (SimError, ValueError) as exc:
        raise CliError(str(exc)) from None
    profile = current_profile()
    if api is None and db is None and broker is None and profile is not None:
        api = profile.api  # signed in ('iotctl login'): that platform, as you
        print(f"using your 'iotctl login' profile {profile.name!r}: API {api} as {profile.username}", file=sys.stderr)
    if api is None and db is None and broker is None:
        found = require_platform("or pass --api URL --token T (another machine's platform) or --broker URL")
        api = found.api_url
        if not admin_token:
            try:
                admin_token = (found.state_dir / "admin.token").read_text().strip()
            except OSError as exc:
                raise CliError(f"cannot read the admin token in {found.state_dir}: {exc.strerror}") from None
        print(f"using the platform 'iotctl up' runs (pid {found.pid}): API {api}", file=sys.stderr)
    if api is not None and not admin_token and profile is not None:
        admin_token = resolve_token(None, api)  # the profile's access token (refreshed), when it is for this API
    if api is not None and not admin_token:
        raise CliError("--api needs --token (or IOTCTL_TOKEN), or 'iotctl login --api URL' first, to register devices")
    ca_file = ca if ca is not None else _platform_ca(api)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        credentials = None
        if api is not None:
            assert admin_token is not None
            credentials = enroll_via_api(api, admin_token, plan.devices, keys, take_over=take_over, ca_file=ca_file)
        elif db is not None:
            register_in_db(db, plan.devices, keys, take_over=take_over)
        enrolled_broker = next((c.mqtt_url for c in (credentials or {}).values() if c.mqtt_url), None)
        # mqtts://: trust the CA enrollment pinned, as a real device does (else --ca, else the system's CAs)
        pinned = next((c.mqtt_ca_pem for c in (credentials or {}).values() if c.mqtt_ca_pem), None)
        broker_ca = _pinned_ca_file(pinned) if pinned and not broker else ca_file
        settings = FleetSettings(
            tls_ca_file=broker_ca,
            mqtt_url=broker or enrolled_broker or sc.simulation.broker or "mqtt://127.0.0.1:1883",
            topic_prefix=prefix or sc.simulation.topic_prefix,
            buffer_dir=buffer_dir,
        )
        labels = LabelWriter(labels_out)
        fleet = Fleet(plan, settings, labels=labels, credentials=credentials, keys=keys)
    except (SimError, ValueError) as exc:
        raise CliError(str(exc)) from None

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: fleet.stop())
    ids = [d.device_id for d in plan.devices]
    print(
        f"fleet {fleet_name}: {len(ids)} devices ({ids[0]} .. {ids[-1]}), simulated {_iso(plan.start_ms)} .. "
        f"{_iso(plan.end_ms)} at speed {sc.simulation.speed:g} (~{_eta(sc.simulation.duration / sc.simulation.speed)} "
        f"real) -> {settings.mqtt_url} (prefix {settings.topic_prefix})",
        file=sys.stderr,
    )
    tty = sys.stderr.isatty()
    last_line = [0.0]

    def progress(f: Fleet) -> None:
        if json_out:
            return
        sim_ms, done, left = f.progress()
        stored, rejected = f.stored_so_far()
        line = (
            f"simulated {_iso(sim_ms)} ({done:.0%}, ETA {_eta(left)})  connected {f.connected}/{len(f.devices)}  "
            f"stored {stored:,}  rejected {rejected:,}"
        )
        if tty:
            print(f"\r{line}\x1b[K", end="", file=sys.stderr, flush=True)
        elif time.monotonic() - last_line[0] >= 10:  # a log, not a terminal: a line every 10 s
            last_line[0] = time.monotonic()
            print(line, file=sys.stderr, flush=True)

    report = fleet.run(on_tick=progress)
    if tty and not json_out:
        print(file=sys.stderr)
    summary = report.summary()
    summary["fleet"] = fleet_name
    summary["labels"] = len(labels.labels)
    if labels_out is not None:
        summary["labels_csv"] = str(labels_out)
    if json_out:
        print(json.dumps(summary))
    else:
        _print_outcome(report, ids, f" --state-dir {state_dir}" if state_dir else "")
    if report.connected_peak == 0:
        raise CliError(f"no device could connect to {settings.mqtt_url}: is the broker running?", exit_code=1)
    if report.not_stored:
        raise CliError(
            f"{report.not_stored:,} of {report.produced:,} honest readings were not stored "
            f"(rejected {report.rejected:,}, unreceipted {report.unreceipted:,}, dropped {report.dropped:,})",
            exit_code=1,
        )


def _print_outcome(report: Any, ids: list[str], flag: str) -> None:
    """The run's readings by outcome, and how to find them."""
    rej = ", ".join(f"{reason} {n:,}" for reason, n in sorted(report.rejected_batches.items()))
    down = f" ({report.held_by_down_devices:,} on devices down at the end)" if report.held_by_down_devices else ""
    rows = [
        ("produced", f"{report.produced:,} readings by {report.devices} devices"),
        ("stored", f"{report.stored:,}"),
        ("rejected", f"{report.rejected:,}" + (f"   batches by reason: {rej}" if rej else "")),
        ("unreceipted", f"{report.unreceipted:,}{down}"),
        ("dropped", f"{report.dropped:,} (buffer bound)"),
        ("attack messages", f"{report.attack_messages:,}"),
        ("mqtt messages", f"{report.mqtt_messages:,} ({report.resends:,} resends), {report.real_seconds:.0f} s real"),
    ]
    for name, value in rows:
        print(f"{name:16} {value}")
    start, end = _iso(report.start_ms), _iso(report.end_ms)
    print(f"data             {start} .. {end} (simulated time)")
    print(f"see it with      iotctl query --device {ids[0]} --start {start} --end {end}{flag}")


@app.command("generate")
def generate(
    scenario: Path = typer.Option(..., "--scenario", help="Scenario file (.toml or .yaml)."),
    out: Path = typer.Option(..., "--out", help="Write the stored readings here (CSV)."),
    labels_out: Path | None = typer.Option(
        None, "--labels-out", help="Write ground truth here (CSV + .jsonl beside it)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Override the scenario's seed."),
) -> None:
    """Generate a scenario's readings and labels offline: no broker, simulated time, seconds of work."""
    from firmware_sim.errors import SimError
    from firmware_sim.labels import LabelWriter
    from firmware_sim.offline import iter_rows, write_readings_csv
    from firmware_sim.physics import FIELDS
    from firmware_sim.scenario import load_scenario, parse_scenario

    try:
        sc = load_scenario(scenario)
        if seed is not None:
            data = sc.model_dump(mode="json")
            data["simulation"]["seed"] = seed
            sc = parse_scenario(data, source=str(scenario))
        labels = LabelWriter(labels_out)
        # Without a fixed start, generated history ends now (queries like --since 1d find it).
        start = None if sc.simulation.start else int(time.time() * 1000) - int(sc.simulation.duration * 1000)
        plan = sc.plan(start_ms=start)
        rows = list(iter_rows(plan, labels))
        used = {f for g in sc.devices for f in g.fields}
        write_readings_csv(out, rows, (*(f for f in FIELDS if f in used), "quality_score"))
    except (SimError, ValueError) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {exc.filename}: {exc.strerror}") from None
    print(json.dumps({"devices": len(plan.devices), "readings": len(rows), "labels": len(labels.labels),
                      "out": str(out), **({"labels_csv": str(labels_out)} if labels_out else {})}))  # fmt: skip
