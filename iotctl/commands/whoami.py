"""``iotctl whoami``: who the API sees, with role, permissions and classes."""

from __future__ import annotations

import orjson
import typer

from ..apiclient import ApiOption, JsonOption, TokenOption, call
from ..statedir import StateDirOption

app = typer.Typer(help="Show who is signed in.")


@app.callback(invoke_without_command=True)
def whoami(
    api: ApiOption = None, state_dir: StateDirOption = None, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Your user, role, permissions and classes as the API sees them."""
    me = call("GET", "/v1/auth/me", api=api, token=token)
    if as_json:
        typer.echo(orjson.dumps(me, option=orjson.OPT_INDENT_2).decode())
        return
    user = me["user"]
    typer.echo(f"{user['username']} (id {user['id']}) role {me['role']} via {me['via']}")
    typer.echo(f"permissions: {', '.join(me['permissions'])}")
    if user.get("fleet_access"):
        typer.echo(f"fleet access: {user['fleet_access']} on every device")
    if me["teacher_of"] or me["student_of"]:
        typer.echo(f"teaches classes {me['teacher_of'] or '-'}; student in classes {me['student_of'] or '-'}")
    if me.get("key_devices") is not None:
        typer.echo(f"this key is limited to: {', '.join(me['key_devices'])}")
