"""``iotctl logout``: end the profile's session at the API and forget it here."""

from __future__ import annotations

from typing import Annotated

import typer

from ..apiclient import call
from ..errors import CliError
from ..profiles import current_profile, remove_profile

app = typer.Typer(help="End a profile's session.")


@app.callback(invoke_without_command=True)
def logout(profile: Annotated[str | None, typer.Option("--profile", help="Default: the current one.")] = None) -> None:
    """Revoke the session's refresh token and remove the profile."""
    p = current_profile(profile)
    if p is None:
        raise CliError("not logged in")
    try:
        call("POST", "/v1/auth/logout", api=p.api, token=None, auth=False, json={"refresh_token": p.refresh_token})
    except CliError as exc:  # the API may be gone: forget the profile anyway
        typer.echo(f"warning: {exc}", err=True)
    remove_profile(p.name)
    typer.echo(f"logged out of {p.api} (profile {p.name!r} removed)")
