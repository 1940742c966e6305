"""From received messages to durable points and acknowledgements.

The MQTT network thread runs each message through :func:`pipeline.process` as it arrives
(:meth:`Ingest.submit`) and appends the outcome to the open *unit*; a unit closes when it holds
``batch_max_points`` points or ``batch_max_messages`` messages. One **writer** thread takes closed
units, or the open one once its oldest message has waited ``batch_max_delay_s``, so batches grow
with the load: it decides duplicates/replays against the ledger, sets aside readings that would land
on a stored key with other values (``duplicate_timestamp``), writes the new points to the
time-series store in one call (retrying every failure with backoff, the messages staying
unacknowledged), records the unit's ledger rows (the replay state), then publishes one cumulative
receipt per device and acknowledges the unit's messages in arrival order, and hands dead letters and
side effects on. A receipt naming a batch is sent only once its ledger row is durable: while the
metadata DB is down the points are still written and the messages acknowledged, but the receipts are
held (bounded by ``receipts_held_max``; storage is idempotent, and a device resends what stays
unreceipted) until the rows are written, so replay state is never lost to a restart after a
receipt. What each rejection is told is decided in one table, :mod:`broker_bridge.dispositions`.

Verification runs on the network thread on purpose: PyNaCl releases the GIL while it verifies, and
with a second busy Python thread each release would cost a GIL hand-off (milliseconds under load).

Backpressure: nothing is acknowledged until its write succeeds, so when the store is down the
broker stops sending at Receive Maximum and holds the rest; the backlog never exceeds it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from cloud_core.tsdb.base import Point, PointKey, StoreError, TimeSeriesStore
from iot_protocol import (
    ProtocolError,
    ReadingOutcome,
    ReadingProblem,
    ReadingRejection,
    Receipt,
    Rejection,
    Retry,
    Topics,
    Unread,
    encode,
    jws,
    peek_seq,
)

from .deadletter import DeadLetter, DeadLetterQueue
from .dispositions import RETRY, disposition
from .effects import SideEffects, db_alive
from .errors import DirectoryUnavailable
from .ledger import Known, Ledger, LedgerRow
from .metrics import Metrics
from .mqtt import Inbound
from .pipeline import (
    DUPLICATE_TIMESTAMP,
    QUOTA_EXCEEDED,
    RATE_LIMITED,
    REGISTRY_UNAVAILABLE,
    REPLAYED_SEQ,
    STORE_REJECTED,
    Accepted,
    DeviceKey,
    Rejected,
    payload_hash,
    process,
    replay_decision,
)
from .quota import QuotaGate
from .ratelimit import RateLimiter
from .settings import BridgeSettings
from .sinks import SinkHealth, write_isolating

__all__ = ["Backoff", "Ingest", "Unit"]

_ENCODE_ON_ARRIVAL_MIN = 8  # points; smaller batches are encoded by the writer, many at once
_HW_MAX = 1_000_000  # devices whose newest stored timestamp is remembered

# A receipt entry, per device: ("stored", seq, rejections) | ("rejected", seq, reason, rejections) |
# ("retry", seq, reason, after_ms) | ("unread", sha256, reason); rejections: ((index, reason), ...).
Entry = tuple[Any, ...]

log = logging.getLogger(__name__)


class Backoff:
    """Exponential backoff with full jitter between ``initial`` and ``cap`` seconds."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial, self.cap, self.attempt = initial, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.initial * (2**self.attempt))
        self.attempt += 1
        return float(delay * (0.5 + random.random() / 2))

    def reset(self) -> None:
        self.attempt = 0


@dataclass(slots=True)
class Unit:
    """Messages written together: one store write, then their acks in arrival order."""

    items: list[tuple[Inbound, Accepted | Rejected]] = field(default_factory=list)
    points: int = 0
    opened: float = 0.0
    bodies: dict[int, bytes] = field(default_factory=dict)  # item index -> its points, store-encoded


