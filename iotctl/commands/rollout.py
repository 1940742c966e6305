"""``iotctl rollout``: staged rollouts of configuration or firmware with health gates: create, status,
list, devices, events, pause, resume, abort."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer

from iotctl.apiclient import ApiOption, JsonOption, TokenOption, call
from iotctl.commands.config import parse_assignments
from iotctl.errors import CliError
from iotctl.statedir import StateDirOption

app = typer.Typer(no_args_is_help=True, help="Staged rollouts of config or firmware, with health gates.")

RolloutArg = Annotated[int, typer.Argument(help="Rollout id (see 'iotctl rollout list').", show_default=False)]


def _json(body: Any) -> None:
    typer.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())


def _seconds(value: str | None, what: str) -> float | None:
    if value is None:
        return None
    from firmware_sim.scenario import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise CliError(f"{what}: {exc}") from None


def _counts(counts: dict[str, int]) -> str:
    order = ("pending", "updating", "downloading", "installed", "applied", "confirmed", "waiting", "failed",
             "rolling_back", "rolled_back")  # fmt: skip
    return "  ".join(f"{k} {counts[k]}" for k in order if counts.get(k)) or "-"


def _print(view: dict[str, Any]) -> None:
    what = f"release {view['release']}" if view["kind"] == "firmware" else orjson.dumps(view["settings"]).decode()
    typer.echo(f"rollout #{view['id']}  {view['name']}")
    typer.echo(f"  {view['kind']}: {what}")
    typer.echo(f"  status   {view['status']}   wave {view['current_wave']} of {len(view['waves']) - 1}   "
               f"devices {view['devices']}   target {orjson.dumps(view['target']).decode()}")  # fmt: skip
    typer.echo(f"  states   {_counts(view['counts'])}")
    for w in view["per_wave"]:
        name = "canary" if w["wave"] == 0 else f"wave {w['wave']}"
        typer.echo(f"  {name:8} {w['percent']:>5g}%  {w['devices']:>4} devices   {_counts(w['counts'])}")
    if view.get("abort_reason"):
        typer.echo(f"  reason   {view['abort_reason']}")


@app.command()
def create(
    target: Annotated[
        list[str],
        typer.Option("--target", help="device:ID[,ID..], type:TYPE, tag:TAG or group:NAME (repeatable; any matches)."),
    ],
    config: Annotated[
        list[str] | None, typer.Option("--config", help="key=value to roll out (repeatable); or use --release.")
    ] = None,
    release: Annotated[str | None, typer.Option("--release", help="Firmware release version to roll out.")] = None,
    canary: Annotated[str, typer.Option("--canary", help="Share of the devices in the canary wave.")] = "5%",
    waves: Annotated[str, typer.Option("--waves", help="Cumulative shares after the canary, ending at 100%.")] = (
        "25%,50%,100%"
    ),
    wave_wait: Annotated[
        str | None, typer.Option("--wave-wait", help="Observe each wave this long before the next (e.g. 10m).")
    ] = None,
    abort_if: Annotated[
        list[str] | None,
        typer.Option(
            "--abort-if",
            help="Gate, repeatable: failed>10%, offline>20%, offline>control+10%, rejected>5%, anomalies>2, "
            "temperature>45, humidity<5.",
        ),
    ] = None,
    apply_timeout: Annotated[
        str | None, typer.Option("--apply-timeout", help="A connected device must apply/confirm within this.")
    ] = None,
    offline_policy: Annotated[
        str, typer.Option("--offline-policy", help="converge (applies when back) or fail (after --device-deadline).")
    ] = "converge",
    device_deadline: Annotated[str, typer.Option("--device-deadline", help="With --offline-policy fail.")] = "1h",
    max_bytes_per_s: Annotated[
        int | None, typer.Option("--max-bytes-per-s", help="Firmware download bandwidth cap per device.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="A name to recognise it by.")] = None,
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start a staged rollout: canary first, then each wave while the health gates pass; a failing
    gate aborts it and rolls every touched device back."""
    if (not config) == (release is None):
        raise CliError("give --config key=value ... (a config rollout) or --release VERSION (firmware), not both")
    body: dict[str, Any] = {
        "target": _target(target),
        "canary": canary,
        "waves": [w for w in waves.split(",") if w.strip()],
        "abort_if": abort_if or [],
        "offline_policy": offline_policy,
        "device_deadline_s": _seconds(device_deadline, "--device-deadline"),
    }
    if config:
        body["settings"] = parse_assignments(config)
    else:
        body["release"] = release
    if wave_wait is not None:
        body["wave_wait_s"] = _seconds(wave_wait, "--wave-wait")
    if apply_timeout is not None:
        body["gates"] = {"apply_timeout_s": _seconds(apply_timeout, "--apply-timeout")}
    if max_bytes_per_s is not None:
        body["max_bytes_per_s"] = max_bytes_per_s
    if name is not None:
        body["name"] = name
    view = call("POST", "/v1/rollouts", api=api, token=token, json=body)
    _json(view) if as_json else _print(view)


