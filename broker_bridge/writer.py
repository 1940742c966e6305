"""From received messages to durable points and acknowledgements.

The MQTT network thread runs each message through :func:`pipeline.process` as it arrives
(:meth:`Ingest.submit`) and appends the outcome to the open *unit*; a unit closes when it holds
``batch_max_points`` points or ``batch_max_messages`` messages. One **writer** thread takes closed
units, or the open one once its oldest message has waited ``batch_max_delay_s``, so batches grow
with the load: it decides duplicates/replays against the ledger, writes the new points to the
time-series store in one call (retrying every failure with backoff, the messages staying
unacknowledged), then acknowledges the unit's messages in arrival order, publishes one cumulative
receipt per device, and hands dead letters and side effects on.

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
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cloud_core.tsdb.base import Point, StoreError, TimeSeriesStore
from iot_protocol import ProtocolError, Receipt, Rejection, Topics, encode

from .deadletter import DeadLetter, DeadLetterQueue
from .effects import SideEffects
from .errors import DirectoryUnavailable
from .ledger import Ledger, LedgerRow
from .metrics import Metrics
from .mqtt import Inbound
from .pipeline import (
    QUOTA_EXCEEDED,
    RATE_LIMITED,
    REPLAYED_SEQ,
    THROTTLED,
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

__all__ = ["Backoff", "Ingest", "Unit"]

_ENCODE_ON_ARRIVAL_MIN = 8  # points; smaller batches are encoded by the writer, many at once

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
    """Messages written together: one store write, then their acks in arrival order. An outcome of
    None means the registry could not be read yet; the writer processes it again before writing."""

    items: list[tuple[Inbound, Accepted | Rejected | None]] = field(default_factory=list)
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
        ack: Callable[[list[Inbound]], int],
        publish: Callable[[list[tuple[str, bytes]]], int],
        quota: QuotaGate | None = None,
    ) -> None:
        self._s = settings
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
        self._receipts: dict[str, tuple[list[int], list[Rejection]]] = {}
        self._receipts_at = 0.0
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
        outcome: Accepted | Rejected | None
        limited = self._rate_limited(msg)
        if limited is not None:
            outcome = limited
        else:
            try:
                outcome = self._process(msg)
            except DirectoryUnavailable:
                outcome = None
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

    def _admitted(self, o: Accepted | Rejected | None) -> tuple[Accepted | Rejected | None, bytes | None, int]:
        """An outcome ready for its unit: its readings counted, and for an accepted batch its points in
        the store's wire format (None when the store takes points, or the batch is small: the writer
        encodes those in bulk) and how many; a point the store could never hold makes the batch
        ``store_rejected``."""
        if type(o) is not Accepted:
            return o, None, 0
        self._m.readings_received.inc(len(o.batch.readings))
        if self._quota is not None:
            self._quota.charge(o.device_id, len(o.batch.readings))
        if not self._encodes or len(o.points) < _ENCODE_ON_ARRIVAL_MIN:
            return o, None, len(o.points)
        try:
            return o, self._store.encode_points(o.points), len(o.points)
        except StoreError as exc:
            return Rejected(o.device_id, "store_rejected", str(exc), o.sha256, o.batch.seq), None, 0

    def _rate_limited(self, msg: Inbound) -> Rejected | None:
        """A ``rate_limited`` rejection when the topic's device is over its message rate, else None.

        Checked before verification, on every message naming the device (verified or not): refusing
        costs nothing, and a flood from someone with broker access but not the key is throttled too.
        With ``seq`` unset the rejection is not receipted (the honest sender resends later), and it is
        acknowledged with its unit, so it never holds the session.

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
            reason, detail = RATE_LIMITED, f"over {s.rate_limit_msgs_per_s:g} msg/s (burst {s.rate_limit_burst})"
        elif self._quota is not None and (why := self._quota.check(device_id, len(msg.payload))) is not None:
            reason, detail = QUOTA_EXCEEDED, why
        else:
            return None
        return Rejected(device_id, reason, detail, payload_hash(msg.payload))

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
                    self._flush_receipts(force=True)
                    return None
                else:
                    wait = 0.5
                if self._receipts or self._unacked:
                    wait = min(wait, max(0.0, self._receipts_at + self._s.receipt_interval_s - time.monotonic()))
                self._cond.wait(wait)
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
                self._resolve_deferred(unit)
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

    def _resolve_deferred(self, unit: Unit) -> None:
        """Process again the messages whose device the registry could not tell (DB down)."""
        for i, (msg, outcome) in enumerate(unit.items):
            if outcome is not None:
                continue
            backoff = Backoff(self._s.retry_initial_s, self._s.retry_max_s)
            while True:
                try:
                    o = self._process(msg)
                    break
                except DirectoryUnavailable as exc:
                    if self._stop.is_set() and time.monotonic() > self._drain_deadline:
                        raise _Abandoned from None
                    delay = backoff.next()
                    log.warning(
                        "registry unavailable, retrying in %.1fs: %s", delay, exc, extra={"device_id": exc.device_id}
                    )
                    time.sleep(delay)
            admitted, body, npoints = self._admitted(o)
            if body is not None:
                unit.bodies[i] = body
            unit.points += npoints
            unit.items[i] = (msg, admitted)

    def _decide(self, unit: Unit) -> tuple[list[int], dict[int, str]]:
        """The indexes of the items to write, and per item index the decision
        ``new``/``duplicate``/``replayed``."""
        pairs = [(o.device_id, o.batch.seq) for _, o in unit.items if type(o) is Accepted]
        try:
            known = self._ledger.known(pairs) if pairs else {}
        except Exception as exc:  # DB down: decide on what memory knows; storage is idempotent anyway
            log.warning("ledger lookup failed, deciding from memory: %s", exc)
            self._m.write_failures.labels("ledger_lookup").inc()
            known = self._ledger.known_in_memory(pairs)
        decisions: dict[int, str] = {}
        new: list[int] = []
        for i, (_, o) in enumerate(unit.items):
            if type(o) is not Accepted:
                continue
            key = (o.device_id, o.batch.seq)
            d = replay_decision(o.sha256, o.key_id, known.get(key))
            decisions[i] = d
            if d == "new":
                known[key] = (o.sha256, o.key_id)
                new.append(i)
        return new, decisions

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

    def _write_points(self, points: list[Point] | bytes, count: int) -> None:
        """Store ``points`` (or their store-encoded body), retrying every retryable failure."""
        backoff = Backoff(self._s.retry_initial_s, self._s.retry_max_s)
        while True:
            t0 = time.perf_counter()
            try:
                if not self._schema_ready:
                    self._store.init_schema()
                    self._schema_ready = True
                if isinstance(points, bytes):
                    self._store.write_encoded(points)
                elif points:
                    self._store.write(points)
                self._m.write_latency.observe(time.perf_counter() - t0)
                self._m.batch_points.observe(count)
                self.store_ok = True
                return
            except StoreError as exc:
                if not exc.retryable:
                    raise
                err: Exception = exc
            except Exception as exc:  # connection errors of any kind: retry
                err = exc
            self.store_ok = False
            self._m.write_failures.labels("tsdb").inc()
            if self._stop.is_set() and time.monotonic() > self._drain_deadline:
                raise _Abandoned
            self._flush_receipts(force=True)  # what earlier writes stored is receipted meanwhile
            delay = backoff.next()
            log.warning("time-series write of %d points failed, retrying in %.2fs: %s", count, delay, err)
            time.sleep(delay)

    def _write_unit(self, unit: Unit) -> None:
        new, decisions = self._decide(unit)
        rejected_by_store: set[int] = set()
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
                    rejected_by_store.add(i)
                    unit.items[i] = (
                        unit.items[i][0],
                        Rejected(o.device_id, "store_rejected", str(exc2), o.sha256, o.batch.seq),
                    )
        self._finish(unit, decisions, rejected_by_store)

    def _finish(self, unit: Unit, decisions: dict[int, str], store_rejected: set[int]) -> None:
        now = datetime.now(UTC)
        receipts = self._receipts
        stored_msgs = stored_readings = 0
        accepted: list[Accepted] = []
        ledger_rows: list[LedgerRow] = []
        m_rej = self._m.rejected
        for i, (msg, o) in enumerate(unit.items):
            if type(o) is Accepted:
                d = decisions[i]
                if d == "replayed":
                    o2 = Rejected(
                        o.device_id,
                        REPLAYED_SEQ,
                        f"seq {o.batch.seq} is stored with another payload",
                        o.sha256,
                        o.batch.seq,
                    )
                    self._reject(msg, o2, now, receipts)
                    continue
                r = receipts.setdefault(o.device_id, ([], []))
                if not o.points:  # every reading invalid: finally rejected, so the device can drop it
                    r[1].append(Rejection(o.batch.seq, o.problems[0].reason))
                else:
                    r[0].append(o.batch.seq)
                if d == "duplicate":
                    self._m.duplicates.inc()
                    continue
                for p in o.problems:
                    m_rej.labels(p.reason).inc()
                    self._dead_letter(
                        DeadLetter(
                            o.device_id, msg.topic, p.reason, p.detail, o.batch.seq, p.index, now, o.sha256, None
                        )
                    )
                self._ledger.remember(o.device_id, o.batch.seq, o.sha256, o.key_id)
                ledger_rows.append(
                    LedgerRow(
                        o.device_id,
                        o.batch.seq,
                        o.batch.batch_id,
                        o.sha256,
                        len(o.points),
                        len(o.problems),
                        now,
                        o.key_id,
                    )
                )
                stored_msgs += 1
                stored_readings += len(o.points)
                if o.points:
                    accepted.append(o)
            else:
                assert type(o) is Rejected
                self._reject(msg, o, now, receipts)
        # The points are durable: these messages may now be receipted, then acknowledged.
        self._unacked.extend(msg for msg, _ in unit.items)
        self._m.messages_stored.inc(stored_msgs)
        self._m.readings_stored.inc(stored_readings)
        self._effects.accepted(accepted, ledger_rows, now)
        self.units_written += 1
        self._flush_receipts(force=len(self._unacked) >= self._ack_threshold)

    def _flush_receipts(self, *, force: bool) -> None:
        """Publish the pending receipts (one per device, naming every batch written since its last
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
                sent = self._publish(
                    [(topic(d), encode(Receipt(tuple(stored), tuple(rej)))) for d, (stored, rej) in receipts.items()]
                )
                self._m.receipts.inc(sent)
            except Exception as exc:  # receipts are advisory: the device resends and we ack again
                log.warning("%d receipts not sent: %s", len(receipts), exc)
        self._ack([msg for msg in unacked if msg.epoch >= 0])
        self._done(len(unacked))

    def _reject(
        self, msg: Inbound, o: Rejected, now: datetime, receipts: dict[str, tuple[list[int], list[Rejection]]]
    ) -> None:
        self._m.rejected.labels(o.reason).inc()
        limited = o.reason in THROTTLED  # a flood: keep its rows small (hash, no payload), its logs quiet
        self._dead_letter(
            DeadLetter(
                o.device_id, msg.topic, o.reason, o.detail, o.seq, None, now, o.sha256, None if limited else msg.payload
            )
        )
        if o.seq is not None and o.device_id is not None:
            receipts.setdefault(o.device_id, ([], []))[1].append(Rejection(o.seq, o.reason))
        log.log(
            logging.DEBUG if limited else logging.INFO,
            "rejected message: %s",
            o.reason,
            extra={"device_id": o.device_id, "seq": o.seq, "reason": o.reason, "topic": msg.topic[:200]},
        )

    def _dead_letter(self, letter: DeadLetter) -> None:
        if not self._dead.put(letter):
            self._m.deadletters_dropped.inc()


class _Abandoned(Exception):
    """Stopping while a write still fails: the unit is left unacknowledged."""
