"""``iotctl query``: read stored readings back from either time-series store as a table, CSV or JSON."""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path

import orjson
import typer

from ..errors import CliError
from ..statedir import StateDirOption

app = typer.Typer()

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Format(str, Enum):  # noqa: UP042 - typer needs a str Enum for choices
    table = "table"
    csv = "csv"
    json = "json"


def parse_duration_ms(text: str, what: str) -> int:
    """``90s``, ``5m``, ``1h``, ``7d``, ``2w``, ``250ms`` -> milliseconds. Raises CliError."""
    from cloud_core.tsdb.timespec import parse_duration_ms as parse

    try:
        return parse(text, what)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def parse_time_ms(text: str, what: str) -> int:
    """ISO 8601 (``2024-05-01T12:00:00Z``; no zone means UTC) or integer epoch ms. Raises CliError."""
    from cloud_core.tsdb.timespec import parse_time_ms as parse

    try:
        return parse(text, what)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def iso_ms(ts_ms: int) -> str:
    """ISO 8601 UTC with milliseconds: ``2024-05-01T12:00:00.123Z``."""
    from cloud_core.tsdb.timespec import iso_ms as iso

    return iso(ts_ms)


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return repr(value)


def _shown(value: float | None) -> str:
    """For people: at most 6 decimals, so a mean reads 17.1794, not 17.179399999999998. CSV and
    JSON keep full precision for programs."""
    return "" if value is None else repr(round(value, 6))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@app.command()
def query(
    device: str | None = typer.Option(
        None, "--device", "-d", help="One device's readings (default: all devices)."
    ),
    field: list[str] | None = typer.Option(
        None, "--field", "-f", help="A field to show; repeat for more (default: all)."
    ),
    since: str | None = typer.Option(
        None, "--since", help="Readings from this long ago until now, e.g. 15m, 1h, 7d (default 1h)."
    ),
    start: str | None = typer.Option(
        None, "--start", help="Start of the range (ISO 8601, UTC unless a zone is given)."
    ),
    end: str | None = typer.Option(None, "--end", help="End of the range, exclusive (default: now)."),
    window: str | None = typer.Option(
        None, "--window", "-w", help="Aggregate per device over windows of this length, e.g. 5m."
    ),
    agg: str = typer.Option(
        "mean", "--agg", help="Aggregation per window: mean, min, max, sum, count, first, last, median."
    ),
    resolution: str = typer.Option(
        "auto",
        "--resolution",
        help="raw, hourly or daily means, or auto (hourly past 7 days, daily past 90).",
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most this many rows."),
    fmt: Format = typer.Option(Format.table, "--format", help="table, csv or json."),
    tsdb: str | None = typer.Option(
        None,
        "--tsdb",
        envvar="IOTCTL_TSDB",
        help="Store URL: sqlite:///PATH or influxdb://HOST:PORT/DB (default: embedded, in the state dir).",
    ),
    api: str | None = typer.Option(
        None,
        "--api",
        help="Read through the cloud API at this URL (or 'profile': your 'iotctl login' profile's API), "
        "with your token: only the devices you may read. Default: the store directly (operators).",
    ),
    token: str | None = typer.Option(
        None, "--token", envvar="IOTCTL_TOKEN", help="With --api: bearer token or key (default: your profile)."
    ),
    state_dir: StateDirOption = None,
) -> None:
    """Read stored readings back as a table, CSV or JSON; times are ISO 8601 UTC."""
    from cloud_core.paths import default_tsdb_url
    from cloud_core.tsdb import AGGREGATES, RESOLUTIONS, StoreError, open_tsdb

    # ---- arguments -----------------------------------------------------------------------------
    if agg not in AGGREGATES:
        raise CliError(f"bad --agg {agg!r}: use one of {', '.join(AGGREGATES)}")
    if resolution not in RESOLUTIONS:
        raise CliError(f"bad --resolution {resolution!r}: use one of {', '.join(RESOLUTIONS)}")
    if since is not None and start is not None:
        raise CliError("give either --since or --start/--end, not both")
    now_ms = (datetime.now(UTC) - _EPOCH) // timedelta(milliseconds=1)
    end_ms = parse_time_ms(end, "--end") if end is not None else now_ms + 1
    if start is not None:
        start_ms = parse_time_ms(start, "--start")
    else:
        start_ms = end_ms - parse_duration_ms(since or "1h", "--since")
    if start_ms >= end_ms:
        raise CliError(f"the start ({iso_ms(start_ms)}) is not before the end ({iso_ms(end_ms)})")
    window_s = None
    if window is not None:
        window_ms = parse_duration_ms(window, "--window")
        if window_ms % 1000:
            raise CliError(f"bad --window {window!r}: use whole seconds")
        window_s = window_ms // 1000
    fields = list(field) if field else None
    if api is not None:
        if tsdb is not None:
            raise CliError("give either --api or --tsdb, not both")
        _via_api(api, token, device, fields, start_ms, end_ms, window, agg, resolution, limit, fmt)
        return

    # ---- the store -----------------------------------------------------------------------------
    url = tsdb or default_tsdb_url()
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).expanduser().exists():
        raise CliError(
            f"no embedded store at {url[len('sqlite:///') :]}: run 'iotctl up' first or pass --tsdb URL"
        )
    try:
        store = open_tsdb(url)
    except ValueError as exc:
        raise CliError(_one_line(exc)) from None
    unknown = hint = ""
    try:
        rows = store.query(
            device_id=device,
            fields=fields,
            start_ms=start_ms,
            end_ms=end_ms,
            window_s=window_s,
            agg=agg,
            limit=limit,
            resolution=resolution,
        )
        if fields:
            unknown = _unknown_fields(store, rows, fields, device=device, start_ms=start_ms, end_ms=end_ms)
        if not rows:
            hint = _range_hint(store, device=device, start_ms=start_ms)
    except ValueError as exc:
        raise CliError(_one_line(exc)) from None
    except StoreError as exc:
        raise CliError(f"cannot read from {store.url}: {_one_line(exc)}", exit_code=1) from None
    finally:
        store.close()
    if fields and unknown:
        raise CliError(unknown, exit_code=1)
    if not rows and device is not None:
        raise CliError(
            f"no readings for device {device} from {iso_ms(start_ms)} to {iso_ms(end_ms)}{hint}", exit_code=1
        )

    # ---- output --------------------------------------------------------------------------------
    from cloud_core.tsdb.table import tabulate

    header, table, n_values = tabulate(rows, fields)
    _output(header, table, n_values, fmt, empty=f"no readings from {iso_ms(start_ms)} to {iso_ms(end_ms)}{hint}")


