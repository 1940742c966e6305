"""``iotctl devices``: register, list (liveness and last-seen age), show, deactivate, rotate, ledger."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from iotctl.apiclient import ApiOption, JsonOption, TokenOption, call, public_api
from iotctl.errors import CliError
from iotctl.statedir import StateDirOption, state_dir

app = typer.Typer(no_args_is_help=True, help="Register, list, deactivate and rotate devices.")

DeviceArg = Annotated[str, typer.Argument(help="Device id.", show_default=False, metavar="DEVICE_ID")]


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


def _registration(body: dict[str, Any], what: str, api: str | None) -> None:
    device = body["device"]
    typer.echo(f"{what} {device['id']} ({device['device_type']}, {device['location']})")
    typer.echo(f"enrollment token (one use, expires {body['expires_at']}):")
    typer.echo(body["enrollment_token"])
    url = public_api(api)
    # An https API of `iotctl up` beyond loopback is served with the platform's own CA: the device needs
    # that file to trust the API at enrollment (it then pins the same CA for the broker).
    ca = state_dir() / "pki" / "ca.crt"
    ca_hint = f" --ca {ca}" if url.startswith("https://") and ca.is_file() else ""
    typer.echo(
        f"on the device: iotctl agent enroll --api {url}{ca_hint} --token {body['enrollment_token']} "
        "--dir /var/lib/edu-agent/identity"
    )
    if ca_hint:
        typer.echo(f"(copy {ca} to the device first: the platform's CA, which the device then trusts alone)")


_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Types that need no note: the default and the simulator's physics profiles.
KNOWN_TYPES = frozenset({"environment", "outdoor", "indoor", "greenhouse"})


@app.command()
def register(
    device_id: DeviceArg,
    device_type: Annotated[
        str,
        typer.Option(
            "--type",
            help="Kind of device: a free-form label (letters, digits, _ . -), e.g. environment, greenhouse, "
            "weather-station. A type no other device has is accepted with a note, in case it is a typo.",
        ),
    ] = "environment",
    location: Annotated[
        str, typer.Option("--location", help="Where it is (the 'location' tag).")
    ] = "unknown",
    class_id: Annotated[
        int | None, typer.Option("--class", help="Its class (default: yours, if you are a student of one).")
    ] = None,
    api: ApiOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    state_dir: StateDirOption = None,
) -> None:
    """Create a device (yours) and print its one-time enrollment token."""
    if not _TYPE_RE.match(device_type):
        raise CliError(f"bad --type {device_type!r}: use 1-64 of letters, digits, _ . - (e.g. environment)")
    try:
        in_use = {d["device_type"] for d in call("GET", "/v1/devices", api=api, token=token)}
    except CliError as exc:
        if exc.exit_code != 1:  # unreachable, no token: the registration would fail the same way
            raise
        in_use = set()  # not allowed to list: register without the note
    body = call(
        "POST",
        "/v1/devices/register",
        api=api,
        token=token,
        json={"id": device_id, "device_type": device_type, "location": location, "class_id": class_id},
    )
    _json(body) if as_json else _registration(body, "registered", api)
    if device_type not in in_use | KNOWN_TYPES:
        typer.echo(
            f"note: no other device has type {device_type!r} (types in use: {', '.join(sorted(in_use)) or 'none'}); "
            "types are free-form labels, so check the spelling",
            err=True,
        )


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option("--status", help="Only pending, active or inactive.")] = None,
    api: ApiOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    state_dir: StateDirOption = None,
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
    device_id: DeviceArg,
    api: ApiOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    state_dir: StateDirOption = None,
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
    device_id: DeviceArg,
    api: ApiOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    state_dir: StateDirOption = None,
) -> None:
    """Cut the device off now: the broker drops its connection and refuses it; the bridge refuses its data."""
    d = call("POST", f"/v1/devices/{device_id}/deactivate", api=api, token=token)
    _json(d) if as_json else typer.echo(f"deactivated {d['id']}")


@app.command()
def rotate(
    device_id: DeviceArg,
    api: ApiOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    state_dir: StateDirOption = None,
) -> None:
    """Revoke the device's broker credentials now and print a new enrollment token to re-enroll with."""
    body = call("POST", f"/v1/devices/{device_id}/rotate", api=api, token=token)
    _json(body) if as_json else _registration(body, "rotated", api)


