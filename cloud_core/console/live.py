"""Live readings as server-sent events: a device's readings as the bridge stores them.

The stream asks the time-series store every ``live_poll_s`` for the device's readings newer than the
last one it sent (so it works the same on the embedded store and on InfluxDB, with any number of API
replicas), and sends each poll's rows as one ``readings`` event::

    event: readings
    data: {"rows": [{"ts": 1767225600000, "values": {"temperature": 21.5, ...}}, ...]}

It starts with the history of ``live_backfill_s`` before the device's newest reading (a simulated
run's readings are stamped in the past: the chart follows the data's own time), or after ``after_ms``
when the client resumes. A reading stored later with an older timestamp than one already sent (a late
resend) is not sent live; the history view shows it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import orjson
from fastapi.concurrency import run_in_threadpool

from ..tsdb import QueryRow, StoreError, TimeSeriesStore
from .settings import ConsoleSettings

__all__ = ["live_events"]


def _event(name: str, data: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _rows(rows: Sequence[QueryRow]) -> list[dict[str, object]]:
    return [{"ts": r.ts_ms, "values": {k: v for k, v in r.values.items() if v is not None}} for r in rows]


async def live_events(
    store: TimeSeriesStore,
    device_id: str,
    settings: ConsoleSettings,
    *,
    fields: Sequence[str] | None,
    after_ms: int | None,
    duration_s: float | None,
    disconnected: Callable[[], Awaitable[bool]],
    stopping: threading.Event | None = None,
) -> AsyncIterator[bytes]:
    """The event stream's bytes until the client leaves, ``duration_s`` passed, or ``stopping`` is
    set (the server is shutting down: the stream ends instead of holding the shutdown up)."""
    started = time.monotonic()
    last_sent = time.monotonic()
    cursor = after_ms
    yield b"retry: 2000\n\n"
    while True:
        try:
            if cursor is None:
                newest = (await run_in_threadpool(store.latest_ts, [device_id])).get(device_id)
                start = (newest - int(settings.live_backfill_s * 1000)) if newest is not None else None
            else:
                start = cursor + 1
            rows: list[QueryRow] = []
            if start is not None:
                end = int(time.time() * 1000) + 366 * 86_400_000  # whatever the device stamped
                rows = await run_in_threadpool(
                    store.query,
                    device_id=device_id,
                    fields=fields,
                    start_ms=start,
                    end_ms=end,
                    limit=settings.live_max_rows,
                )
            if rows:
                cursor = rows[-1].ts_ms
                yield _event("readings", {"rows": _rows(rows)})
                last_sent = time.monotonic()
        except StoreError as exc:
            yield _event("problem", {"detail": f"the time-series store did not answer: {exc}"})
            last_sent = time.monotonic()
        if duration_s is not None and time.monotonic() - started >= duration_s:
            return
        if time.monotonic() - last_sent >= settings.live_heartbeat_s:
            yield b": idle\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(settings.live_poll_s)
        if await disconnected() or (stopping is not None and stopping.is_set()):
            return