def _target(selectors: list[str]) -> dict[str, list[str]]:
    """``["device:a,b", "tag:x"]`` -> ``{"devices": ["a", "b"], "tags": ["x"]}`` (the API checks names)."""
    kinds = {"device": "devices", "type": "types", "tag": "tags", "group": "groups", "class": "groups"}
    out: dict[str, list[str]] = {}
    for selector in selectors:
        key, sep, names = selector.partition(":")
        kind = kinds.get(key.strip())
        if not sep or kind is None or not names.strip():
            raise CliError(f"bad --target {selector!r}: use device:ID[,ID...], type:TYPE, tag:TAG or group:NAME")
        out.setdefault(kind, []).extend(n.strip() for n in names.split(",") if n.strip())
    return out


@app.command()
def status(
    rollout_id: RolloutArg,
    devices: Annotated[bool, typer.Option("--devices", help="Also list each device's wave and state.")] = False,
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Status, counts per state and per wave, and why it stopped."""
    view = call("GET", f"/v1/rollouts/{rollout_id}", api=api, token=token)
    rows = call("GET", f"/v1/rollouts/{rollout_id}/devices", api=api, token=token) if devices else None
    if as_json:
        _json({**view, "device_states": rows} if rows is not None else view)
        return
    _print(view)
    for d in rows or []:
        err = f"  {d['error']}" if d.get("error") else ""
        typer.echo(f"    {d['device_id']:24} wave {d['wave']}  {d['state']:12}{err}")


@app.command("list")
def list_(
    status_: Annotated[str | None, typer.Option("--status", help="Only rollouts in this status.")] = None,
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rollouts, newest first."""
    views = call("GET", "/v1/rollouts" + (f"?status={status_}" if status_ else ""), api=api, token=token)
    if as_json:
        _json(views)
        return
    if not views:
        typer.echo("no rollouts: start one with 'iotctl rollout create --target ... --config k=v'")
        return
    for v in views:
        what = f"release {v['release']}" if v["kind"] == "firmware" else "config"
        typer.echo(f"#{v['id']:<4} {v['status']:10} {what:16} wave {v['current_wave']}/{len(v['waves']) - 1}  "
                   f"{v['devices']:>5} devices  {_counts(v['counts'])}  {v['name']}")  # fmt: skip


@app.command()
def events(
    rollout_id: RolloutArg,
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """The rollout's history: waves, device state changes, gate failures, rollbacks (audit trail)."""
    rows = call("GET", f"/v1/rollouts/{rollout_id}/events", api=api, token=token)
    if as_json:
        _json(rows)
        return
    for e in rows:
        who = f" {e['device_id']}" if e.get("device_id") else ""
        typer.echo(f"{e['at']}  {e['kind']:14}{who}  by {e['actor']}  {orjson.dumps(e['detail']).decode()}")


def _control(action: str, rollout_id: int, api: str, token: str | None, as_json: bool, body: Any = None) -> None:
    view = call("POST", f"/v1/rollouts/{rollout_id}/{action}", api=api, token=token, json=body)
    _json(view) if as_json else _print(view)


@app.command()
def pause(
    rollout_id: RolloutArg,
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start no further waves (the gates keep watching the devices already updated)."""
    _control("pause", rollout_id, api, token, as_json)


@app.command()
def resume(
    rollout_id: RolloutArg,
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Continue a paused rollout (the current wave's wait starts again)."""
    _control("resume", rollout_id, api, token, as_json)


@app.command()
def abort(
    rollout_id: RolloutArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the history).")] = "",
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Stop and roll every device the rollout touched back to its previous version."""
    _control("abort", rollout_id, api, token, as_json, {"reason": reason})
