"""Readings over REST, for whoever may read the devices' data (``read_data``): one device's readings
(``GET /v1/devices/{id}/readings``) or several devices' at once (``GET /v1/readings``, by default
every device you may read), with the options of ``iotctl query``: fields, a range (``since``, or
``start``/``end``), windows and an aggregate, the resolution, a row limit; JSON or CSV."""

from __future__ import annotations

import heapq
import time
from enum import Enum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse

from ...auth.access import Principal, authorize_device, visible_device_ids
from ...services.errors import InvalidInput, Unavailable
from ...tsdb import AGGREGATES, RESOLUTIONS, QueryRow, StoreError, TimeSeriesStore
from ...tsdb.table import as_csv, as_objects, tabulate
from ...tsdb.timespec import iso_ms, parse_duration_ms, parse_time_ms
from ..deps import P, SessionDep, require

router = APIRouter(prefix="/v1", tags=["readings"])

MAX_ROWS = 100_000


class Format(str, Enum):  # noqa: UP042 - FastAPI documents a str Enum as choices
    json = "json"
    csv = "csv"


_CSV = {200: {"content": {"text/csv": {}}, "description": "Readings (JSON objects, or CSV with format=csv)."}}


class Options:
    """The query options, parsed and checked (InvalidInput names the bad one)."""

    def __init__(
        self,
        field: Annotated[list[str] | None, Query(description="Fields to return (repeat); default all.")] = None,
        since: Annotated[str | None, Query(max_length=32, description="From this long ago, e.g. 15m, 1h, 7d.")] = None,
        start: Annotated[str | None, Query(max_length=40, description="Range start: ISO 8601 or epoch ms.")] = None,
        end: Annotated[str | None, Query(max_length=40, description="Range end, exclusive (default now).")] = None,
        window: Annotated[str | None, Query(max_length=32, description="Aggregate per window, e.g. 5m.")] = None,
        agg: Annotated[str, Query(max_length=16, description=f"One of {', '.join(AGGREGATES)}.")] = "mean",
        resolution: Annotated[str, Query(max_length=16, description="raw, hourly, daily or auto.")] = "auto",
        limit: Annotated[int, Query(gt=0, le=MAX_ROWS)] = 10_000,
        format: Annotated[Format, Query(description="json or csv.")] = Format.json,
    ) -> None:
        try:
            if agg not in AGGREGATES:
                raise ValueError(f"bad agg {agg!r}: use one of {', '.join(AGGREGATES)}")
            if resolution not in RESOLUTIONS:
                raise ValueError(f"bad resolution {resolution!r}: use one of {', '.join(RESOLUTIONS)}")
            if since is not None and start is not None:
                raise ValueError("give either since or start/end, not both")
            now_ms = int(time.time() * 1000)
            self.end_ms = parse_time_ms(end, "end") if end is not None else now_ms + 1
            if start is not None:
                self.start_ms = parse_time_ms(start, "start")
            else:
                self.start_ms = self.end_ms - parse_duration_ms(since or "1h", "since")
            if self.start_ms >= self.end_ms:
                raise ValueError(f"the start ({iso_ms(self.start_ms)}) is not before the end ({iso_ms(self.end_ms)})")
            self.window_s: int | None = None
            if window is not None:
                window_ms = parse_duration_ms(window, "window")
                if window_ms % 1000:
                    raise ValueError(f"bad window {window!r}: use whole seconds")
                self.window_s = window_ms // 1000
        except (ValueError, OverflowError) as exc:
            raise InvalidInput(str(exc)) from None
        if field is not None and any(not f or len(f) > 64 for f in field):
            raise InvalidInput("each field must be 1-64 characters")
        self.fields = list(field) if field else None
        self.agg, self.resolution, self.limit, self.format = agg, resolution, limit, format


def _query(store: TimeSeriesStore, o: Options, device_id: str | None) -> list[QueryRow]:
    try:
        return store.query(
            device_id=device_id,
            fields=o.fields,
            start_ms=o.start_ms,
            end_ms=o.end_ms,
            window_s=o.window_s,
            agg=o.agg,
            limit=o.limit,
            resolution=o.resolution,
        )
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    except StoreError as exc:
        raise Unavailable(f"the time-series store did not answer: {exc}") from None


def _answer(rows: list[QueryRow], o: Options) -> Any:
    header, table, n_values = tabulate(rows[: o.limit], o.fields)
    if o.format is Format.csv:
        return PlainTextResponse(as_csv(header, table, n_values), media_type="text/csv")
    return as_objects(header, table)


@router.get("/devices/{device_id}/readings", response_model=list[dict[str, Any]], responses=_CSV)
def device_readings(
    device_id: str,
    request: Request,
    o: Annotated[Options, Depends()],
    _p: Annotated[Principal, Depends(require(P.READ_DATA, device="device_id"))],
) -> Any:
    """One device's readings, oldest first."""
    return _answer(_query(request.app.state.tsdb, o, device_id), o)


@router.get("/readings", response_model=list[dict[str, Any]], responses=_CSV)
def readings(
    request: Request,
    session: SessionDep,
    o: Annotated[Options, Depends()],
    p: Annotated[Principal, Depends(require(P.READ_DATA))],
    device: Annotated[list[str] | None, Query(description="Devices (repeat); default: all you may read.")] = None,
) -> Any:
    """Several devices' readings, oldest first (by time, then device)."""
    store: TimeSeriesStore = request.app.state.tsdb
    if device:
        ids: list[str] | None = sorted({authorize_device(session, p, d, P.READ_DATA).id for d in device})
    else:
        visible = visible_device_ids(session, p)
        ids = None if visible is None else sorted(visible)
    if ids is None:
        return _answer(_query(store, o, None), o)
    merged = heapq.merge(*(_query(store, o, d) for d in ids), key=lambda r: (r.ts_ms, r.device_id))
    return _answer(list(merged), o)