def _output(header: list[str], table: list[list[object]], n_values: int, fmt: Format, *, empty: str) -> None:
    """Print the rows as ``fmt``; ``empty``: what to say (on stderr, after a table) when there are none."""
    names = header[len(header) - n_values :]
    if fmt is Format.json:
        objs = [dict(zip(header, row, strict=True)) for row in table]
        sys.stdout.write(orjson.dumps(objs, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif fmt is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        for row in table:
            writer.writerow(
                row[: len(header) - len(names)] + [_fmt(v) for v in row[len(header) - len(names) :]]
            )
    else:
        _print_table(header, table, len(names))
        if not table and empty:
            print(empty, file=sys.stderr)


def _unknown_fields(
    store: object, rows: Sequence[object], fields: Sequence[str], *, device: str | None, start_ms: int, end_ms: int
) -> str:
    """A one-line error when a requested field is in none of the readings of the range, naming the
    fields that are; "" when every requested field has values."""
    have = {k for r in rows for k, v in r.values.items() if v is not None}  # type: ignore[attr-defined]
    if all(f in have for f in fields):
        return ""
    sample = store.query(device_id=device, fields=None, start_ms=start_ms, end_ms=end_ms, limit=5000)  # type: ignore[attr-defined]
    present = sorted({k for r in sample for k in r.values})
    absent = [f for f in fields if f not in present]
    if not absent or not present:  # the field exists, just not in these rows; or there is nothing at all
        return ""
    return f"no field {', '.join(map(repr, absent))} in the readings of that range; fields there: {', '.join(present)}"


def _range_hint(store: object, *, device: str | None, start_ms: int) -> str:
    """Where the store's readings are when a range found none: "; the last reading is ... (try ...)"."""
    before = store.query(device_id=device, fields=None, start_ms=0, end_ms=start_ms, limit=1)  # type: ignore[attr-defined]
    if not before:
        return ""
    first = before[0].ts_ms
    return f"; the store has older readings, from {iso_ms(first)} on (try --start {iso_ms(first)[:19]}Z)"


def _via_api(
    api: str,
    token: str | None,
    device: str | None,
    fields: list[str] | None,
    start_ms: int,
    end_ms: int,
    window: str | None,
    agg: str,
    resolution: str,
    limit: int | None,
    fmt: Format,
) -> None:
    """The same query through ``GET /v1/readings`` (or one device's readings), printed the same way."""
    from ..apiclient import call

    url = None if api == "profile" else api  # None: the login profile's API (or the running platform's)
    params: list[tuple[str, str | int]] = [("start", start_ms), ("end", end_ms), ("agg", agg)]
    params.append(("resolution", resolution))
    params += [("field", f) for f in fields or []]
    if window is not None:
        params.append(("window", window))
    if limit is not None:
        params.append(("limit", limit))
    path = f"/v1/devices/{device}/readings" if device else "/v1/readings"
    if fmt is Format.csv:
        params.append(("format", "csv"))
        sys.stdout.write(call("GET", path, api=url, token=token, params=params, raw=True))
        return
    objs = call("GET", path, api=url, token=token, params=params)
    if not objs and device is not None:
        raise CliError(f"no readings for device {device} in that range", exit_code=1)
    tags = {"time", "device_id", "sensor_type", "location"}
    header: list[str] = []
    for o in objs:
        header += [k for k in o if k not in header]
    head = [k for k in header if k in tags]
    names = fields or sorted(k for k in header if k not in tags)
    header = head + list(names)
    _output(header, [[o.get(k) for k in header] for o in objs], len(names), fmt, empty="no readings in that range")


def _print_table(header: Sequence[str], table: Sequence[Sequence[object]], n_values: int) -> None:
    from rich.console import Console
    from rich.table import Table

    split = len(header) - n_values
    cells = [[str(c) for c in row[:split]] + [_shown(v) for v in row[split:]] for row in table]  # type: ignore[arg-type]
    t = Table(show_lines=False)
    for i, name in enumerate(header):
        t.add_column(name, justify="right" if i >= split else "left", no_wrap=True)
    for row in cells:
        t.add_row(*row)
    # Never truncate a value: let the table be as wide as it needs, even past the terminal.
    needed = sum(max([len(h), *(len(r[i]) for r in cells)]) + 3 for i, h in enumerate(header)) + 1
    console = Console()
    console.width = max(console.width, needed)
    console.print(t)
