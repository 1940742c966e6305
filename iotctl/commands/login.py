"""``iotctl login``: sign in to a cloud API with a username and password and keep the session in a
profile (access token, refresh token), so every other command uses it; ``iotctl logout`` ends it and
``iotctl whoami`` shows who is signed in."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..apiclient import call, resolve_api
from ..errors import CliError
from ..profiles import Profile, save_profile

app = typer.Typer(help="Sign in to a cloud API and keep the session in a profile.")


def read_password(password_stdin: bool, prompt: str = "Password") -> str:
    """The password from stdin's first line, or typed at a hidden prompt."""
    if password_stdin:
        line = sys.stdin.readline().rstrip("\n")
        if not line:
            raise CliError("--password-stdin: no password on standard input")
        return line
    if not sys.stdin.isatty():
        raise CliError("no terminal to ask for the password: pass --password-stdin and pipe it in")
    return str(typer.prompt(prompt, hide_input=True))


@app.callback(invoke_without_command=True)
def login(
    api: Annotated[
        str | None,
        typer.Option("--api", envvar="IOTCTL_API", help="Cloud API base URL. Default: the running platform's."),
    ] = None,
    username: Annotated[str | None, typer.Option("--username", "-u", help="Your username.")] = None,
    profile: Annotated[str, typer.Option("--profile", help="Profile to keep the session in.")] = "default",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Sign in; later commands use this profile (or the one named by IOTCTL_PROFILE)."""
    api = resolve_api(api)
    if username is None:
        if not sys.stdin.isatty():
            raise CliError("pass --username (no terminal to ask)")
        username = str(typer.prompt("Username"))
    password = read_password(password_stdin)
    body = call(
        "POST", "/v1/auth/login", api=api, token=None, auth=False,
        json={"username": username, "password": password}, what="log in",
    )  # fmt: skip
    save_profile(
        Profile(
            name=profile,
            api=api.rstrip("/"),
            username=body["user"]["username"],
            access_token=body["access_token"],
            expires_at=int(body["expires_at"]),
            refresh_token=body["refresh_token"],
        )
    )
    typer.echo(f"logged in to {api} as {body['user']['username']} ({body['user']['role']}); profile {profile!r}")
