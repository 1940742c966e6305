"""From received messages to durable points and acknowledgements.

Two threads:

* the **processor** drains the inbox, runs each message through :func:`pipeline.process` and groups
  the outcomes into *units* closed by size (points, messages) or age;
* the **writer** takes one unit at a time: decides duplicates/replays against the ledger, writes the
  new points to the time-series store in one call (retrying every failure with backoff, the messages
  staying unacknowledged), then acknowledges the unit's messages in arrival order, publishes one
  cumulative receipt per device, and hands dead letters and side effects on.

The unit queue is bounded by ``max_backlog`` messages: when the store is down, the processor stops
taking messages, nothing is acknowledged, and the broker stops sending at Receive Maximum.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cloud_core.tsdb.base import Point, StoreError, TimeSeriesStore
from iot_protocol import Receipt, Rejection, Topics, encode

from .deadletter import DeadLetter, DeadLetterQueue
from .effects import SideEffects
from .errors import DirectoryUnavailable
from .ledger import Ledger, LedgerRow
from .metrics import Metrics
from .mqtt import Inbound
from .pipeline import REPLAYED_SEQ, Accepted, DeviceKey, Rejected, process, replay_decision
from .settings import BridgeSettings

__all__ = ["Backoff", "Ingest", "Unit"]

log = logging.getLogger(__name__)


class Backoff:
    """Exponential backoff with full jitter between ``initial`` and ``cap`` seconds."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial, self.cap, self.attempt = initial, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.initial * (2**self.attempt))
        self.attempt += 1
        return delay * (0.5 + random.random() / 2)

    def reset(self) -> None:
        self.attempt = 0


@dataclass(slots=True)
class Unit:
    """Messages processed together: one store write, then their acks in arrival order."""

    items: list[tuple[Inbound, Accepted | Rejected]] = field(default_factory=list)
    points: int = 0
    opened: float = field(default_factory=time.monotonic)


