"""The pure ingest pipeline: topic -> authenticate -> verify -> validate -> points. No I/O.

:func:`process` turns one received message into an :class:`Accepted` batch (its points and the
readings that failed validation) or a :class:`Rejected` one, each with a stable reason code.
:func:`replay_decision` is the dedup/replay rule; the caller supplies what the ledger knows.
Only the wire contract's own errors are turned into rejections; anything else escaping is a bug.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cloud_core.tsdb.base import Point
from iot_protocol import Batch, Kind, ProtocolError, ReadingProblem, Topics, check_reading, open_batch
from iot_protocol.validation import FIELD_RANGES, MIN_TS_MS

from .wire import decode_batch_fast

__all__ = [
    "Accepted",
    "DeviceKey",
    "Rejected",
    "checked_points",
    "key_id_of",
    "payload_hash",
    "process",
    "replay_decision",
]

# Stable reason codes for whole-message rejections (reading-level ones come from check_reading).
UNKNOWN_DEVICE = "unknown_device"
INACTIVE_DEVICE = "inactive_device"
REPLAYED_SEQ = "replayed_seq"
NOT_TELEMETRY = "bad_topic"
RATE_LIMITED = "rate_limited"
QUOTA_EXCEEDED = "quota_exceeded"
#: Refused for volume, not content: acknowledged, counted and dead-lettered the same way, never receipted.
THROTTLED = frozenset({RATE_LIMITED, QUOTA_EXCEEDED})


def key_id_of(public_key: bytes) -> str:
    """The id of a signing key: the first 16 hex digits of the SHA-256 of its 32 raw bytes. A seq
    belongs to the key that signed it (a re-enrolled or rotated device starts a new seq epoch)."""
    return hashlib.sha256(public_key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """What the bridge needs from a Device row: its registered key, status and location tag."""

    device_id: str
    public_key: bytes | None
    active: bool
    location: str = "unknown"
    key_id: str = ""  # key_id_of(public_key); computed by process() when left empty


@dataclass(frozen=True, slots=True)
class Accepted:
    """A verified batch: ``points`` to store, ``problems`` for the readings that must be dead-lettered."""

    device_id: str
    batch: Batch
    sha256: str
    points: tuple[Point, ...]
    problems: tuple[ReadingProblem, ...]
    key_id: str = ""  # the verifying key's id: the seq epoch this batch belongs to


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that stores nothing. ``seq`` is set only when it comes from a verified batch."""

    device_id: str | None
    reason: str
    detail: str
    sha256: str
    seq: int | None = None