class Ingest:
    """Per-message processing on the network thread, and the writer thread."""

    def __init__(
        self,
        settings: BridgeSettings,
        topics: Topics,
        *,
        lookup: Callable[[str], DeviceKey | None],
        store: TimeSeriesStore,
        ledger: Ledger,
        deadletters: DeadLetterQueue,
        effects: SideEffects,
        metrics: Metrics,
        health: SinkHealth,
        ack: Callable[[list[Inbound]], int],
        publish: Callable[[list[tuple[str, bytes]]], int],
        quota: QuotaGate | None = None,
    ) -> None:
        self._s = settings
        self._health = health
        self._topics = topics
        self._lookup = lookup
        self._store = store
        self._ledger = ledger
        self._dead = deadletters
        self._effects = effects
        self._m = metrics
        self._ack = ack
        self._publish = publish
        self._skew_ms = int(settings.max_clock_skew_s * 1000)
        # When the store has a wire format, a batch of many points is encoded as it arrives (small
        # buffers, on the network thread: cheaper per point than one 5,000-point body); batches of a
        # few points are encoded together by the writer (per message, the fixed cost would dominate,
        # on the thread that limits single-reading throughput).
        self._encodes = store.encodes_points
        self._limiter = (
            RateLimiter(settings.rate_limit_msgs_per_s, settings.rate_limit_burst)
            if settings.rate_limit_msgs_per_s > 0
            else None
        )
        self._quota = quota
        self._cond = threading.Condition(threading.Lock())
        self._current = Unit()
        self._closed: deque[Unit] = deque()
        self._closing = False  # no new messages are taken (they stay unacknowledged)
        self._stop = threading.Event()
        self._drain_deadline = float("inf")
        self._pending = 0  # received, not yet acknowledged (or given up on)
        self._schema_ready = False
        self._receipts: dict[str, list[Entry]] = {}
        self._receipts_at = 0.0
        # Receipts waiting for their ledger rows (DB down): [(rows, [(device, entry)])], oldest first.
        self._held: list[tuple[list[LedgerRow], list[tuple[str, Entry]]]] = []
        self._held_keys: set[tuple[str, int]] = set()
        self._held_entries = 0
        self._held_retry_at = 0.0
        self._held_backoff = Backoff(settings.retry_initial_s, settings.retry_max_s)
        # device -> newest ts stored (as far as this replica knows): a reading above it cannot land
        # on a stored key, so only readings at or below it are checked against the store.
        self._hw: dict[str, int] = {}
        self._unacked: list[Inbound] = []  # written, waiting for their receipt flush and PUBACK
        self._ack_threshold = max(1, settings.receive_maximum // 4)
        self.store_ok = True
        self.units_written = 0
        self._thread = threading.Thread(target=self._write_loop, name="bridge-writer", daemon=True)

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, drain_s: float = 5.0) -> None:
        """Take no more messages; write and acknowledge what is in hand for up to ``drain_s``, then
        stop. What is left is not acknowledged: the broker redelivers it (this session or another)."""
        self._drain_deadline = time.monotonic() + drain_s
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._stop.set()
        self._thread.join(drain_s + 5)

    @property
    def backlog(self) -> int:
        return self._pending

    # ---- network thread ------------------------------------------------------------------------
    def submit(self, msg: Inbound) -> None:
        """Process one telemetry message (called by the MQTT network thread)."""
        if self._closing:
            return
        outcome: Accepted | Rejected
        limited = self._rate_limited(msg)
        if limited is not None:
            outcome = limited
        else:
            try:
                outcome = self._process(msg)
            except DirectoryUnavailable as exc:
                outcome = self._registry_unavailable(msg, exc)
        s = self._s
        self._m.messages_received.inc()
        outcome, body, npoints = self._admitted(outcome)
        with self._cond:
            u = self._current
            if not u.items:
                u.opened = time.monotonic()
                self._cond.notify()  # the writer starts timing this unit
            if body is not None:
                u.bodies[len(u.items)] = body
            u.items.append((msg, outcome))
            u.points += npoints
            self._pending += 1
            if u.points >= s.batch_max_points or len(u.items) >= s.batch_max_messages:
                self._closed.append(u)
                self._current = Unit()
                self._cond.notify()

    def _process(self, msg: Inbound) -> Accepted | Rejected:
        """:func:`pipeline.process` for ``msg``; raises DirectoryUnavailable when the registry cannot tell."""
        return process(
            msg.topic,
            msg.payload,
            topics=self._topics,
            lookup=self._lookup,
            now_ms=int(msg.received * 1000),
            max_skew_ms=self._skew_ms,
        )

    def _registry_unavailable(self, msg: Inbound, exc: DirectoryUnavailable) -> Rejected:
        """A device the key cache does not hold while the registry cannot be read (metadata DB down):
        ``registry_unavailable``, answered like ``rate_limited`` (acknowledged, receipted as a retry by
        the seq the unverified payload claims: a retry deletes nothing). Holding the message instead
        would hold its unit, and with it every cached device's batches, until the DB is back."""
        wait = max(1.0, self._s.retry_max_s)
        return _retry_rejection(
            msg, exc.device_id, REGISTRY_UNAVAILABLE, f"{exc}; retry in {wait:.3f}s", int(wait * 1000)
        )

    def _admitted(self, o: Accepted | Rejected) -> tuple[Accepted | Rejected, bytes | None, int]:
        """An outcome ready for its unit: its readings counted, and for an accepted batch its points in
        the store's wire format (None when the store takes points, or the batch is small: the writer
        encodes those in bulk) and how many; a point the store could never hold makes the batch
        ``store_rejected``."""
        if type(o) is not Accepted:
            return o, None, 0
        self._m.readings_received.inc(o.readings)
        if self._quota is not None:
            self._quota.charge(o.device_id, o.readings)
        if not self._encodes or len(o.points) < _ENCODE_ON_ARRIVAL_MIN:
            return o, None, len(o.points)
        try:
            return o, self._store.encode_points(o.points), len(o.points)
        except StoreError as exc:
            return _store_rejected(o, exc), None, 0

    def _rate_limited(self, msg: Inbound) -> Rejected | None:
        """A ``rate_limited`` rejection when the topic's device is over its message rate, else None.

        Checked before verification, on every message naming the device (verified or not): refusing
        costs nothing, and a flood from someone with broker access but not the key is throttled too.
        It is acknowledged with its unit, so it never holds the session, and receipted as a retry
        (by the seq read from the unverified payload, with when a token will be free): a retry never
        deletes anything, so a forged one cannot harm the device.

        A device over its class quota (:mod:`broker_bridge.quota`) is refused here the same way, with
        reason ``quota_exceeded``."""
        if self._limiter is None and self._quota is None:
            return None
        try:
            device_id, _ = self._topics.parse(msg.topic)
        except ProtocolError:
            return None  # process() rejects it as bad_topic
        if self._limiter is not None and not self._limiter.allow(device_id, msg.received):
            s = self._s
            wait = self._limiter.wait_s(device_id, msg.received)
            reason = RATE_LIMITED
            detail = f"over {s.rate_limit_msgs_per_s:g} msg/s (burst {s.rate_limit_burst}); retry in {wait:.3f}s"
        elif self._quota is not None and (why := self._quota.check(device_id, len(msg.payload))) is not None:
            wait = self._quota.retry_after_s(why)
            reason, detail = QUOTA_EXCEEDED, f"{why}; retry in {wait:.3f}s"
        else:
            return None
        return _retry_rejection(msg, device_id, reason, detail, int(wait * 1000) + 1)

    # ---- writer --------------------------------------------------------------------------------
    def _next_unit(self) -> Unit | None:
        """The next unit to write, or None when stopping with nothing left. Sends due receipts
        while it waits."""
        linger = self._s.batch_max_delay_s
        while True:
            with self._cond:
                if self._closed:
                    return self._closed.popleft()
                cur = self._current
                if cur.items:
                    wait = cur.opened + linger - time.monotonic()
                    if wait <= 0 or self._closing:
                        self._current = Unit()
                        return cur
                elif self._closing:
                    self._retry_held(force=True)
                    self._flush_receipts(force=True)
                    if self._held:
                        log.warning(
                            "stopping with %d receipts held (metadata DB down): their devices resend those batches",
                            self._held_entries,
                        )
                    return None
                else:
                    wait = 0.5
                if self._receipts or self._unacked:
                    wait = min(wait, max(0.0, self._receipts_at + self._s.receipt_interval_s - time.monotonic()))
                if self._held:
                    wait = min(wait, max(0.0, self._held_retry_at - time.monotonic()))
                self._cond.wait(wait)
            self._retry_held(force=False)
            self._flush_receipts(force=False)

    def _write_loop(self) -> None:
        try:  # ready the store before the first unit (retention policies...); the first write retries
            self._store.init_schema()
            self._schema_ready = True
        except Exception as exc:
            log.warning("time-series store not ready yet: %s", exc)
        while True:
            unit = self._next_unit()
            if unit is None:
                return
            if self._stop.is_set() and time.monotonic() > self._drain_deadline:
                return  # abandoned: not acknowledged, redelivered later
            try:
                self._write_unit(unit)
            except _Abandoned:
                return
            except Exception:  # a bug: keep running; these messages stay unacknowledged until reconnect
                log.exception("unexpected error writing a unit; its messages stay unacknowledged")
                self._done(len(unit.items))

    def _done(self, n: int) -> None:
        with self._cond:
            self._pending -= n
        self._m.backlog.set(self._pending)

    # ---- deciding ------------------------------------------------------------------------------
    def _ledger_pair(self, o: Accepted | Rejected) -> tuple[str, int] | None:
        """(device, seq) of an outcome the ledger decides: an accepted batch, or a verified one finally
        rejected (its seq is used up)."""
        if type(o) is Accepted:
            return (o.device_id, o.batch.seq)
        if (
            type(o) is Rejected
            and o.verified
            and o.seq is not None
            and o.device_id is not None
            and disposition(o.reason).records_seq
        ):
            return (o.device_id, o.seq)
        return None

    def _decide(self, unit: Unit) -> tuple[dict[int, str], dict[tuple[str, int], Known]]:
        """Per item index (of those the ledger decides) ``new``/``duplicate``/``replayed``, and what the
        ledger knows of their (device, seq)."""
        wanted = {i: pair for i, (_, o) in enumerate(unit.items) if (pair := self._ledger_pair(o)) is not None}
        if not wanted:
            return {}, {}
        pairs = list(wanted.values())
        if self._held and time.monotonic() < self._held_retry_at:
            # The DB is down and not due for another try: decide from memory without paying a failing
            # connect (a DB that is away may cost a connect timeout) once per unit.
            known = self._ledger.known_in_memory(pairs)
        else:
            try:
                known = self._ledger.known(pairs)
            except Exception as exc:  # DB down: decide on what memory knows; storage is idempotent anyway
                log.warning("ledger lookup failed, deciding from memory: %s", exc)
                self._m.write_failures.labels("ledger_lookup").inc()
                known = self._ledger.known_in_memory(pairs)
        decisions: dict[int, str] = {}
        for i, key in wanted.items():
            o = unit.items[i][1]
            d = replay_decision(o.sha256, o.key_id, _pair(known.get(key)))
            decisions[i] = d
            if d == "new":  # a second copy later in this unit is a duplicate of this one
                known[key] = (o.sha256, o.key_id, None, None)
        return decisions, known

    # ---- duplicate timestamps --------------------------------------------------------------------
    def _check_stored_keys(self, unit: Unit, new: list[int]) -> None:
        """Set aside the readings of the new batches that would land on a key already stored (or written
        earlier in this unit) with other values: ``duplicate_timestamp``. A batch whose readings are all
        newer than anything stored for its device (the live case) costs one comparison; the others are
        looked up in the store in one call. Raises what the store raises (the caller retries)."""
        items = unit.items
        unknown = {o.device_id for i in new if type(o := items[i][1]) is Accepted and o.points}
        unknown -= self._hw.keys()
        if unknown:
            latest = self._store.latest_ts(sorted(unknown))
            if len(self._hw) + len(unknown) > _HW_MAX:
                self._hw.clear()
            for d in unknown:
                self._hw[d] = latest.get(d, -1)
        hw = dict(self._hw)
        check: list[int] = []
        for i in new:
            o = items[i][1]
            assert type(o) is Accepted
            if not o.points:
                continue
            top = hw.get(o.device_id, -1)
            if o.min_ts <= top:
                check.append(i)
            if o.max_ts > top:
                hw[o.device_id] = o.max_ts
        if not check:
            return
        devices = {items[i][1].device_id for i in check}
        keys = [
            (p.device_id, p.sensor_type, p.location, p.ts_ms)
            for i in check
            for p in items[i][1].points  # type: ignore[union-attr]
        ]
        stored = self._store.stored_fields(keys)
        written: dict[PointKey, Any] = {}  # points of earlier new batches of these devices in this unit
        checking = set(check)
        for i in new:
            o = items[i][1]
            assert type(o) is Accepted
            if o.device_id not in devices:
                continue
            if i in checking:
                o = self._drop_conflicts(unit, i, o, stored, written)
            for p in o.points:
                written.setdefault((p.device_id, p.sensor_type, p.location, p.ts_ms), p.fields)

    def _drop_conflicts(
        self, unit: Unit, i: int, o: Accepted, stored: dict[PointKey, dict[str, float]], written: dict[PointKey, Any]
    ) -> Accepted:
        keep: list[Point] = []
        keep_at: list[int] = []
        problems = list(o.problems)
        for k, p in enumerate(o.points):
            key = (p.device_id, p.sensor_type, p.location, p.ts_ms)
            index = k if o.indexes is None else o.indexes[k]
            other = written.get(key)
            if other is None:
                other = stored.get(key)
            if other is not None and not _same_fields(other, p.fields):
                problems.append(
                    ReadingProblem(
                        index, DUPLICATE_TIMESTAMP, f"{p.sensor_type} at ts {p.ts_ms} is stored with other values"
                    )
                )
                continue
            keep.append(p)
            keep_at.append(index)
        if len(keep) == len(o.points):
            return o
        problems.sort(key=lambda x: x.index)
        lo = min((p.ts_ms for p in keep), default=0)
        hi = max((p.ts_ms for p in keep), default=-1)
        o2 = replace(o, points=tuple(keep), problems=tuple(problems), indexes=tuple(keep_at), min_ts=lo, max_ts=hi)
        unit.items[i] = (unit.items[i][0], o2)
        unit.points -= len(o.points) - len(keep)
        unit.bodies.pop(i, None)  # re-encoded by the writer with the others
        return o2

    # ---- writing -------------------------------------------------------------------------------
    def _write_items(self, unit: Unit, indexes: list[int]) -> None:
        """Write the points of these items of ``unit`` in one store call (see :meth:`_write_points`)."""
        items, bodies = unit.items, unit.bodies
        count = 0
        if self._encodes:
            parts = []
            rest: list[Point] = []  # points of the batches too small to be encoded on arrival
            for i in indexes:
                o = items[i][1]
                assert type(o) is Accepted
                count += len(o.points)
                body = bodies.get(i)
                if body is not None:
                    parts.append(body)
                else:
                    rest.extend(o.points)
            if rest:
                parts.append(self._store.encode_points(rest))  # StoreRejected: the caller splits the unit
            self._write_points(b"".join(parts), count)
            return
        points: list[Point] = []
        for i in indexes:
            o = items[i][1]
            assert type(o) is Accepted
            points.extend(o.points)
        self._write_points(points, len(points))

    def _retrying(self, what: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` until it succeeds, retrying every retryable failure of the store with backoff;
        a StoreError that is not retryable is raised."""
        backoff = Backoff(self._s.retry_initial_s, self._s.retry_max_s)
        while True:
            try:
                if not self._schema_ready:
                    self._store.init_schema()
                    self._schema_ready = True
                fn()
                self.store_ok = True
                self._health.ok("tsdb")
                return
            except StoreError as exc:
                if not exc.retryable:
                    raise
                err: Exception = exc
            except Exception as exc:  # connection errors of any kind: retry
                err = exc
            self.store_ok = False
            self._health.failed("tsdb", err)
            self._m.write_failures.labels("tsdb").inc()
            if self._stop.is_set() and time.monotonic() > self._drain_deadline:
                raise _Abandoned
            self._flush_receipts(force=True)  # what earlier writes stored is receipted meanwhile
            delay = backoff.next()
            log.warning("time-series %s failed, retrying in %.2fs: %s", what, delay, err)
            time.sleep(delay)

    def _write_points(self, points: list[Point] | bytes, count: int) -> None:
        """Store ``points`` (or their store-encoded body), retrying every retryable failure."""

        def write() -> None:
            t0 = time.perf_counter()
            if isinstance(points, bytes):
                self._store.write_encoded(points)
            elif points:
                self._store.write(points)
            self._m.write_latency.observe(time.perf_counter() - t0)
            self._m.batch_points.observe(count)

        self._retrying(f"write of {count} points", write)

    def _write_unit(self, unit: Unit) -> None:
        decisions, known = self._decide(unit)
        new = [i for i, d in decisions.items() if d == "new" and type(unit.items[i][1]) is Accepted]
        self._retrying("lookup of stored keys", lambda: self._check_stored_keys(unit, new))
        try:
            self._write_items(unit, new)
        except StoreError as exc:  # the store refuses some point for good: find which message, write the rest
            log.warning("store refused a write (%s); writing message by message", exc)
            for i in new:
                o = unit.items[i][1]
                assert type(o) is Accepted
                try:
                    self._write_items(unit, [i])
                except StoreError as exc2:
                    unit.items[i] = (unit.items[i][0], _store_rejected(o, exc2))
        for i in new:
            o = unit.items[i][1]
            if type(o) is Accepted and o.points and o.max_ts > self._hw.get(o.device_id, -1):
                self._hw[o.device_id] = o.max_ts
        self._finish(unit, decisions, known)

    # ---- after the write: dead letters, ledger rows, receipts, acks ---------------------------
    def _finish(self, unit: Unit, decisions: dict[int, str], known: dict[tuple[str, int], Known]) -> None:
        now = datetime.now(UTC)
        stored_msgs = stored_readings = 0
        accepted: list[Accepted] = []
        rows: list[LedgerRow] = []
        tied: list[tuple[str, Entry]] = []  # receipt entries sent once ``rows`` are durable
        m_rej = self._m.rejected
        fresh: dict[tuple[str, int], Entry] = {}  # entries of this unit's new rows: copies later in it get the same
        for i, (msg, o) in enumerate(unit.items):
            d = decisions.get(i)
            if type(o) is Accepted:
                if d == "replayed":
                    self._reject(msg, _replayed(o.device_id, o.batch.seq, o.sha256), now)
                    continue
                if d == "duplicate":
                    self._m.duplicates.inc()
                    self._answer_again(o.device_id, o.batch.seq, known, fresh, tied)
                    continue
                if not o.points:
                    self._m.batches_rejected.labels(o.problems[0].reason if o.problems else STORE_REJECTED).inc()
                for p in o.problems:
                    m_rej.labels(p.reason).inc()
                    self._dead_letter(
                        DeadLetter(
                            o.device_id, msg.topic, p.reason, p.detail, o.batch.seq, p.index, now, o.sha256, None
                        )
                    )
                rejections = _rejections_json(o.problems)
                reason = None if o.points else (o.problems[0].reason if o.problems else STORE_REJECTED)
                row = LedgerRow(
                    o.device_id,
                    o.batch.seq,
                    o.batch.batch_id,
                    o.sha256,
                    len(o.points),
                    len(o.problems),
                    now,
                    o.key_id,
                    reason,
                    rejections,
                )
                self._ledger.remember(o.device_id, o.batch.seq, row.known)
                rows.append(row)
                entry = fresh[(o.device_id, o.batch.seq)] = _entry(o.batch.seq, reason, rejections)
                tied.append((o.device_id, entry))
                stored_readings += len(o.points)
                if o.points:
                    stored_msgs += 1
                    accepted.append(o)
                continue
            assert type(o) is Rejected
            if d == "duplicate":  # a resend of a batch already finally rejected: answered as before
                self._m.duplicates.inc()
                assert o.device_id is not None and o.seq is not None
                self._answer_again(o.device_id, o.seq, known, fresh, tied)
                continue
            if d == "replayed":
                assert o.device_id is not None and o.seq is not None
                o = _replayed(o.device_id, o.seq, o.sha256)
            self._reject(msg, o, now)
            if d == "new":  # a verified batch finally rejected: its seq is used up
                assert o.device_id is not None and o.seq is not None
                row = LedgerRow(o.device_id, o.seq, "", o.sha256, 0, o.readings, now, o.key_id, o.reason)
                self._ledger.remember(o.device_id, o.seq, row.known)
                rows.append(row)
                entry = fresh[(o.device_id, o.seq)] = ("rejected", o.seq, o.reason, None)
                tied.append((o.device_id, entry))
        # The points are durable: record the replay state, then receipt, then acknowledge.
        self._unacked.extend(msg for msg, _ in unit.items)
        self._m.messages_stored.inc(stored_msgs)
        self._m.readings_stored.inc(stored_readings)
        self._effects.accepted(accepted, now)
        if rows:
            self._record(rows, tied)
        self.units_written += 1
        self._flush_receipts(force=len(self._unacked) >= self._ack_threshold)

    def _answer_again(
        self,
        device_id: str,
        seq: int,
        known: dict[tuple[str, int], Known],
        fresh: dict[tuple[str, int], Entry],
        tied: list[tuple[str, Entry]],
    ) -> None:
        """Receipt a resent batch as it was receipted the first time: with the entry of its first copy
        when that is in this unit (sent when its row is written), not at all while its row is held (the
        held receipt names it), else from what the ledger knows."""
        key = (device_id, seq)
        entry = fresh.get(key)
        if entry is not None:
            tied.append((device_id, entry))
            return
        if key in self._held_keys:
            return
        k = known.get(key)
        reason, rejections = (k[2], k[3]) if k is not None else (None, None)
        self._add_entry(device_id, _entry(seq, reason, rejections))

    def _add_entry(self, device_id: str, entry: Entry) -> None:
        self._receipts.setdefault(device_id, []).append(entry)

    def _reject(self, msg: Inbound, o: Rejected, now: datetime) -> None:
        """Dead-letter and count a rejected message, and tell the device what the disposition says:
        a retry always (when a seq can be read), a final rejection only when the signature verified
        (by seq, or by the message's SHA-256 when no seq can be read). A final rejection that uses up
        the seq is told by :meth:`_finish` once its ledger row is written."""
        rule = disposition(o.reason)
        self._m.rejected.labels(o.reason).inc()
        self._m.batches_rejected.labels(o.reason).inc()
        self._dead_letter(
            DeadLetter(
                o.device_id,
                msg.topic,
                o.reason,
                o.detail,
                o.seq if o.verified else None,  # an unverified seq is only a claim
                None,
                now,
                o.sha256,
                msg.payload if rule.keep_payload else None,
            )
        )
        if o.device_id is not None:
            if rule.receipt == RETRY:
                if o.seq is not None:
                    self._add_entry(o.device_id, ("retry", o.seq, o.reason, o.after_ms))
            elif o.verified:
                if o.seq is None:
                    self._add_entry(o.device_id, ("unread", o.sha256, o.reason))
                elif not rule.records_seq:
                    self._add_entry(o.device_id, ("rejected", o.seq, o.reason, None))
        log.log(
            logging.DEBUG if rule.quiet else logging.INFO,
            "rejected message: %s",
            o.reason,
            extra={"device_id": o.device_id, "seq": o.seq, "reason": o.reason, "topic": msg.topic[:200]},
        )

    def _dead_letter(self, letter: DeadLetter) -> None:
        if not self._dead.put(letter):
            self._m.deadletters_dropped.inc()

    # ---- ledger rows before receipts -------------------------------------------------------------
    def _db_alive(self) -> bool:
        return db_alive(self._ledger.engine)

    def _record(self, rows: list[LedgerRow], tied: list[tuple[str, Entry]]) -> None:
        """Write ``rows`` and release their receipt entries; while the DB is down, hold both."""
        if self._held:  # keep the order: older held rows first; retried when due (a DB that is away
            self._hold(rows, tied)  # may take a connect timeout per attempt: never once per unit)
            self._retry_held(force=False)
            return
        if self._write_rows(rows):
            for device_id, entry in tied:
                self._add_entry(device_id, entry)
        else:
            self._hold(rows, tied)
            self._held_retry_at = time.monotonic() + self._held_backoff.next()

    def _write_rows(self, rows: list[LedgerRow]) -> bool:
        """Record ``rows``; False when the DB is down (nothing lost: the caller holds them). A row the
        DB refuses for good is dead-lettered on its own (its receipt still goes: its seq is known in
        this replica's memory, and holding it would make the device resend forever)."""
        try:
            refused, pending = write_isolating(rows, self._ledger.record, self._db_alive)
        except Exception as exc:
            self._health.failed("ledger", exc)
            self._m.write_failures.labels("ledger").inc()
            log.warning("ledger rows not written, receipts held: %s", exc)
            return False
        now = datetime.now(UTC)
        for row, exc in refused:
            self._m.sink_rows_refused.labels("ledger").inc()
            log.error(
                "ledger row refused by the DB: %s",
                str(exc).splitlines()[0][:300],
                extra={"device_id": row.device_id, "seq": row.seq},
            )
            self._dead_letter(
                DeadLetter(
                    row.device_id,
                    self._topics.telemetry(row.device_id),
                    "ledger_refused",
                    str(exc).splitlines()[0][:500],
                    None,
                    None,
                    now,
                    row.sha256,
                    None,
                )
            )
        if pending:  # the DB went away part way: the rest waits (re-writing a row is harmless)
            self._health.failed("ledger", "metadata DB stopped answering")
            return False
        self._health.ok("ledger")
        return True

    def _hold(self, rows: list[LedgerRow], tied: list[tuple[str, Entry]]) -> None:
        self._held.append((rows, tied))
        self._held_keys.update((r.device_id, r.seq) for r in rows)
        self._held_entries += len(tied)
        while self._held_entries > self._s.receipts_held_max and len(self._held) > 1:
            old_rows, old_tied = self._held.pop(0)
            self._held_entries -= len(old_tied)
            self._m.ledger_rows_dropped.inc(len(old_rows))
            keys = [(r.device_id, r.seq) for r in old_rows]
            self._held_keys.difference_update(keys)
            self._ledger.forget(keys)  # a resend is stored again (idempotent) and recorded then
            log.warning("dropped %d held ledger rows and their receipts: the devices resend", len(old_rows))
        self._m.receipts_held.set(self._held_entries)

    def _retry_held(self, *, force: bool) -> None:
        """Write the held ledger rows (when due, or ``force``) and release their receipts."""
        if not self._held or (not force and time.monotonic() < self._held_retry_at):
            return
        rows = [r for group, _ in self._held for r in group]
        if not self._write_rows(rows):
            self._held_retry_at = time.monotonic() + self._held_backoff.next()
            return
        self._held_backoff.reset()
        for _, tied in self._held:
            for device_id, entry in tied:
                self._add_entry(device_id, entry)
        self._held, self._held_entries = [], 0
        self._held_keys.clear()
        self._m.receipts_held.set(0)

    # ---- receipts and acks ---------------------------------------------------------------------
    def _flush_receipts(self, *, force: bool) -> None:
        """Publish the pending receipts (one per device, naming every batch answered since its last
        one), then PUBACK the written messages in arrival order. At most every ``receipt_interval_s``
        unless ``force``: fewer publishes under load, never before the write. Receipts go first: a
        replica killed between the two leaves the messages unacknowledged, so they are redelivered,
        found stored, and receipted again; the other order could lose a receipt for good."""
        now = time.monotonic()
        if not self._unacked and not self._receipts:
            return
        if not force and now - self._receipts_at < self._s.receipt_interval_s:
            return
        receipts, self._receipts = self._receipts, {}
        unacked, self._unacked = self._unacked, []
        self._receipts_at = now
        if receipts:
            topic = self._topics.receipts
            try:
                sent = self._publish([(topic(d), encode(_receipt(entries))) for d, entries in receipts.items()])
                self._m.receipts.inc(sent)
            except Exception as exc:  # receipts are advisory: the device resends and we ack again
                log.warning("%d receipts not sent: %s", len(receipts), exc)
        self._ack([msg for msg in unacked if msg.epoch >= 0])
        self._done(len(unacked))


class _Abandoned(Exception):
    """Stopping while a write still fails: the unit is left unacknowledged."""


def _pair(k: Known | None) -> tuple[str, str | None] | None:
    return None if k is None else (k[0], k[1])


def _same_fields(a: Any, b: Any) -> bool:
    """The same field names and values (stores hand floats back; an integer value equals its float)."""
    if a.keys() != b.keys():
        return False
    return all(float(a[k]) == float(b[k]) for k in a)


def _store_rejected(o: Accepted, exc: Exception) -> Rejected:
    return Rejected(
        o.device_id,
        STORE_REJECTED,
        str(exc),
        o.sha256,
        o.batch.seq,
        verified=True,
        readings=o.readings,
        key_id=o.key_id,
    )


def _retry_rejection(msg: Inbound, device_id: str, reason: str, detail: str, after_ms: int) -> Rejected:
    """A message refused for now, not for what it holds (throttled, registry unreadable): receipted as a
    retry by the seq its unverified payload claims, with when to resend (a retry deletes nothing)."""
    return Rejected(
        device_id, reason, detail, payload_hash(msg.payload), _peek_token_seq(msg.payload), after_ms=after_ms
    )


def _replayed(device_id: str, seq: int, sha256: str) -> Rejected:
    return Rejected(device_id, REPLAYED_SEQ, f"seq {seq} is stored with another payload", sha256, seq, verified=True)


def _rejections_json(problems: tuple[ReadingProblem, ...]) -> str | None:
    if not problems:
        return None
    return orjson.dumps([[p.index, p.reason] for p in problems]).decode()


def _entry(seq: int, reason: str | None, rejections: str | None) -> Entry:
    """The receipt entry of a batch the ledger holds: stored (with its rejected readings), or finally
    rejected."""
    return ("stored", seq, rejections) if reason is None else ("rejected", seq, reason, rejections)


def _receipt(entries: list[Entry]) -> Receipt:
    stored: list[int] = []
    rejected: list[Rejection] = []
    readings: list[ReadingOutcome] = []
    retry: list[Retry] = []
    unread: list[Unread] = []
    for e in entries:
        kind = e[0]
        if kind == "stored":
            stored.append(e[1])
            rejections = e[2]
        elif kind == "rejected":
            rejected.append(Rejection(e[1], e[2]))
            rejections = e[3]
        elif kind == "retry":
            retry.append(Retry(e[1], e[2], e[3]))
            continue
        else:
            unread.append(Unread(e[1], e[2]))
            continue
        if rejections:
            readings.append(ReadingOutcome(e[1], tuple(ReadingRejection(i, r) for i, r in orjson.loads(rejections))))
    return Receipt(tuple(stored), tuple(rejected), tuple(readings), tuple(retry), tuple(unread))


def _peek_token_seq(token: bytes) -> int | None:
    """The seq an unverified telemetry message claims (for a retry receipt), or None."""
    parts = token.split(b".")
    if len(parts) != 3 or len(token) > jws.MAX_TOKEN_BYTES:
        return None
    try:
        payload = jws.b64url_decode(parts[1])
    except ProtocolError:
        return None
    return peek_seq(payload)[0]
