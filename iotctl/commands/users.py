"""``iotctl users``: add, list, disable / enable, reset-password, grant, revoke-grant (admins), and
mqtt-credentials (your own read-only broker account)."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

import typer

from ..apiclient import ApiOption, JsonOption, TokenOption, call
from ..errors import CliError
from ..statedir import StateDirOption
from ._table import print_json, print_rows
from .login import read_password

app = typer.Typer(no_args_is_help=True, help="Add, list, disable users; reset passwords; grants (admins).")

NameArg = Annotated[str, typer.Argument(help="Username.", show_default=False)]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input (default: generate one).")
]


def user_id(name: str, *, api: str, token: str | None) -> int:
    for u in call("GET", "/v1/admin/users", api=api, token=token):
        if u["username"] == name:
            return int(u["id"])
    raise CliError(f"no user {name!r}")


def _password(password_stdin: bool) -> tuple[str, bool]:
    """(the password, whether it was generated here and must be shown)."""
    if password_stdin:
        return read_password(True), False
    return secrets.token_urlsafe(12), True


@app.command()
def add(
    username: NameArg,
    role: Annotated[str, typer.Option("--role", help="admin, user, device or readonly.")] = "user",
    teacher: Annotated[bool, typer.Option("--teacher", help="May create classes.")] = False,
    fleet: Annotated[str | None, typer.Option("--fleet", help="read or write: reaches every device.")] = None,
    password_stdin: PasswordStdin = False,
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a user (a generated password is printed once)."""
    password, generated = _password(password_stdin)
    body = {"username": username, "password": password, "role": role, "is_teacher": teacher, "fleet_access": fleet}
    user = call("POST", "/v1/users", api=api, token=token, json=body)
    if as_json:
        print_json(user)
        return
    typer.echo(f"added {user['username']} (id {user['id']}, role {user['role']}{', teacher' if teacher else ''})")
    if generated:
        typer.echo(f"password (shown once): {password}")


@app.command("list")
def list_(
    api: ApiOption = None, state_dir: StateDirOption = None, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Every user (GET /v1/admin/users)."""
    users = call("GET", "/v1/admin/users", api=api, token=token)
    if as_json:
        print_json(users)
        return
    print_rows(
        ("ID", "USERNAME", "ROLE", "FLEET", "TEACHER", "ACTIVE"),
        [(u["id"], u["username"], u["role"], u["fleet_access"], u["is_teacher"], u["is_active"]) for u in users],
    )


def _patch(name: str, body: dict[str, Any], api: str, token: str | None) -> dict[str, Any]:
    uid = user_id(name, api=api, token=token)
    result: dict[str, Any] = call("PATCH", f"/v1/users/{uid}", api=api, token=token, json=body)
    return result


@app.command()
def disable(
    username: NameArg, api: ApiOption = None, state_dir: StateDirOption = None, token: TokenOption = None
) -> None:
    """Refuse the user's tokens and keys from now on and close their sessions."""
    _patch(username, {"is_active": False}, api, token)
    typer.echo(f"disabled {username}")


@app.command()
def enable(
    username: NameArg, api: ApiOption = None, state_dir: StateDirOption = None, token: TokenOption = None
) -> None:
    """Let a disabled user sign in again."""
    _patch(username, {"is_active": True}, api, token)
    typer.echo(f"enabled {username}")


@app.command("set-role")
def set_role(
    username: NameArg,
    role: Annotated[str, typer.Argument(help="admin, user, device or readonly.")],
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
) -> None:
    """Change a user's role (not your own)."""
    _patch(username, {"role": role}, api, token)
    typer.echo(f"{username} is now {role}")


@app.command("reset-password")
def reset_password(
    username: NameArg,
    password_stdin: PasswordStdin = False,
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
) -> None:
    """Set a new password (generated and printed once unless --password-stdin); closes their sessions."""
    password, generated = _password(password_stdin)
    call("POST", f"/v1/users/{user_id(username, api=api, token=token)}/password", api=api, token=token,
         json={"password": password})  # fmt: skip
    typer.echo(f"password of {username} reset" + (f"; new password (shown once): {password}" if generated else ""))


@app.command()
def grant(
    username: NameArg,
    level: Annotated[str, typer.Option("--level", help="read or write.")] = "read",
    device: Annotated[str | None, typer.Option("--device", help="One device.")] = None,
    class_id: Annotated[int | None, typer.Option("--class", help="Every device of a class.")] = None,
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
) -> None:
    """Let a user read (or write) one device or a whole class's devices."""
    if (device is None) == (class_id is None):
        raise CliError("give exactly one of --device and --class")
    call("PUT", f"/v1/users/{user_id(username, api=api, token=token)}/grants", api=api, token=token,
         json={"permission": level, "device_id": device, "class_id": class_id})  # fmt: skip
    typer.echo(f"granted {level} on {'device ' + device if device else f'class {class_id}'} to {username}")


@app.command("revoke-grant")
def revoke_grant(
    username: NameArg,
    device: Annotated[str | None, typer.Option("--device")] = None,
    class_id: Annotated[int | None, typer.Option("--class")] = None,
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
) -> None:
    """Remove a grant on one device or a class."""
    if (device is None) == (class_id is None):
        raise CliError("give exactly one of --device and --class")
    params = {"device_id": device} if device else {"class_id": class_id}
    call("DELETE", f"/v1/users/{user_id(username, api=api, token=token)}/grants", api=api, token=token, params=params)
    typer.echo(f"revoked the grant of {username}")


@app.command("mqtt-credentials")
def mqtt_credentials(
    api: ApiOption = None, state_dir: StateDirOption = None, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Your read-only broker account (a new password each time, shown once)."""
    body = call("POST", "/v1/auth/mqtt-credentials", api=api, token=token)
    if as_json:
        print_json(body)
        return
    typer.echo(f"broker   {body['mqtt_url']}\nusername {body['mqtt_username']}\npassword {body['mqtt_password']}")
    typer.echo("may subscribe to: " + ", ".join(body["topics"]))
