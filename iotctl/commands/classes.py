"""``iotctl classes``: create a class (teachers), list and show classes, add students (creating their
accounts) and other members, remove members, and quotas with what the class uses."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer

from ..apiclient import ApiOption, JsonOption, TokenOption, call
from ..errors import CliError
from ..statedir import StateDirOption
from ._table import print_json, print_rows
from .login import read_password

app = typer.Typer(no_args_is_help=True, help="Classes: create, members (students), quotas and usage.")

ClassArg = Annotated[int, typer.Argument(help="Class id (see 'iotctl classes list').", show_default=False)]
QuotaOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--quota",
        help="name=value (repeat): max_devices, max_devices_per_student, readings_per_s_per_device, "
        "readings_per_s, stored_bytes; value 'none' is unlimited.",
    ),
]


def _quotas(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise CliError(f"bad --quota {pair!r}: use name=value, e.g. max_devices_per_student=3")
        try:
            out[key.strip()] = None if raw.strip() == "none" else orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise CliError(f"bad --quota {pair!r}: the value must be a number or 'none'") from None
    return out


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Class name.", show_default=False)],
    quota: QuotaOpt = None,
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a class you teach."""
    c = call("POST", "/v1/classes", api=api, token=token, json={"name": name, "quotas": _quotas(quota)})
    print_json(c) if as_json else typer.echo(f"created class {c['id']} {c['name']!r}")


@app.command("list")
def list_(
    api: ApiOption = None, state_dir: StateDirOption = None, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    rows = call("GET", "/v1/classes", api=api, token=token)
    if as_json:
        print_json(rows)
        return
    print_rows(
        ("ID", "NAME", "MAX DEVICES", "PER STUDENT", "READINGS/S/DEVICE", "READINGS/S", "STORED BYTES"),
        [(c["id"], c["name"], c["max_devices"], c["max_devices_per_student"], c["readings_per_s_per_device"],
          c["readings_per_s"], c["stored_bytes"]) for c in rows],
    )  # fmt: skip


@app.command()
def show(
    class_id: ClassArg,
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Members and the devices you may see."""
    c = call("GET", f"/v1/classes/{class_id}", api=api, token=token)
    if as_json:
        print_json(c)
        return
    typer.echo(f"class {c['info']['id']} {c['info']['name']!r}")
    print_rows(("MEMBER", "ID", "ROLE"), [(m["username"], m["user_id"], m["class_role"]) for m in c["members"]])
    typer.echo("")
    print_rows(
        ("DEVICE", "OWNER", "STATUS", "SHARED"),
        [(d["id"], d["owner_id"], d["status"], d["shared_with_class"]) for d in c["devices"]],
    )


@app.command("add-student")
def add_student(
    class_id: ClassArg,
    username: Annotated[str, typer.Argument(help="The student's username.", show_default=False)],
    existing: Annotated[bool, typer.Option("--existing", help="Add an existing user instead of creating one.")] = False,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Default: generate one.")] = False,
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
) -> None:
    """Create a student account in the class (its password printed once), or add an existing user."""
    import secrets

    password = None if existing else (read_password(True) if password_stdin else secrets.token_urlsafe(12))
    call("POST", f"/v1/classes/{class_id}/members", api=api, token=token,
         json={"username": username, "class_role": "student", "password": password})  # fmt: skip
    typer.echo(f"{username} is a student of class {class_id}")
    if password is not None and not password_stdin:
        typer.echo(f"password (shown once): {password}")


@app.command("add-teacher")
def add_teacher(
    class_id: ClassArg,
    username: Annotated[str, typer.Argument(show_default=False)],
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
) -> None:
    call("POST", f"/v1/classes/{class_id}/members", api=api, token=token,
         json={"username": username, "class_role": "teacher"})  # fmt: skip
    typer.echo(f"{username} teaches class {class_id}")


@app.command("remove-member")
def remove_member(
    class_id: ClassArg,
    username: Annotated[str, typer.Argument(show_default=False)],
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
) -> None:
    c = call("GET", f"/v1/classes/{class_id}", api=api, token=token)
    ids = [m["user_id"] for m in c["members"] if m["username"] == username]
    if not ids:
        raise CliError(f"{username!r} is not in class {class_id}")
    call("DELETE", f"/v1/classes/{class_id}/members/{ids[0]}", api=api, token=token)
    typer.echo(f"removed {username} from class {class_id}")


@app.command()
def quota(
    class_id: ClassArg,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="name=value (repeat; 'none' = unlimited): change quotas.")
    ] = None,
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the class's quotas and usage; with --quota, set them (admins)."""
    if set_:
        call("PUT", f"/v1/classes/{class_id}/quota", api=api, token=token, json=_quotas(set_))
    usage = call("GET", f"/v1/classes/{class_id}/quota", api=api, token=token)
    if as_json:
        print_json(usage)
        return
    q = usage["quotas"]
    lim = {k: ("unlimited" if v is None else v) for k, v in q.items()}
    typer.echo(f"class {class_id}: {usage['devices']} devices (max {lim['max_devices']}; "
               f"per student {lim['max_devices_per_student']})")  # fmt: skip
    typer.echo(f"stored   {usage['stored_bytes']} bytes (quota {lim['stored_bytes']})")
    typer.echo(f"rates    {lim['readings_per_s_per_device']} readings/s per device, {lim['readings_per_s']} per class")
    for name, n in sorted(usage["devices_per_student"].items()):
        typer.echo(f"  {name}: {n} devices")
    if usage["quota_exceeded"]:
        typer.echo(f"quota_exceeded in the last {usage['window_h']:g} h:")
        for device, n in sorted(usage["quota_exceeded"].items()):
            typer.echo(f"  {device}: {n} messages")