class Ingest:
    """The processor and writer threads around an inbox filled by the MQTT network thread."""

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
        ack: Callable[[Inbound], bool],
        publish: Callable[[str, bytes], None],
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
        self._inbox: queue.SimpleQueue[Inbound] = queue.SimpleQueue()
        units = max(1, settings.max_backlog // settings.batch_max_messages)
        self._units: queue.Queue[Unit | None] = queue.Queue(maxsize=units)
        self._stop = threading.Event()
        self._drain_deadline = float("inf")
        self._pending = 0  # received, not yet acknowledged (or given up on)
        self._pending_lock = threading.Lock()
        self._schema_ready = False
        self.store_ok = True
        self.units_written = 0
        self._threads = [
            threading.Thread(target=self._process_loop, name="bridge-processor", daemon=True),
            threading.Thread(target=self._write_loop, name="bridge-writer", daemon=True),
        ]

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, drain_s: float = 5.0) -> None:
        """Finish what is in hand for up to ``drain_s`` (written and acked), then stop. What is
        left is not acknowledged; the broker redelivers it to this session or another replica."""
        self._drain_deadline = time.monotonic() + drain_s
        self._stop.set()
        for t in self._threads:
            t.join(drain_s + 5)

    def submit(self, msg: Inbound) -> None:
        """Called by the MQTT network thread for every telemetry message."""
        with self._pending_lock:
            self._pending += 1
        self._inbox.put(msg)

    @property
    def backlog(self) -> int:
        return self._pending

    def _done(self, n: int) -> None:
        with self._pending_lock:
            self._pending -= n
            self._m.backlog.set(self._pending)

    # ---- processor -----------------------------------------------------------------------------
    def _lookup_retrying(self, device_id: str) -> DeviceKey | None:
        backoff = Backoff(self._s.retry_initial_s, self._s.retry_max_s)
        while True:
            try:
                return self._lookup(device_id)
            except DirectoryUnavailable as exc:
                if self._stop.is_set():
                    raise
                delay = backoff.next()
                log.warning("registry unavailable, retrying in %.1fs: %s", delay, exc,
                            extra={"device_id": device_id})
                time.sleep(delay)

    def _process_loop(self) -> None:
        s = self._s
        skew_ms = int(s.max_clock_skew_s * 1000)
        unit = Unit()
        m_recv, m_readings = self._m.messages_received, self._m.readings_received
        while True:
            if self._stop.is_set():
                if unit.items:
                    self._units.put(unit)
                self._units.put(None)
                return
            timeout = s.batch_max_delay_s if not unit.items else max(0.0, unit.opened + s.batch_max_delay_s -
                                                                      time.monotonic())
            try:
                msg = self._inbox.get(timeout=timeout)
            except queue.Empty:
                msg = None
            if msg is not None:
                if not unit.items:
                    unit.opened = time.monotonic()
                try:
                    outcome = process(msg.topic, msg.payload, topics=self._topics, lookup=self._lookup_retrying,
                                      now_ms=int(msg.received * 1000), max_skew_ms=skew_ms)
                except DirectoryUnavailable:
                    continue  # stopping while the registry is down: left unacknowledged
                m_recv.inc()
                if type(outcome) is Accepted:
                    m_readings.inc(len(outcome.batch.readings))
                    unit.points += len(outcome.points)
                unit.items.append((msg, outcome))
            if unit.items and (
                unit.points >= s.batch_max_points
                or len(unit.items) >= s.batch_max_messages
                or time.monotonic() - unit.opened >= s.batch_max_delay_s
            ):
                self._hand_over(unit)
                unit = Unit()

    def _hand_over(self, unit: Unit) -> None:
        while True:
            try:
                self._units.put(unit, timeout=0.2)
                return
            except queue.Full:
                if self._stop.is_set() and time.monotonic() > self._drain_deadline:
                    return  # abandoned: not acknowledged, redelivered later

    # ---- writer --------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            try:
                unit = self._units.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set() and time.monotonic() > self._drain_deadline:
                    return
                continue
            if unit is None:
                return
            try:
                self._write_unit(unit)
            except _Abandoned:
                return
            except Exception:  # a bug: keep running, messages stay unacknowledged and are redelivered
                log.exception("unexpected error writing a unit; its messages stay unacknowledged")
                self._done(len(unit.items))

    def _decide(self, unit: Unit) -> tuple[list[Point], dict[int, str]]:
        """Points to write, and per item index the decision ``new``/``duplicate``/``replayed``."""
        pairs = [(o.device_id, o.batch.seq) for _, o in unit.items if type(o) is Accepted]
        try:
            known = self._ledger.known(pairs) if pairs else {}
        except Exception as exc:  # DB down: decide on what memory knows; storage is idempotent anyway
            log.warning("ledger lookup failed, deciding from memory: %s", exc)
            self._m.write_failures.labels("ledger_lookup").inc()
            known = self._ledger.known_in_memory(pairs)
        decisions: dict[int, str] = {}
        points: list[Point] = []
        for i, (_, o) in enumerate(unit.items):
            if type(o) is not Accepted:
                continue
            key = (o.device_id, o.batch.seq)
            d = replay_decision(o.sha256, known.get(key))
            decisions[i] = d
            if d == "new":
                known[key] = o.sha256
                points.extend(o.points)
        return points, decisions

    def _write_points(self, points: list[Point]) -> None:
        backoff = Backoff(self._s.retry_initial_s, self._s.retry_max_s)
        while True:
            t0 = time.perf_counter()
            try:
                if not self._schema_ready:
                    self._store.init_schema()
                    self._schema_ready = True
                if points:
                    self._store.write(points)
                self._m.write_latency.observe(time.perf_counter() - t0)
                self._m.batch_points.observe(len(points))
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
            delay = backoff.next()
            log.warning("time-series write of %d points failed, retrying in %.2fs: %s", len(points), delay, err)
            time.sleep(delay)

    def _write_unit(self, unit: Unit) -> None:
        points, decisions = self._decide(unit)
        rejected_by_store: set[int] = set()
        try:
            self._write_points(points)
        except StoreError as exc:  # the store refuses some point for good: find which message, write the rest
            log.warning("store refused a write (%s); writing message by message", exc)
            for i, (_, o) in enumerate(unit.items):
                if decisions.get(i) != "new":
                    continue
                assert type(o) is Accepted
                try:
                    self._write_points(list(o.points))
                except StoreError as exc2:
                    rejected_by_store.add(i)
                    unit.items[i] = (unit.items[i][0], Rejected(o.device_id, "store_rejected", str(exc2), o.sha256,
                                                                o.batch.seq))
        self._finish(unit, decisions, rejected_by_store)

    def _finish(self, unit: Unit, decisions: dict[int, str], store_rejected: set[int]) -> None:
        now = datetime.now(UTC)
        receipts: dict[str, tuple[list[int], list[Rejection]]] = {}
        stored_msgs = stored_readings = 0
        accepted: list[Accepted] = []
        ledger_rows: list[LedgerRow] = []
        m_rej = self._m.rejected
        for i, (msg, o) in enumerate(unit.items):
            if type(o) is Accepted:
                d = decisions[i]
                if d == "replayed":
                    o2 = Rejected(o.device_id, REPLAYED_SEQ, f"seq {o.batch.seq} is stored with another payload",
                                  o.sha256, o.batch.seq)
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
                    self._dead_letter(DeadLetter(o.device_id, msg.topic, p.reason, p.detail, o.batch.seq, p.index,
                                                 now, o.sha256, None))
                self._ledger.remember(o.device_id, o.batch.seq, o.sha256)
                ledger_rows.append(LedgerRow(o.device_id, o.batch.seq, o.batch.batch_id, o.sha256, len(o.points),
                                             len(o.problems), now))
                stored_msgs += 1
                stored_readings += len(o.points)
                if o.points:
                    accepted.append(o)
            else:
                assert type(o) is Rejected
                self._reject(msg, o, now, receipts)
        # Acknowledge in arrival order, only now that the points are durable.
        for msg, _ in unit.items:
            if msg.epoch >= 0:
                self._ack(msg)
        for device_id, (stored, rejected) in receipts.items():
            try:
                self._publish(self._topics.receipts(device_id), encode(Receipt(tuple(stored), tuple(rejected))))
                self._m.receipts.inc()
            except Exception as exc:  # receipts are advisory: the device resends and we ack again
                log.warning("receipt to %s not sent: %s", device_id, exc, extra={"device_id": device_id})
        self._m.messages_stored.inc(stored_msgs)
        self._m.readings_stored.inc(stored_readings)
        self._effects.accepted(accepted, ledger_rows, now)
        self.units_written += 1
        self._done(len(unit.items))

    def _reject(self, msg: Inbound, o: Rejected, now: datetime,
                receipts: dict[str, tuple[list[int], list[Rejection]]]) -> None:
        self._m.rejected.labels(o.reason).inc()
        self._dead_letter(DeadLetter(o.device_id, msg.topic, o.reason, o.detail, o.seq, None, now, o.sha256,
                                     msg.payload))
        if o.seq is not None and o.device_id is not None:
            receipts.setdefault(o.device_id, ([], []))[1].append(Rejection(o.seq, o.reason))
        log.info("rejected message: %s", o.reason,
                 extra={"device_id": o.device_id, "seq": o.seq, "reason": o.reason, "topic": msg.topic[:200]})

    def _dead_letter(self, letter: DeadLetter) -> None:
        if not self._dead.put(letter):
            self._m.deadletters_dropped.inc()


class _Abandoned(Exception):
    """Stopping while a write still fails: the unit is left unacknowledged."""
