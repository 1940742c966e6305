"""``iotctl audit``: the audit log, newest first (admins)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import orjson
import typer

from ..apiclient import ApiOption, JsonOption, TokenOption, call
from ..errors import CliError
from ..statedir import StateDirOption
from ._table import print_json, print_rows

app = typer.Typer(help="Read the audit log (admins).")


@app.callback(invoke_without_command=True)
def audit(
    since: Annotated[str | None, typer.Option("--since", help="Only this recent, e.g. 1h, 7d.")] = None,
    action: Annotated[str | None, typer.Option("--action", help="Action prefix, e.g. device. or user.disable")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Who did it.")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Target id, e.g. a device id.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000)] = 50,
    api: ApiOption = None,
    state_dir: StateDirOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Who changed what, when, with the state before and after."""
    from cloud_core.tsdb.timespec import parse_duration_ms

    params: dict[str, str | int] = {"limit": limit}
    if since:
        try:
            ms = parse_duration_ms(since, "--since")
        except ValueError as exc:
            raise CliError(str(exc)) from None
        params["since"] = (datetime.now(UTC) - timedelta(milliseconds=ms)).isoformat()
    for key, value in (("action", action), ("actor", actor), ("target_id", target)):
        if value:
            params[key] = value
    entries = call("GET", "/v1/audit", api=api, token=token, params=params)
    if as_json:
        print_json(entries)
        return

    def change(e: dict[str, object]) -> str:
        before, after = e.get("before"), e.get("after")
        if isinstance(before, dict) and isinstance(after, dict):
            diff = {k: f"{before.get(k)!r}->{after.get(k)!r}" for k in after if before.get(k) != after.get(k)}
            return ", ".join(f"{k}: {v}" for k, v in diff.items())
        shown = after if after is not None else before
        return orjson.dumps(shown).decode()[:100] if shown is not None else ""

    print_rows(
        ("ID", "AT", "ACTOR", "ACTION", "TARGET", "CHANGE"),
        [(e["id"], str(e["at"])[:19], e["actor"], e["action"], f"{e['target_type']}:{e['target_id']}", change(e))
         for e in entries],
    )  # fmt: skip
