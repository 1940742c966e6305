"""The device key directory: which devices exist, their Ed25519 keys, status and location.

Reads the ``devices`` table (cloud_core.models.Device) as one snapshot refreshed every
``key_cache_ttl_s``; a device missing from the snapshot is looked up on its own (it may have been
registered since). :meth:`KeyDirectory.invalidate` (called for each registry event on
``Topics.registry_events()``) drops a device so its next message reads the row again: deactivation
and key rotation take effect at once. While the DB is down the last snapshot keeps serving; a device
it does not know raises :class:`DirectoryUnavailable` and its message is answered with a retry. The
periodic refresh runs on its own short-lived thread, never on the caller's.
"""

from __future__ import annotations

import logging
import threading
import time

import orjson
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from cloud_core.models import Device
from iot_protocol import public_key_from_b64

from .errors import DirectoryUnavailable
from .pipeline import DeviceKey, key_id_of

__all__ = ["KeyDirectory", "parse_registry_event"]

log = logging.getLogger(__name__)


def _key_of(row: Device) -> DeviceKey:
    raw: bytes | None = None
    if row.public_key:
        try:
            raw = public_key_from_b64(row.public_key)
        except (ValueError, Exception):  # a corrupt registry entry: treat as not enrolled
            log.warning("device %s has an unreadable public key", row.id, extra={"device_id": row.id})
    return DeviceKey(
        row.id, raw, row.status == "active", row.location or "unknown", key_id_of(raw) if raw is not None else ""
    )


def parse_registry_event(payload: bytes) -> tuple[str, str] | None:
    """(device_id, event) from a registry-event payload, or None when it is not one."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("device_id"), str):
        return None
    return obj["device_id"], str(obj.get("event", ""))


class KeyDirectory:
    """Thread-safe, TTL-cached view of the registry's device keys."""

    def __init__(self, engine: Engine, *, ttl_s: float, retry_s: float = 1.0) -> None:
        self._engine = engine
        self._retry_s = retry_s
        self._next_try = float("-inf")
        self._refreshing = False
        self._invalidated: dict[str, float] = {}  # device -> when a registry event named it
        self._ttl = ttl_s
        self._lock = threading.Lock()
        self._keys: dict[str, DeviceKey] = {}
        self._missing: set[str] = set()  # looked up individually since the last snapshot: not there
        self._loaded_at = float("-inf")
        self.refreshes = 0

    def _snapshot(self) -> None:
        started = time.monotonic()
        with Session(self._engine) as session:
            rows = session.exec(select(Device)).all()
        keys = {row.id: _key_of(row) for row in rows}
        with self._lock:
            # A registry event that arrived while we read may describe a newer row than we got.
            for device_id, at in self._invalidated.items():
                if at >= started:
                    keys.pop(device_id, None)
            self._invalidated = {d: at for d, at in self._invalidated.items() if at >= started}
            self._keys = keys
            self._missing = set()
            self._loaded_at = time.monotonic()
            self.refreshes += 1

    def _fresh(self) -> bool:
        return time.monotonic() - self._loaded_at < self._ttl

    def refresh(self) -> bool:
        """Reload the snapshot now; False (and the old snapshot kept) when the DB is down."""
        try:
            self._snapshot()
            return True
        except Exception as exc:  # DB down: keep serving what we have, try again a little later
            self._next_try = time.monotonic() + self._retry_s
            log.warning("device directory refresh failed: %s", exc)
            return False

    def _refresh_in_background(self) -> None:
        # Never on the caller's (MQTT network) thread: a slow DB must not stall the connection.
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True
            self._next_try = time.monotonic() + self._retry_s

        def run() -> None:
            try:
                self.refresh()
            finally:
                self._refreshing = False

        threading.Thread(target=run, name="bridge-keys-refresh", daemon=True).start()

    def lookup(self, device_id: str) -> DeviceKey | None:
        """The device's key, None when the registry does not know it. Raises DirectoryUnavailable."""
        if not self._fresh() and time.monotonic() >= self._next_try:
            self._refresh_in_background()
        with self._lock:
            key = self._keys.get(device_id)
            if key is not None:
                return key
            if device_id in self._missing and self._fresh():
                return None
        try:
            with Session(self._engine) as session:
                row = session.get(Device, device_id)
        except Exception as exc:
            raise DirectoryUnavailable(f"registry unreachable: {exc}", device_id=device_id) from None
        with self._lock:
            if row is None:
                self._missing.add(device_id)
                return None
            key = _key_of(row)
            self._keys[device_id] = key
            return key

    def invalidate(self, device_id: str) -> None:
        """Forget ``device_id`` so its next lookup reads the registry (deactivation, rotation)."""
        with self._lock:
            self._keys.pop(device_id, None)
            self._missing.discard(device_id)
            self._invalidated[device_id] = time.monotonic()
