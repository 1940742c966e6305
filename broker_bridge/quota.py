"""Class quotas in the bridge: readings per second per device and per class, and telemetry bytes
stored per class (:mod:`cloud_core.auth.quotas` says which device has which). A message over a quota
is rejected ``quota_exceeded`` exactly like ``rate_limited``: acknowledged, counted, dead-lettered,
not receipted (an honest device resends it later).

Rates are token buckets in the cache (Redis: shared by every replica; ``memory://`` in ``iotctl
up``), one per device and one per class, counting **readings**. Asking the cache for every message
would put a round trip on the network thread, so each replica leases tokens: up to ``rate x
lease_s`` at a time, spent locally, unused ones forgotten when the lease ends. A message is let in
while its buckets' local balance is positive and its readings are charged after it is decoded, so
a balance may go negative by one message; that debt is paid from the next lease. Over any span the
readings let in stay within what the shared bucket gave out, plus one message per replica and bucket.

Stored bytes are the sizes of the telemetry payloads let in, added to the class's row in
``class_usage`` by every replica every ``refresh_s`` (one atomic UPDATE per class); a class at or
over its limit is refused until an admin raises it. The check reads the database's total (as of the
last refresh) plus what this replica let in since, so replicas may overshoot by one refresh's worth.

When the cache cannot be reached, quotas let messages through (ingest matters more than quotas)
and say so in the log; after a failure the cache is not asked again for ``lease_s`` (a cache that
hangs rather than refuses would otherwise cost its socket timeout per message, on the MQTT network
thread, stalling every device).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud_core.auth.quotas import DeviceQuota, add_stored_bytes, load_device_quotas
from cloud_core.cache import Cache, CacheError

__all__ = ["QuotaGate"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Lease:
    balance: float
    until: float


class QuotaGate:
    """Per-message quota checks. ``check`` and ``charge`` may be called from any thread.

    Args:
        engine: the metadata database (quotas in, stored bytes out).
        cache: where the shared token buckets live.
        refresh_s: how often the quota view is re-read and stored bytes written.
        lease_s: how many seconds of a bucket's rate one lease takes at most.
        burst_s: bucket size in seconds of its rate (at least one reading).
    """

    def __init__(self, engine: Engine, cache: Cache, *, refresh_s: float, lease_s: float, burst_s: float) -> None:
        self._engine = engine
        self._cache = cache
        self._refresh_s = refresh_s
        self._lease_s = lease_s
        self._burst_s = burst_s
        self._lock = threading.Lock()
        self._quotas: dict[str, DeviceQuota] = {}
        self._stored: dict[int, int] = {}
        self._pending: dict[int, int] = {}  # class -> bytes let in here, not yet written
        self._leases: dict[str, _Lease] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bridge-quotas", daemon=True)
        self._cache_down_logged = 0.0
        self._cache_down_until = 0.0  # after a cache failure: let messages through without asking it

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self._refresh_s):
            self.flush()
            self.refresh()

    def refresh(self) -> bool:
        """Re-read who has which quota and what each class stored; False when the DB is down."""
        try:
            with Session(self._engine) as session:
                quotas, stored = load_device_quotas(session)
        except Exception as exc:  # keep enforcing the last view
            log.warning("quota view not refreshed: %s", exc)
            return False
        with self._lock:
            self._quotas, self._stored = quotas, stored
        return True

    def flush(self) -> None:
        """Write the bytes let in since the last flush to ``class_usage``."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            with Session(self._engine) as session:
                add_stored_bytes(session, pending)
                session.commit()
        except Exception as exc:  # the DB is down: keep them for the next flush
            log.warning("stored bytes not written: %s", exc)
            with self._lock:
                for class_id, n in pending.items():
                    self._pending[class_id] = self._pending.get(class_id, 0) + n
            return
        with self._lock:
            for class_id, n in pending.items():
                self._stored[class_id] = self._stored.get(class_id, 0) + n

    # ---- per message -----------------------------------------------------------------------------
    def check(self, device_id: str, payload_bytes: int) -> str | None:
        """None when the device's message may go on (its bytes are then counted), else why not.
        :meth:`retry_after_s` says when to try again."""
        q = self._quotas.get(device_id)
        if q is None:
            return None
        with self._lock:
            if q.class_bytes_limit is not None:
                used = self._stored.get(q.class_id, 0) + self._pending.get(q.class_id, 0)
                if used >= q.class_bytes_limit:
                    return f"class {q.class_id} stored {used} bytes of its {q.class_bytes_limit}-byte quota"
            now = time.monotonic()
            if q.device_rate is not None and not self._admit(f"edu:quota:device:{device_id}", q.device_rate, now):
                return f"device over {q.device_rate:g} readings/s"
            if q.class_rate is not None and not self._admit(f"edu:quota:class:{q.class_id}", q.class_rate, now):
                return f"class {q.class_id} over {q.class_rate:g} readings/s"
            self._pending[q.class_id] = self._pending.get(q.class_id, 0) + payload_bytes
        return None

    def retry_after_s(self, why: str) -> float:
        """When a device refused for ``why`` (from :meth:`check`) should resend: a full byte quota frees
        only when a teacher raises it (look again in a minute), a rate after about a second."""
        return 60.0 if "-byte quota" in why else 1.0

    def charge(self, device_id: str, readings: int) -> None:
        """Charge a let-in message's readings to its buckets (after it was decoded)."""
        q = self._quotas.get(device_id)
        if q is None:
            return
        with self._lock:
            now = time.monotonic()
            for key, rate in (
                (f"edu:quota:device:{device_id}", q.device_rate),
                (f"edu:quota:class:{q.class_id}", q.class_rate),
            ):
                if rate is not None:
                    lease = self._leases.setdefault(key, _Lease(0.0, now))
                    lease.balance -= readings

    def _admit(self, key: str, rate: float, now: float) -> bool:
        lease = self._leases.get(key)
        if lease is not None and now < lease.until and lease.balance > 0:
            return True
        balance = 0.0 if lease is None else min(lease.balance, 0.0)  # an ended lease keeps only its debt
        if rate <= 0:
            return False
        if now < self._cache_down_until:
            return True
        want = max(1, math.ceil(rate * self._lease_s)) + math.ceil(-balance)
        burst = max(1.0, rate * self._burst_s, float(want))
        try:
            granted = self._cache.take_tokens(key, rate=rate, burst=burst, want=want)
        except CacheError as exc:
            self._cache_down_until = time.monotonic() + self._lease_s
            if now - self._cache_down_logged > 60:
                self._cache_down_logged = now
                log.error("quota buckets unavailable, letting messages through: %s", exc)
            return True
        self._leases[key] = _Lease(balance + granted, now + self._lease_s)
        return balance + granted > 0