def payload_hash(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _slot_setter(name: str) -> Callable[[object, object], None]:
    if hasattr(Point, "__post_init__"):  # the fast path below would skip it
        raise TypeError("Point has a __post_init__; checked_points cannot build it through its slots")
    setter: Callable[[object, object], None] = Point.__dict__[name].__set__
    return setter


# Points are built through their slot setters (about 2x cheaper than the frozen __init__, which goes
# through object.__setattr__ per field); the result is the same frozen Point.
_new = object.__new__
_set_device = _slot_setter("device_id")
_set_type = _slot_setter("sensor_type")
_set_location = _slot_setter("location")
_set_ts = _slot_setter("ts_ms")
_set_fields = _slot_setter("fields")


def process(
    topic: str,
    payload: bytes,
    *,
    topics: Topics,
    lookup: Callable[[str], DeviceKey | None],
    now_ms: int | None = None,
    max_skew_ms: int = 300_000,
) -> Accepted | Rejected:
    """Run one telemetry message through authentication, verification and validation.

    Args:
        topic: the MQTT topic it arrived on (names the device).
        payload: the exact bytes received.
        topics: the contract's topic names under the deployment's prefix.
        lookup: device id -> its key and status, or None when unknown. May raise
            :class:`broker_bridge.errors.DirectoryUnavailable` (the message is then retried, not rejected).
        now_ms: the receive time (ms); defaults to the wall clock.
        max_skew_ms: how far in the future a reading's timestamp may be.
    """
    digest = payload_hash(payload)
    try:
        device_id, kind = topics.parse(topic)
    except ProtocolError as exc:
        return Rejected(None, exc.reason, str(exc), digest)
    if kind is not Kind.TELEMETRY:
        return Rejected(device_id, NOT_TELEMETRY, f"{kind.value} is not telemetry", digest)
    key = lookup(device_id)
    if key is None:
        return Rejected(device_id, UNKNOWN_DEVICE, "no such device in the registry", digest)
    if not key.active or key.public_key is None:
        return Rejected(device_id, INACTIVE_DEVICE, "device is not active (deactivated or not enrolled)", digest)
    try:
        batch = open_batch(payload, topic_device=device_id, public_key=key.public_key, decode=decode_batch_fast)
    except ProtocolError as exc:
        return Rejected(device_id, exc.reason, str(exc), digest)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    points, problems = checked_points(batch, key.location, now_ms=now, max_skew_ms=max_skew_ms)
    kid = key.key_id or key_id_of(key.public_key)
    return Accepted(device_id, batch, digest, points, problems, kid)


def checked_points(
    batch: Batch, location: str, *, now_ms: int, max_skew_ms: int
) -> tuple[tuple[Point, ...], tuple[ReadingProblem, ...]]:
    """The points of the readings of ``batch`` that :func:`check_reading` passes, and the problems of
    the others, in one pass.

    A reading's ``values`` become its point's ``fields`` plus ``quality_score`` (unless the reading
    already has a value of that name, which then wins); when nothing needs adding the point shares
    the reading's dict (neither is mutated after decoding). A reading passes the inline test below
    only when check_reading would pass it (the same bounds: time window, quality, finite values,
    FIELD_RANGES); any other goes to check_reading, which names its problem."""
    lo_ts, hi_ts = MIN_TS_MS, now_ms + max_skew_ms
    ranges = FIELD_RANGES
    device_id = batch.device_id
    out: list[Point] = []
    problems: list[ReadingProblem] = []
    for i, r in enumerate(batch.readings):
        ok = lo_ts <= r.ts <= hi_ts and 0.0 <= r.quality <= 1.0
        if ok:
            for name, value in r.values.items():
                bounds = ranges.get(name)
                if bounds is None:
                    if value - value != 0:  # NaN or infinite (an int gives 0)
                        ok = False
                        break
                elif not bounds[0] <= value <= bounds[1]:  # NaN compares False
                    ok = False
                    break
        if not ok:
            problem = check_reading(r, i, now_ms=now_ms, max_skew_ms=max_skew_ms)
            if problem is not None:
                problems.append(problem)
                continue
        values = r.values
        if "quality_score" not in values:  # copy, then add: cheaper than a {**values, ...} literal
            values = dict(values)
            values["quality_score"] = r.quality
        p = _new(Point)
        _set_device(p, device_id)
        _set_type(p, r.sensor_type)
        _set_location(p, location)
        _set_ts(p, r.ts)
        _set_fields(p, values)
        out.append(p)
    return tuple(out), tuple(problems)


def replay_decision(
    sha256: str, key_id: str, known: tuple[str, str | None] | None
) -> Literal["new", "duplicate", "replayed"]:
    """The ledger rule for a batch seq, given what is stored under it (``known`` = (payload hash,
    signing key id or None when unknown)):

    - nothing stored -> ``new``;
    - the same payload -> a harmless ``duplicate`` (ack and receipt again, store nothing);
    - another payload signed by the same key -> ``replayed`` (rejected ``replayed_seq``);
    - another payload signed by another key (or by a key the ledger did not record: rows from before
      key epochs) -> ``new``: the device re-enrolled or was rotated and restarted its seqs. The old key
      can no longer verify anything, so this cannot be a replay; the ledger row is overwritten.
    """
    if known is None:
        return "new"
    stored_hash, stored_key = known
    if stored_hash == sha256:
        return "duplicate"
    return "replayed" if stored_key == key_id else "new"
