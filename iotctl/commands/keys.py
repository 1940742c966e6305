"""``iotctl keys``: create (shown once), list and revoke API keys for automation and CI."""

from __future__ import annotations

from typing import Annotated

import typer

from ..apiclient import ApiOption, JsonOption, TokenOption, call
from ..errors import CliError
from ..statedir import StateDirOption
from ._table import print_json, print_rows

app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")


@app.command()
def create(
    name: Annotated[str, typer.Option("--name", help="What the key is for.")] = "default",
    role: Annotated[str, typer.Option("--role", help="admin, user, device or readonly (at most yours).")] = "readonly",
    device: Annotated[list[str] | None, typer.Option("--device", help="Limit to this device (repeat).")] = None,
    expires: Annotated[str | None, typer.Option("--expires", help="Lifetime, e.g. 30d (default: none).")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Owner (admins; default: you).")] = None,
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key; it is printed once (pass it as --token or IOTCTL_TOKEN)."""
    from cloud_core.tsdb.timespec import parse_duration_ms

    try:
        expires_s = parse_duration_ms(expires, "--expires") / 1000 if expires else None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    body = call("POST", "/v1/keys", api=api, token=token, json={
        "name": name, "role": role, "device_ids": device or None, "expires_in_s": expires_s, "username": user,
    })  # fmt: skip
    if as_json:
        print_json(body)
        return
    info = body["info"]
    typer.echo(f"key {info['id']} ({info['name']}, role {info['role']}) created; shown once:")
    typer.echo(body["key"])


@app.command("list")
def list_(
    all_users: Annotated[bool, typer.Option("--all", help="Everyone's keys (admins).")] = False,
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    keys = call("GET", "/v1/keys", api=api, token=token, params={"all_users": str(all_users).lower()})
    if as_json:
        print_json(keys)
        return
    print_rows(
        ("ID", "PREFIX", "USER", "NAME", "ROLE", "DEVICES", "LAST USED", "REVOKED"),
        [
            (k["id"], k["prefix"], k["user_id"], k["name"], k["role"],
             ",".join(k["device_ids"]) if k["device_ids"] else "all", k["last_used_at"], k["revoked_at"])
            for k in keys
        ],
    )  # fmt: skip


@app.command()
def revoke(
    key_id: Annotated[int, typer.Argument(help="Key id (see 'iotctl keys list').")],
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
) -> None:
    """Refuse the key from now on."""
    call("DELETE", f"/v1/keys/{key_id}", api=api, token=token)
    typer.echo(f"revoked key {key_id}")
