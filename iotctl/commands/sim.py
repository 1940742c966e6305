"""``iotctl sim run``: simulate a fleet from a scenario file or a device count, with ground truth."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

import typer

from iotctl.errors import CliError

app = typer.Typer(
    no_args_is_help=True, help="Simulate fleets of devices with faults, attacks and ground truth."
)


@app.callback()
def _sim() -> None:
    """Simulate fleets of devices with faults, attacks and ground truth."""


def _running_platform(admin_token: str | None) -> tuple[str | None, str | None, str | None]:
    """(API URL, broker URL, admin token) of the platform ``iotctl up`` runs from the state dir, so
    a student's ``iotctl sim run`` enrolls its devices there; (None, None, token) when none runs."""
    from cloud_core.paths import default_state_dir

    state = default_state_dir()
    try:
        api = (state / "api.url").read_text().strip()
        broker = (state / "mqtt.url").read_text().strip()
        token = admin_token or (state / "admin.token").read_text().strip()
    except OSError:
        return None, None, admin_token
    print(f"using the platform that 'iotctl up' runs: API {api}, broker {broker}", file=sys.stderr)
    return api, broker, token


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
    broker: str | None = typer.Option(
        None, "--broker", help="Broker URL (default: scenario's, else local 1883)."
    ),
    prefix: str | None = typer.Option(
        None, "--prefix", help="Topic prefix (default: scenario's, else 'edu')."
    ),
    labels_out: Path | None = typer.Option(
        None, "--labels-out", help="Write ground truth here (CSV + .jsonl)."
    ),
    api: str | None = typer.Option(None, "--api", help="Register and enroll each device through this API."),
    admin_token: str | None = typer.Option(
        None, "--admin-token", envvar="EDU_ADMIN_TOKEN", help="Bearer token."
    ),
    db: str | None = typer.Option(None, "--db", help="Without --api: register devices directly in this DB."),
    buffer_dir: Path | None = typer.Option(
        None, "--buffer-dir", help="SQLite buffer files here (default: memory)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the final report as one JSON object."),
) -> None:
    """Run a simulated fleet until the scenario's end (Ctrl-C stops early; labels are kept)."""
    from firmware_sim.errors import SimError
    from firmware_sim.fleet import Fleet, FleetSettings, device_key
    from firmware_sim.labels import LabelWriter
    from firmware_sim.registration import enroll_via_api, register_in_db
    from firmware_sim.scenario import load_scenario, parse_duration, parse_scenario

    if (scenario is None) == (devices is None):
        raise CliError("give exactly one of --scenario FILE or --devices N")
    if api is None and db is None and broker is None:
        api, broker, admin_token = _running_platform(admin_token)
    if api is not None and not admin_token:
        raise CliError("--api needs --admin-token (or EDU_ADMIN_TOKEN) to register devices")
    if api is not None and db is not None:
        raise CliError("use either --api (real enrollment) or --db (direct registration), not both")
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if scenario is not None:
            sc = load_scenario(scenario)
            data = sc.model_dump(mode="json")
        else:
            parse_duration(interval)
            data = {
                "simulation": {"name": f"{devices} devices", "duration": "10m"},
                "devices": [{"count": devices, "id_prefix": "sim", "sampling_interval": interval,
                             "transmission_interval": interval}],
            }  # fmt: skip
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
        settings = FleetSettings(
            mqtt_url=broker or sc.simulation.broker or "mqtt://127.0.0.1:1883",
            topic_prefix=prefix or sc.simulation.topic_prefix,
            buffer_dir=buffer_dir,
        )
        keys = {d.device_id: device_key(sc.simulation.seed, d.device_id) for d in plan.devices}
        credentials = None
        if api is not None:
            assert admin_token is not None
            credentials = enroll_via_api(api, admin_token, plan.devices, keys)
        elif db is not None:
            register_in_db(db, plan.devices, keys)
        labels = LabelWriter(labels_out)
        fleet = Fleet(plan, settings, labels=labels, credentials=credentials, keys=keys)
    except (SimError, ValueError) as exc:
        raise CliError(str(exc)) from None

    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: (stop.set(), fleet.stop()))
    print(
        f"simulating {len(plan.devices)} devices for {sc.simulation.duration:.0f} simulated s "
        f"at speed {sc.simulation.speed:g} -> {settings.mqtt_url} (prefix {settings.topic_prefix})",
        file=sys.stderr,
    )

    def progress(f: Fleet) -> None:
        if not json_out:
            print(f"\rconnected {f.connected}/{len(f.devices)}  messages {f.report.mqtt_messages}", end="",
                  file=sys.stderr)  # fmt: skip

    report = fleet.run(on_tick=progress)
    if not json_out:
        print(file=sys.stderr)
    summary = report.summary()
    summary["labels"] = len(labels.labels)
    if labels_out is not None:
        summary["labels_csv"] = str(labels_out)
    if json_out:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k:20} {v}")
    if report.connected_peak == 0:
        raise CliError(f"no device could connect to {settings.mqtt_url}: is the broker running?", exit_code=1)


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
        rows = list(iter_rows(sc.plan(), labels))
        used = {f for g in sc.devices for f in g.fields}
        write_readings_csv(out, rows, (*(f for f in FIELDS if f in used), "quality_score"))
    except (SimError, ValueError) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {exc.filename}: {exc.strerror}") from None
    print(json.dumps({"devices": len(sc.plan().devices), "readings": len(rows), "labels": len(labels.labels),
                      "out": str(out), **({"labels_csv": str(labels_out)} if labels_out else {})}))  # fmt: skip
