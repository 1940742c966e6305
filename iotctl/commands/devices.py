"""``iotctl devices``: register, list (liveness and last-seen age), show, deactivate, rotate."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer

from iotctl.apiclient import DEFAULT_API, ApiOption, JsonOption, TokenOption, call

app = typer.Typer(no_args_is_help=True, help="Register, list, deactivate and rotate devices.")

DeviceArg = Annotated[str, typer.Argument(help="Device id.", show_default=False)]


def _json(body: Any) -> None:
    typer.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def _registration(body: dict[str, Any], what: str) -> None:
    device = body["device"]
    typer.echo(f"{what} {device['id']} ({device['device_type']}, {device['location']})")
    typer.echo(f"enrollment token (one use, expires {body['expires_at']}):")
    typer.echo(body["enrollment_token"])
    typer.echo(f"on the device: iotctl agent enroll --api <API URL> --token {body['enrollment_token']}")


@app.command()
def register(
    device_id: DeviceArg,
    device_type: Annotated[str, typer.Option("--type", help="Kind of device.")] = "environment",
    location: Annotated[
        str, typer.Option("--location", help="Where it is (the 'location' tag).")
    ] = "unknown",
    api: ApiOption = DEFAULT_API,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a device and print its one-time enrollment token."""
    body = call(
        "POST",
        "/v1/devices/register",
        api=api,
        token=token,
        json={"id": device_id, "device_type": device_type, "location": location},
    )
    _json(body) if as_json else _registration(body, "registered")


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option("--status", help="Only pending, active or inactive.")] = None,
    api: ApiOption = DEFAULT_API,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every device with its state (online / stale / offline) and last-seen age."""
    path = "/v1/devices" + (f"?status={status}" if status else "")
    devices = call("GET", path, api=api, token=token)
    if as_json:
        _json(devices)
        return
    if not devices:
        typer.echo("no devices: register one with 'iotctl devices register <id>'")
        return
    rows = [("ID", "STATUS", "STATE", "LAST SEEN", "LOCATION", "CONFIG")]
    for d in devices:
        config = f"v{d['desired_config_version']}/v{d['reported_config_version']}"
        if d.get("reported_config_status") == "rejected":
            config += " rejected"
        rows.append((d["id"], d["status"], d["state"], _age(d["last_seen_age_s"]), d["location"], config))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@app.command()
def show(
    device_id: DeviceArg, api: ApiOption = DEFAULT_API, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """One device in detail."""
    d = call("GET", f"/v1/devices/{device_id}", api=api, token=token)
    if as_json:
        _json(d)
        return
    fields = [
        ("id", d["id"]),
        ("type", d["device_type"]),
        ("location", d["location"]),
        ("status", d["status"]),
        ("state", f"{d['state']} (last seen {_age(d['last_seen_age_s'])})"),
        ("presence", d.get("presence") or "-"),
        ("key version", d["key_version"]),
        ("firmware", d.get("firmware") or "-"),
        ("enrolled at", d.get("enrolled_at") or "-"),
        (
            "config",
            f"desired v{d['desired_config_version']}, reported v{d['reported_config_version']} "
            f"{d.get('reported_config_status') or ''}".rstrip(),
        ),
    ]
    if d.get("reported_config_error"):
        fields.append(("config error", d["reported_config_error"]))
    for name, value in fields:
        typer.echo(f"{name:<12} {value}")


@app.command()
def deactivate(
    device_id: DeviceArg, api: ApiOption = DEFAULT_API, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Cut the device off now: the broker drops its connection and refuses it; the bridge refuses its data."""
    d = call("POST", f"/v1/devices/{device_id}/deactivate", api=api, token=token)
    _json(d) if as_json else typer.echo(f"deactivated {d['id']}")


@app.command()
def rotate(
    device_id: DeviceArg, api: ApiOption = DEFAULT_API, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Revoke the device's broker credentials now and print a new enrollment token to re-enroll with."""
    body = call("POST", f"/v1/devices/{device_id}/rotate", api=api, token=token)
    _json(body) if as_json else _registration(body, "rotated")