@app.command()
def share(
    device_id: DeviceArg,
    off: Annotated[bool, typer.Option("--off", help="Stop sharing.")] = False,
    api: ApiOption = None,
    token: TokenOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """Let every member of the device's class read it (read only), or stop with --off."""
    call("PUT", f"/v1/devices/{device_id}/share", api=api, token=token, json={"shared": not off})
    typer.echo(f"{device_id} {'no longer shared' if off else 'shared read-only'} with its class")


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
    state_dir: StateDirOption = None,
) -> None:
    """A device's books: produced = stored + rejected + buffered + dropped + in flight, and any seq gap.

    Reads the metadata database directly (the bridge's batch ledger and the device's last health
    message), as of that health message: the batches the device had sealed by then, against its counts
    then. Counts the device's current key epoch."""
    from sqlalchemy.exc import SQLAlchemyError
    from sqlmodel import Session

    from broker_bridge.ledger import compute_ledger, ensure_ledger_schema
    from cloud_core.core.db import make_engine
    from cloud_core.paths import default_db_url

    url = db or default_db_url()
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).expanduser().exists():
        raise CliError(
            f"no metadata database at {url[len('sqlite:///') :]}: start 'iotctl up' first (with the same "
            "--state-dir) or pass --db URL"
        )
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
                "quarantined": books.quarantined,
                "in_flight": books.in_flight,
                "awaiting_receipt": books.awaiting_receipt,
                "lost": books.lost,
                "excess": books.excess,
                "stored_batches": books.stored_batches,
                "stored_after": books.stored_after,
                "last_seq": books.last_seq,
                "missing": [list(r) for r in books.missing],
                "health_at": books.health_at,
                "health_received_at": books.health_received_at.isoformat() if books.health_received_at else None,
                "balanced": books.balanced,
                "verdict": verdict,
            }
        )
        return
    if books.health_received_at is None:
        typer.echo(f"ledger of {books.device_id} (no health message yet; {books.stored_batches} batches stored)")
    else:
        when = books.health_received_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        typer.echo(
            f"ledger of {books.device_id} as of its last health message (received {when}; batches up to seq "
            f"{books.last_seq}, {books.stored_batches} stored)"
        )
    typer.echo(f"  produced   {books.produced:>10}  readings (the device's count then)")
    typer.echo(f"= stored     {books.stored:>10}  (in batches up to seq {books.last_seq}, whenever stored)")
    typer.echo(f"+ rejected   {books.rejected:>10}  (invalid readings and batches rejected whole, dead-lettered)")
    typer.echo(f"+ buffered   {books.buffered:>10}  (on the device then, not stored yet)")
    typer.echo(f"+ dropped    {books.dropped:>10}  (by the device's buffer policy)")
    if books.quarantined:
        typer.echo(f"+ quarantined{books.quarantined:>10}  (in batches the cloud never answered, set aside)")
    typer.echo(f"+ in flight  {books.in_flight:>10}  (none of the above: lost unless the device resends them)")
    if books.awaiting_receipt:
        typer.echo(
            f"  ({books.awaiting_receipt} readings in the device's buffer then were already stored, "
            "their receipt on the way)"
        )
    if books.stored_after:
        typer.echo(f"  ({books.stored_after} batches sealed after that health message are stored too, not counted)")
    typer.echo(f"missing seqs: {_seq_ranges(books.missing) or 'none'}")
    typer.echo(f"verdict: {verdict}")


def _verdict(books: Any) -> str:
    if books.health_received_at is None and books.produced == 0:
        return "no health message from the device yet: produced is unknown"
    missing = _seq_ranges(books.missing)
    if books.balanced:
        note = (
            f" (seqs {missing} not stored: on the device at its last report, or rejected whole; the next health "
            "message shows any that were lost)"
            if missing
            else ""
        )
        return (
            "balanced: every reading produced by the last health message is stored, rejected, still on the device "
            "or dropped by policy" + note
        )
    parts = []
    if books.in_flight:
        parts.append(f"{books.in_flight} readings neither stored, rejected, buffered nor dropped")
    if books.lost:
        parts.append(f"{books.lost} readings receipted as stored are not in the ledger")
    if books.excess:
        parts.append(
            f"{books.excess} readings more stored than the device accounts for (another writer, or reset counters?)"
        )
    if missing:
        parts.append(f"seqs {missing} not stored")
    return (
        "NOT BALANCED: " + "; ".join(parts) + " (a gap fills if the device still resends it; one that stays is lost)"
    )


@app.command()
def tag(
    device_id: DeviceArg,
    tags: Annotated[
        list[str] | None, typer.Argument(help="Tags to set (replaces the current ones); none: show them.")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove every tag.")] = False,
    api: ApiOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    state_dir: StateDirOption = None,
) -> None:
    """Show or set a device's tags (rollouts target them: --target tag:NAME)."""
    if tags or clear:
        body = call("PUT", f"/v1/devices/{device_id}/tags", api=api, token=token, json={"tags": tags or []})
    else:
        body = call("GET", f"/v1/devices/{device_id}/tags", api=api, token=token)
    _json(body) if as_json else typer.echo(f"{body['device_id']}: {' '.join(body['tags']) or '(no tags)'}")


@app.command()
def history(
    device_id: DeviceArg,
    api: ApiOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    state_dir: StateDirOption = None,
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
