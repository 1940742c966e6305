"""The pure ingest pipeline: topic -> authenticate -> verify -> validate -> points. No I/O.

:func:`process` turns one received message into an :class:`Accepted` batch (its points and the
readings that failed validation) or a :class:`Rejected` one, each with a stable reason code; a
rejection says whether the signature had verified and, when it had (or for a retry), the seq read
from the payload, which is what decides its receipt (:mod:`broker_bridge.dispositions`).
:func:`replay_decision` is the dedup/replay rule; the caller supplies what the ledger knows.
Only the wire contract's own errors are turned into rejections; anything else escaping is a bug.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cloud_core.services.ledger import key_id_of
from cloud_core.tsdb.base import Point
from iot_protocol import (
    Batch,
    Kind,
    ProtocolError,
    ReadingProblem,
    Topics,
    check_reading,
    decode_verified_batch,
    payload_indexes,
    peek_seq,
    verify_batch,
)
from iot_protocol.validation import FIELD_RANGES, MIN_TS_MS, NAME_RE, RESERVED_FIELD_NAMES

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
# The device's key is not cached and the registry cannot be read (metadata DB down): resend later.
REGISTRY_UNAVAILABLE = "registry_unavailable"
STORE_REJECTED = "store_rejected"
# Reading-level: a reading whose (sensor type, ts) another reading of the device already has, with
# other values (in the same batch, or stored): storage keys a point on them, so one would be lost.
DUPLICATE_TIMESTAMP = "duplicate_timestamp"
QUOTA_EXCEEDED = "quota_exceeded"
#: Refused for volume, not content: the same disposition (broker_bridge.dispositions: a retry receipt).
THROTTLED = frozenset({RATE_LIMITED, QUOTA_EXCEEDED})


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
    """A verified batch: ``points`` to store, ``problems`` for the readings that must be dead-lettered
    (in payload order; ``indexes[i]`` is the payload index of ``points[i]``'s reading, None when the
    points are the readings one for one). ``min_ts``/``max_ts`` bound the points' timestamps."""

    device_id: str
    batch: Batch
    sha256: str
    points: tuple[Point, ...]
    problems: tuple[ReadingProblem, ...]
    key_id: str = ""  # the verifying key's id: the seq epoch this batch belongs to
    indexes: tuple[int, ...] | None = None
    min_ts: int = 0
    max_ts: int = -1

    @property
    def readings(self) -> int:
        """How many readings the batch carried (stored or not)."""
        return len(self.points) + len(self.problems)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that stores nothing. ``verified``: its signature verified (so the device may be told);
    ``seq``: the batch seq as read from the payload (set for verified batches whose seq could be read,
    and for retries); ``readings``: how many readings the payload held, when known; ``after_ms``: for
    a retry, when to resend."""

    device_id: str | None
    reason: str
    detail: str
    sha256: str
    seq: int | None = None
    verified: bool = False
    readings: int = 0
    after_ms: int = 0  # for a retry: when to resend
    key_id: str = ""  # for a verified batch: the verifying key's id (its seq epoch)


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
            :class:`broker_bridge.errors.DirectoryUnavailable` (the caller then answers
            ``registry_unavailable``: a retry, not a final rejection).
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
        token = verify_batch(payload, topic_device=device_id, public_key=key.public_key)
    except ProtocolError as exc:
        return Rejected(device_id, exc.reason, str(exc), digest)
    try:
        batch = decode_verified_batch(token, topic_device=device_id, decode=decode_batch_fast)
    except ProtocolError as exc:  # signed by the device: it may be told, by the seq if one can be read
        seq, n = peek_seq(token.payload)
        kid = key.key_id or key_id_of(key.public_key)
        return Rejected(device_id, exc.reason, str(exc), digest, seq, verified=True, readings=n, key_id=kid)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    kid = key.key_id or key_id_of(key.public_key)
    return checked_batch(batch, key.location, digest, kid, now_ms=now, max_skew_ms=max_skew_ms)


# Names already found to follow the contract's rule (NAME_RE, not reserved): sensor types and field
# names repeat with every reading, so each is checked once. Field names with a range are known good.
_good_names: set[str] = set(FIELD_RANGES)
_GOOD_NAMES_MAX = 100_000


def _good_name(name: str) -> bool:
    if NAME_RE.match(name) is None:
        return False
    if len(_good_names) >= _GOOD_NAMES_MAX:
        _good_names.clear()
        _good_names.update(FIELD_RANGES)
    _good_names.add(name)
    return True


def _good_field(name: str) -> bool:
    return name not in RESERVED_FIELD_NAMES and _good_name(name)


def checked_batch(batch: Batch, location: str, sha256: str, key_id: str, *, now_ms: int, max_skew_ms: int) -> Accepted:
    """The Accepted outcome of a verified, decoded ``batch``: its points and the problems of its other
    readings (those the decoder set aside, those :func:`check_reading` refuses, and readings repeating
    an earlier one's sensor type and ts with other values), in payload order."""
    points, problems, indexes, lo, hi = _check(batch, location, now_ms=now_ms, max_skew_ms=max_skew_ms)
    return Accepted(batch.device_id, batch, sha256, points, problems, key_id, indexes, lo, hi)


def checked_points(
    batch: Batch, location: str, *, now_ms: int, max_skew_ms: int
) -> tuple[tuple[Point, ...], tuple[ReadingProblem, ...], tuple[int, ...] | None]:
    """(points, problems, indexes) of :func:`_check`."""
    points, problems, indexes, _, _ = _check(batch, location, now_ms=now_ms, max_skew_ms=max_skew_ms)
    return points, problems, indexes


def _check(
    batch: Batch, location: str, *, now_ms: int, max_skew_ms: int
) -> tuple[tuple[Point, ...], tuple[ReadingProblem, ...], tuple[int, ...] | None, int, int]:
    """The points of the readings of ``batch`` that :func:`check_reading` passes, the problems of
    the others, in one pass, the payload index of each point's reading (None when they are the
    payload's readings one for one), and the least and greatest ts of the points (0, -1 for none).

    A reading's ``values`` become its point's ``fields`` plus ``quality_score`` (unless the reading
    already has a value of that name, which then wins); when nothing needs adding the point shares
    the reading's dict (neither is mutated after decoding). A reading passes the inline test below
    only when check_reading would pass it (the same bounds: names, time window, quality, finite
    values, FIELD_RANGES); any other goes to check_reading, which names its problem. Readings the
    decoder set aside (``batch.malformed``) keep their problems; a reading with the (sensor type, ts)
    of an earlier kept one of this batch is ``duplicate_timestamp`` (storage holds one point per
    key: the second would replace the first, or be the same point counted twice)."""
    lo_ts, hi_ts = MIN_TS_MS, now_ms + max_skew_ms
    ranges = FIELD_RANGES
    good = _good_names
    device_id = batch.device_id
    readings = batch.readings
    malformed = batch.malformed
    where = payload_indexes(batch) if malformed else None
    out: list[Point] = []
    problems: list[ReadingProblem] = list(malformed)
    for i, r in enumerate(readings):
        ok = lo_ts <= r.ts <= hi_ts and 0.0 <= r.quality <= 1.0 and (r.sensor_type in good or _good_name(r.sensor_type))
        if ok:
            for name, value in r.values.items():
                bounds = ranges.get(name)
                if bounds is None:
                    if value - value != 0 or (name not in good and not _good_field(name)):  # NaN or infinite
                        ok = False
                        break
                elif not bounds[0] <= value <= bounds[1]:  # NaN compares False
                    ok = False
                    break
        if not ok:
            problem = check_reading(r, i if where is None else where[i], now_ms=now_ms, max_skew_ms=max_skew_ms)
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
    if not out:
        return (), tuple(sorted(problems, key=_by_index)), (), 0, -1
    kept: list[int] | None = None  # payload indexes of the points, when not 0..n-1
    if problems:
        bad = {x.index for x in problems}
        kept = [j for j in (range(len(readings)) if where is None else where) if j not in bad]
    ts = [p.ts_ms for p in out]
    if len(ts) > 1 and len(set(ts)) != len(ts):
        out, kept = _drop_repeats(out, kept if kept is not None else list(range(len(out))), problems)
        ts = [p.ts_ms for p in out]
    if problems and (malformed or len(problems) > 1):
        problems.sort(key=_by_index)
    return tuple(out), tuple(problems), None if kept is None else tuple(kept), min(ts), max(ts)


def _by_index(p: ReadingProblem) -> int:
    return p.index


def _drop_repeats(
    points: list[Point], kept: list[int], problems: list[ReadingProblem]
) -> tuple[list[Point], list[int]]:
    """Keep the first point of each (sensor type, ts); a later one becomes a ``duplicate_timestamp``
    problem. ``kept``: the payload index of each point."""
    seen: set[tuple[str, int]] = set()
    out: list[Point] = []
    out_kept: list[int] = []
    for p, i in zip(points, kept, strict=True):
        key = (p.sensor_type, p.ts_ms)
        if key not in seen:
            seen.add(key)
        else:
            problems.append(
                ReadingProblem(i, DUPLICATE_TIMESTAMP, f"{p.sensor_type} at ts {p.ts_ms} twice in the batch")
            )
            continue
        out.append(p)
        out_kept.append(i)
    return out, out_kept


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
