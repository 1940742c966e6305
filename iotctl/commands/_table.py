"""Plain column output for the people commands (users, keys, classes, audit)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import typer


def print_json(body: Any) -> None:
    typer.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())


def print_rows(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in header], *[["-" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
