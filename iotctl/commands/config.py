"""``iotctl config``: set a device's desired configuration (key=value ...) and show desired vs reported."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer

from iotctl.apiclient import ApiOption, JsonOption, TokenOption, call
from iotctl.errors import CliError
from iotctl.statedir import StateDirOption

app = typer.Typer(no_args_is_help=True, help="Set and show devices' desired configuration.")


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """``["a=1", "b.c=-0.4", "d=null"]`` -> ``{"a": 1, "b": {"c": -0.4}, "d": None}``. Values are JSON
    when they parse as JSON (numbers, true/false, null, objects), else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise CliError(f"bad setting {pair!r}: use key=value, e.g. sampling_interval_s=10")
        try:
            value: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise CliError(f"bad setting {pair!r}: {part!r} is given both a value and sub-keys")
            node = child
        node[leaf] = value
    return out


def _print(view: dict[str, Any]) -> None:
    typer.echo(f"device    {view['device_id']}")
    sync = "in sync" if view["in_sync"] else "not yet applied"
    reported = f"v{view['reported_version']} {view.get('reported_status') or ''}".rstrip()
    typer.echo(f"desired   v{view['desired_version']}   reported {reported}   ({sync})")
    if view.get("reported_error"):
        typer.echo(f"error     {view['reported_error']}")
    for key, value in sorted(view["desired"].items()):
        typer.echo(f"  {key} = {orjson.dumps(value).decode()}")


@app.command("set")
def set_(
    device_id: Annotated[str, typer.Argument(help="Device id.", show_default=False)],
    settings: Annotated[
        list[str], typer.Argument(help="key=value ... (key=null removes a key).", show_default=False)
    ],
    api: ApiOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    state_dir: StateDirOption = None,
) -> None:
    """Change settings; the cloud signs the new version and publishes it (retained) to the device."""
    changes = parse_assignments(settings)
    view = call("PUT", f"/v1/devices/{device_id}/config", api=api, token=token, json={"settings": changes})
    if as_json:
        typer.echo(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())
    else:
        _print(view)


@app.command()
def show(
    device_id: Annotated[str, typer.Argument(help="Device id.", show_default=False)],
    api: ApiOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    state_dir: StateDirOption = None,
) -> None:
    """Desired config (version and settings) against what the device reported applying."""
    view = call("GET", f"/v1/devices/{device_id}/config", api=api, token=token)
    if as_json:
        typer.echo(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())
    else:
        _print(view)
