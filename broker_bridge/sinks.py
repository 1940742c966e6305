"""Side sinks that cannot be wedged: a row a sink refuses is set aside on its own while the rest are
written, and a sink that keeps failing is reported (``/ready`` and ``bridge_sink_up{sink}``).

:func:`write_isolating` writes rows in one call; when that fails and the sink still answers (its
``alive`` probe succeeds), the failure is the rows' own: it halves the rows until it finds the ones
the sink refuses, writes the others, and returns the refused ones with their errors. When the sink
does not answer, or the failure is one of the connection (the driver's ``OperationalError`` or
``InterfaceError``: refused, lost, a server shutting down or still starting up), the failure is the
sink's: it raises, and the caller keeps the rows for the next round. So a row that can never be
written (a value a column cannot hold, a constraint) costs one isolated write and a dead letter, not
a sink retried forever, and a row is never refused for the server's state (a server that refused a
write while still starting up, then answered the probe, once made a dead letter "refused for good").

:class:`SinkHealth` remembers since when each sink has been failing; ``/ready`` turns red when one
has failed for longer than ``sink_unready_after_s``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

from .metrics import Metrics

__all__ = ["SinkHealth", "write_isolating"]

T = TypeVar("T")


def _sinks_fault(exc: Exception) -> bool:
    """A failure no row can cause: the connection's (PostgreSQL SQLSTATE classes 08, 53, 57, 58; SQLite
    locked or I/O errors), as opposed to a constraint, a value or a trigger refusing a row."""
    return isinstance(exc, (OperationalError, InterfaceError))


def write_isolating(
    rows: Sequence[T], write: Callable[[Sequence[T]], object], alive: Callable[[], bool]
) -> tuple[list[tuple[T, Exception]], list[T]]:
    """Write ``rows``; see the module docstring. Returns (refused rows with their errors, rows left
    unwritten because the sink stopped answering part way: keep them for later, in order).

    Raises:
        Exception: what ``write`` raised, when the sink does not answer at all.
    """
    if not rows:
        return [], []
    try:
        write(rows)
        return [], []
    except Exception as exc:
        if _sinks_fault(exc) or not alive():
            raise
        first = exc
    refused: list[tuple[T, Exception]] = []
    pending: list[T] = []
    _bisect(list(rows), write, alive, first, refused, pending)
    return refused, pending


def _bisect(
    rows: list[T],
    write: Callable[[Sequence[T]], object],
    alive: Callable[[], bool],
    error: Exception,
    refused: list[tuple[T, Exception]],
    pending: list[T],
) -> None:
    """``rows`` failed with ``error`` while the sink answered: split until the refused rows are found.
    Rows are visited in order, so once the sink stops answering everything after is ``pending``."""
    if pending:
        pending.extend(rows)
        return
    if _sinks_fault(error):
        pending.extend(rows)
        return
    if len(rows) == 1:
        if alive():
            refused.append((rows[0], error))
        else:
            pending.append(rows[0])
        return
    mid = len(rows) // 2
    for part in (rows[:mid], rows[mid:]):
        if pending:
            pending.extend(part)
            continue
        try:
            write(part)
        except Exception as exc:
            _bisect(part, write, alive, exc, refused, pending)


class SinkHealth:
    """Since when each sink (``tsdb``, ``ledger``, ``metadata``, ``cache``) has been failing."""

    def __init__(self, metrics: Metrics, *, unready_after_s: float) -> None:
        self._m = metrics
        self._after = unready_after_s
        self._lock = threading.Lock()
        self._failing_since: dict[str, float] = {}
        self._errors: dict[str, str] = {}

    def ok(self, sink: str) -> None:
        with self._lock:
            self._failing_since.pop(sink, None)
        self._m.sink_up.labels(sink).set(1)

    def failed(self, sink: str, error: object) -> None:
        with self._lock:
            self._failing_since.setdefault(sink, time.monotonic())
            self._errors[sink] = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        self._m.sink_up.labels(sink).set(0)

    def failing(self, sink: str) -> bool:
        with self._lock:
            return sink in self._failing_since

    def unready(self) -> str | None:
        """Why the bridge is not ready: a sink failing for longer than ``unready_after_s``, or None."""
        now = time.monotonic()
        with self._lock:
            for sink, since in sorted(self._failing_since.items()):
                if now - since >= self._after:
                    return f"{sink} failing for {now - since:.0f}s: {self._errors.get(sink, '')}"
        return None
