"""``iotctl devices``: register, list (liveness and last-seen age), show, deactivate, rotate, ledger."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer

from iotctl.apiclient import DEFAULT_API, ApiOption, JsonOption, TokenOption, call
from iotctl.errors import CliError

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


def _seq_ranges(missing: list[list[int]] | tuple[tuple[int, int], ...]) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in missing)


@app.command()
def ledger(
    device_id: DeviceArg,
    db: Annotated[
        str | None,
        typer.Option("--db", envvar="IOTCTL_DB", help="Metadata database URL (default: the state dir's meta.db)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """A device's books: produced = stored + rejected + buffered + dropped + in flight, and any seq gap.

    Reads the metadata database directly (the bridge's batch ledger and the device's last health
    message); counts the device's current key epoch."""
    from sqlalchemy.exc import SQLAlchemyError
    from sqlmodel import Session

    from broker_bridge.ledger import compute_ledger, ensure_ledger_schema
    from cloud_core.core.db import make_engine
    from cloud_core.paths import default_db_url

    url = db or default_db_url()
    try:
        engine = make_engine(url)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        ensure_ledger_schema(engine)  # a table from before seq epochs gains its key_id column
        with Session(engine) as session:
            books = compute_ledger(session, device_id)
    except KeyError:
        raise CliError(f"no device {device_id!r} in {url.split('@')[-1]}") from None
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise CliError(f"cannot read the ledger ({first}); is --db right, and was 'iotctl db init' run?") from None
    finally:
        engine.dispose()
    verdict = _verdict(books)
    if as_json:
        _json(
            {
                "device_id": books.device_id,
                "produced": books.produced,
                "stored": books.stored,
                "rejected": books.rejected,
                "buffered": books.buffered,
                "dropped": books.dropped,
                "in_flight": books.in_flight,
                "stored_batches": books.stored_batches,
                "last_seq": books.last_seq,
                "missing": [list(r) for r in books.missing],
                "health_at": books.health_at,
                "balanced": books.balanced,
                "verdict": verdict,
            }
        )
        return
    typer.echo(f"ledger of {books.device_id} (last seq {books.last_seq}, {books.stored_batches} batches stored)")
    typer.echo(f"  produced   {books.produced:>10}  readings (the device's last health message)")
    typer.echo(f"= stored     {books.stored:>10}")
    typer.echo(f"+ rejected   {books.rejected:>10}  (invalid readings, dead-lettered)")
    typer.echo(f"+ buffered   {books.buffered:>10}  (on the device, not yet receipted)")
    typer.echo(f"+ dropped    {books.dropped:>10}  (by the device's buffer policy)")
    typer.echo(f"+ in flight  {books.in_flight:>10}  (sent, not yet stored)")
    typer.echo(f"missing seqs: {_seq_ranges(books.missing) or 'none'}")
    typer.echo(f"verdict: {verdict}")


def _verdict(books: Any) -> str:
    if books.health_at is None and books.produced == 0:
        return "no health message from the device yet: produced is unknown"
    if books.balanced:
        return "balanced: every reading produced is stored, rejected, buffered or dropped by policy"
    parts = []
    if books.in_flight > 0:
        parts.append(f"{books.in_flight} readings in flight")
    elif books.in_flight < 0:
        parts.append(f"{-books.in_flight} readings more stored than the health message accounts for (it is older)")
    if books.missing:
        parts.append(f"seqs {_seq_ranges(books.missing)} not stored")
    return "NOT BALANCED: " + "; ".join(parts) + " (a gap fills when the device resends; one that stays is lost data)"


@app.command()
def tag(
    device_id: DeviceArg,
    tags: Annotated[
        list[str] | None, typer.Argument(help="Tags to set (replaces the current ones); none: show them.")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every tag.")] = False,
    api: ApiOption = DEFAULT_API,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show or set a device's tags (rollouts target them: --target tag:NAME)."""
    if tags or clear:
        body = call("PUT", f"/v1/devices/{device_id}/tags", api=api, token=token, json={"tags": tags or []})
    else:
        body = call("GET", f"/v1/devices/{device_id}/tags", api=api, token=token)
    _json(body) if as_json else typer.echo(f"{body['device_id']}: {' '.join(body['tags']) or '(no tags)'}")


@app.command()
def history(
    device_id: DeviceArg, api: ApiOption = DEFAULT_API, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """A device's config versions, firmware update steps and rollout events."""
    body = call("GET", f"/v1/devices/{device_id}/history", api=api, token=token)
    if as_json:
        _json(body)
        return
    typer.echo(f"{body['device_id']}  firmware {body['firmware'] or 'unknown'}")
    typer.echo("config versions:")
    for c in body["config"]:
        settings = orjson.dumps(c["settings"]).decode()[:100]
        typer.echo(f"  v{c['version']:<4} {c['created_at']}  by {c['created_by'] or '-'}  {settings}")
    typer.echo("firmware:")
    for e in body["firmware_events"]:
        err = f"  ({e['error']})" if e.get("error") else ""
        typer.echo(f"  {e['at']}  {e['version']:10} {e['state']:12} running {e['running'] or '?'}{err}")
    typer.echo("rollouts:")
    for e in body["rollout_events"]:
        typer.echo(f"  {e['at']}  #{e['rollout_id']} {e['kind']}  {orjson.dumps(e['detail']).decode()[:100]}")
