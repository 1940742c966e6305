"""The payloads of the contract as immutable values, with strict encoders and decoders.

Payloads are UTF-8 JSON objects with a version field ``v`` (this module speaks ``v = 1``).
Times are integer milliseconds since the Unix epoch, UTC. Telemetry and desired config travel
inside a JWS (see :mod:`iot_protocol.jws`); the rest are plain JSON, protected by broker ACLs.
Decoders accept exactly what docs/protocol.md specifies and raise :class:`DecodeError` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

import orjson

from ._json import count_members, has_duplicates
from .errors import DecodeError, UnsupportedVersion
from .topics import DEVICE_ID_RE, validate_device_id

if TYPE_CHECKING:
    from .firmware import FirmwareStatus

__all__ = [
    "MAX_BATCH_ID_LENGTH",
    "MAX_FIELDS_PER_READING",
    "MAX_FLAGS_PER_READING",
    "MAX_NAME_LENGTH",
    "MAX_READINGS_PER_BATCH",
    "MAX_SEQ",
    "MAX_TIMESTAMP",
    "VERSION",
    "Alert",
    "Batch",
    "ConfigDocument",
    "ConfigReport",
    "Health",
    "Reading",
    "ReadingOutcome",
    "ReadingProblem",
    "ReadingRejection",
    "Receipt",
    "Rejection",
    "Retry",
    "Status",
    "Unread",
    "decode_alert",
    "decode_batch",
    "decode_config_document",
    "decode_config_report",
    "decode_health",
    "decode_receipt",
    "decode_status",
    "encode",
    "payload_indexes",
    "peek_seq",
]

VERSION = 1
TYP_BATCH = "edu.batch.v1"
TYP_CONFIG = "edu.config.v1"
# The limits of a batch (docs/protocol.md, "Limits"). Integers are bounded so that every store can
# hold them: a seq fits a signed 32-bit column, a time an IEEE double exactly (2**53 - 1).
MAX_READINGS_PER_BATCH = 1000
MAX_NAME_LENGTH = 64  # sensor types, field names, flags
MAX_BATCH_ID_LENGTH = 128
MAX_FIELDS_PER_READING = 64
MAX_FLAGS_PER_READING = 64
MAX_SEQ = 2**31 - 1
MAX_TIMESTAMP = 2**53 - 1  # ts and sent_at, in ms

# Reading-level reasons given while decoding: the reading's shape or types (bad_reading), or a name
# of the wrong length (bad_name; the character rule is checked with the others, in validation.py).
BAD_READING = "bad_reading"
BAD_NAME = "bad_name"


def _loads(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise DecodeError(f"{what} is not valid UTF-8 JSON", reason="bad_json") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"{what} must be a JSON object", reason="bad_json")
    if has_duplicates(data, count_members(obj)):
        raise DecodeError(f"{what} repeats a member name in some object", reason="bad_json")
    v = obj.get("v")
    if v != VERSION:
        if isinstance(v, int) and not isinstance(v, bool):
            raise UnsupportedVersion(f"{what} version {v} is not supported (this side speaks {VERSION})")
        raise DecodeError(f"{what} needs an integer version field 'v'", reason="bad_schema")
    return obj


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(obj: Mapping[str, Any], key: str, what: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    value = obj.get(key)
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise DecodeError(f"{what}.{key} must be an integer {bound}", reason="bad_schema")
    return value


def _str(obj: Mapping[str, Any], key: str, what: str, *, max_len: int = MAX_NAME_LENGTH) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise DecodeError(f"{what}.{key} must be a string of 1-{max_len} characters", reason="bad_schema")
    return value


def _num(value: Any) -> TypeGuard[int | float]:
    """A JSON number (booleans are not numbers here, though Python says they are ints)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample of one sensor: ``values`` maps field name to number; ``quality`` is 0..1."""

    ts: int
    sensor_type: str
    values: Mapping[str, float]
    quality: float = 1.0
    flags: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ts": self.ts, "sensor_type": self.sensor_type, "values": dict(self.values)}
        out["quality"] = self.quality
        if self.flags:
            out["flags"] = list(self.flags)
        return out


@dataclass(frozen=True, slots=True)
class ReadingProblem:
    """Why the reading at ``index`` of a batch's ``readings`` array is not stored."""

    index: int
    reason: str  # stable code: bad_reading | bad_name | non_finite | out_of_range | ... (docs/protocol.md)
    detail: str


@dataclass(frozen=True, slots=True)
class Batch:
    """A device's signed unit of telemetry: ``seq`` increases by one per batch, per device.

    ``malformed``: the readings the decoder refused (each rejects only itself), by their index in the
    payload's ``readings`` array; ``readings`` holds the others, in order (:func:`payload_indexes`).
    A batch built to be sent has none."""

    device_id: str
    batch_id: str
    seq: int
    sent_at: int
    readings: tuple[Reading, ...]
    malformed: tuple[ReadingProblem, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "device_id": self.device_id,
            "batch_id": self.batch_id,
            "seq": self.seq,
            "sent_at": self.sent_at,
            "readings": [r.to_json() for r in self.readings],
        }


def payload_indexes(batch: Batch) -> range | list[int]:
    """The index in the payload's ``readings`` array of each of ``batch.readings``."""
    n = len(batch.readings)
    if not batch.malformed:
        return range(n)
    bad = {p.index for p in batch.malformed}
    return [i for i in range(n + len(bad)) if i not in bad]


def _decode_reading(obj: Any, i: int) -> Reading | ReadingProblem:
    """The reference decoder of one reading: a Reading, or the first rule it breaks (it alone is
    rejected; the rest of its batch is not affected)."""
    what = f"readings[{i}]"
    if not isinstance(obj, dict):
        return ReadingProblem(i, BAD_READING, f"{what} must be an object")
    ts = obj.get("ts")
    if not _is_int(ts) or not 0 <= ts <= MAX_TIMESTAMP:
        return ReadingProblem(i, BAD_READING, f"{what}.ts must be an integer in 0..{MAX_TIMESTAMP}")
    sensor_type = obj.get("sensor_type")
    if not isinstance(sensor_type, str):
        return ReadingProblem(i, BAD_READING, f"{what}.sensor_type must be a string")
    if not 0 < len(sensor_type) <= MAX_NAME_LENGTH:
        return ReadingProblem(i, BAD_NAME, f"{what}.sensor_type must be 1-{MAX_NAME_LENGTH} characters")
    values = obj.get("values")
    if not isinstance(values, dict) or not 0 < len(values) <= MAX_FIELDS_PER_READING:
        return ReadingProblem(i, BAD_READING, f"{what}.values must be an object of 1-{MAX_FIELDS_PER_READING} fields")
    for name, value in values.items():
        if not 0 < len(name) <= MAX_NAME_LENGTH:
            return ReadingProblem(i, BAD_NAME, f"{what}.values: a field name must be 1-{MAX_NAME_LENGTH} characters")
        if not _num(value):
            return ReadingProblem(i, BAD_READING, f"{what}.values.{name} must be a number")
    quality = obj.get("quality", 1.0)
    if not _num(quality):
        return ReadingProblem(i, BAD_READING, f"{what}.quality must be a number")
    flags = obj.get("flags", [])
    if (
        not isinstance(flags, list)
        or len(flags) > MAX_FLAGS_PER_READING
        or not all(isinstance(f, str) and 0 < len(f) <= MAX_NAME_LENGTH for f in flags)
    ):
        return ReadingProblem(
            i, BAD_READING, f"{what}.flags must be a list of at most {MAX_FLAGS_PER_READING} strings of 1-64 characters"
        )
    return Reading(ts=ts, sensor_type=sensor_type, values=values, quality=float(quality), flags=tuple(flags))


def _decode_batch_obj(obj: dict[str, Any]) -> Batch:
    """The reference decoder of a parsed batch: it raises the error naming the first batch-level rule
    broken; a reading that breaks a rule is only set aside (``Batch.malformed``)."""
    readings = obj.get("readings")
    if not isinstance(readings, list) or not readings:
        raise DecodeError("batch.readings must be a non-empty list", reason="bad_schema")
    if len(readings) > MAX_READINGS_PER_BATCH:
        raise DecodeError(
            f"batch holds {len(readings)} readings, more than {MAX_READINGS_PER_BATCH}", reason="too_large"
        )
    device_id = _str(obj, "device_id", "batch")
    try:
        validate_device_id(device_id)
    except Exception:
        raise DecodeError(f"batch.device_id {device_id!r} is not a valid device id", reason="bad_schema") from None
    batch_id = _str(obj, "batch_id", "batch", max_len=MAX_BATCH_ID_LENGTH)
    seq = _int(obj, "seq", "batch", maximum=MAX_SEQ)
    sent_at = _int(obj, "sent_at", "batch", maximum=MAX_TIMESTAMP)
    good: list[Reading] = []
    bad: list[ReadingProblem] = []
    for i, r in enumerate(readings):
        out = _decode_reading(r, i)
        if type(out) is Reading:
            good.append(out)
        else:
            assert type(out) is ReadingProblem
            bad.append(out)
    return Batch(device_id, batch_id, seq, sent_at, tuple(good), tuple(bad))


# The fast path of decode_batch. orjson builds only exact dict/list/str/int/float/bool/None objects, so
# ``type(x) is int`` (or ``in _NUMBER``) accepts exactly what the reference decoder's isinstance checks
# accept (bool is a distinct type, as there). It builds the frozen dataclasses through their slot
# descriptors (a frozen __init__ goes through object.__setattr__ per field, twice as slow); neither class
# has a __post_init__. Anything it does not accept as a whole (a malformed reading too) goes to the
# reference decoder, which sets the reading aside or raises the error.
_NUMBER = frozenset((int, float))


def _slot_setter(cls: type, name: str) -> Callable[[object, Any], None]:
    """The slot descriptor's setter of field ``name`` (bypasses the frozen dataclass's __setattr__)."""
    if hasattr(cls, "__post_init__"):  # the fast path would skip it: decode through __init__ instead
        raise TypeError(f"{cls.__name__} has a __post_init__; the fast decoder cannot build it")
    setter: Callable[[object, Any], None] = cls.__dict__[name].__set__
    return setter


_NO_FLAGS: tuple[str, ...] = ()
_NO_PROBLEMS: tuple[ReadingProblem, ...] = ()
_new = object.__new__
_set_ts = _slot_setter(Reading, "ts")
_set_sensor_type = _slot_setter(Reading, "sensor_type")
_set_values = _slot_setter(Reading, "values")
_set_quality = _slot_setter(Reading, "quality")
_set_flags = _slot_setter(Reading, "flags")
_set_device_id = _slot_setter(Batch, "device_id")
_set_batch_id = _slot_setter(Batch, "batch_id")
_set_seq = _slot_setter(Batch, "seq")
_set_sent_at = _slot_setter(Batch, "sent_at")
_set_readings = _slot_setter(Batch, "readings")
_set_malformed = _slot_setter(Batch, "malformed")
_device_id_match = DEVICE_ID_RE.match


def _fast_batch(obj: dict[str, Any]) -> Batch | None:
    """``obj`` as a Batch when it is a valid batch with no malformed reading (exactly as
    :func:`_decode_batch_obj` decides), else None."""
    readings = obj.get("readings")
    if type(readings) is not list or not readings or len(readings) > MAX_READINGS_PER_BATCH:
        return None
    device_id = obj.get("device_id")
    batch_id = obj.get("batch_id")
    seq = obj.get("seq")
    sent_at = obj.get("sent_at")
    if (
        type(device_id) is not str
        or not _device_id_match(device_id)  # the pattern bounds the length too
        or type(batch_id) is not str
        or not 0 < len(batch_id) <= MAX_BATCH_ID_LENGTH
        or type(seq) is not int
        or not 0 <= seq <= MAX_SEQ
        or type(sent_at) is not int
        or not 0 <= sent_at <= MAX_TIMESTAMP
    ):
        return None
    number = _NUMBER
    out: list[Reading] = []
    append = out.append
    for r in readings:
        if type(r) is not dict:
            return None
        values = r.get("values")
        if type(values) is not dict or not 0 < len(values) <= MAX_FIELDS_PER_READING:
            return None
        for name, value in values.items():
            if type(value) not in number or not 0 < len(name) <= MAX_NAME_LENGTH:
                return None
        ts = r.get("ts")
        sensor_type = r.get("sensor_type")
        quality = r.get("quality", 1.0)
        flags = r.get("flags", _NO_FLAGS)
        if (
            type(ts) is not int
            or not 0 <= ts <= MAX_TIMESTAMP
            or type(sensor_type) is not str
            or not 0 < len(sensor_type) <= MAX_NAME_LENGTH
            or type(quality) not in number
        ):
            return None
        if flags is not _NO_FLAGS:
            if type(flags) is not list or len(flags) > MAX_FLAGS_PER_READING:
                return None
            for f in flags:
                if type(f) is not str or not 0 < len(f) <= MAX_NAME_LENGTH:
                    return None
            flags = tuple(flags)
        reading = _new(Reading)
        _set_ts(reading, ts)
        _set_sensor_type(reading, sensor_type)
        _set_values(reading, values)
        _set_quality(reading, float(quality))
        _set_flags(reading, flags)
        append(reading)
    batch = _new(Batch)
    _set_device_id(batch, device_id)
    _set_batch_id(batch, batch_id)
    _set_seq(batch, seq)
    _set_sent_at(batch, sent_at)
    _set_readings(batch, tuple(out))
    _set_malformed(batch, _NO_PROBLEMS)
    return batch


def decode_batch(data: bytes) -> Batch:
    """Decode a telemetry batch payload (the JWS payload bytes).

    Raises:
        DecodeError: the payload breaks a batch-level rule (``bad_json``, ``bad_schema``,
            ``too_large``, ``unsupported_version``). A reading that breaks a rule does not raise: it
            is in ``Batch.malformed``.
    """
    obj = _loads(data, "batch")
    batch = _fast_batch(obj)
    return batch if batch is not None else _decode_batch_obj(obj)


def peek_seq(data: bytes) -> tuple[int | None, int]:
    """(seq, number of readings) of a batch payload that failed to decode, as far as they can be
    read: the seq when the payload is a JSON object whose ``seq`` is an integer in 0..MAX_SEQ (None
    otherwise), and the length of its ``readings`` when that is a list (0 otherwise). The cloud names
    a verified but malformed batch in its receipt by this seq."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, 0
    if type(obj) is not dict:
        return None, 0
    seq = obj.get("seq")
    readings = obj.get("readings")
    n = len(readings) if type(readings) is list else 0
    if type(seq) is int and 0 <= seq <= MAX_SEQ:
        return seq, n
    return None, n


@dataclass(frozen=True, slots=True)
class Rejection:
    """A whole batch finally rejected: resending it cannot help."""

    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class ReadingRejection:
    """One reading of a batch not stored: ``index`` in the batch's ``readings`` array."""

    index: int
    reason: str


@dataclass(frozen=True, slots=True)
class ReadingOutcome:
    """The rejected readings of the batch ``seq`` (named in ``stored`` or ``rejected``)."""

    seq: int
    rejected: tuple[ReadingRejection, ...]


@dataclass(frozen=True, slots=True)
class Retry:
    """Not stored and not final: resend the identical bytes after ``after_ms`` (rate_limited)."""

    seq: int
    reason: str
    after_ms: int = 0


@dataclass(frozen=True, slots=True)
class Unread:
    """A verified message whose seq could not be read, named by the SHA-256 (hex) of its exact bytes;
    finally rejected."""

    sha256: str
    reason: str


@dataclass(frozen=True, slots=True)
class Receipt:
    """Cloud -> device: what became of its batches (docs/protocol.md, Receipts).

    ``stored``: seqs durably stored, except the readings listed for them in ``readings``;
    ``rejected``: seqs finally rejected as a whole; ``readings``: per seq, the readings not stored
    and why; ``retry``: seqs not stored that must be resent later; ``unread``: verified messages
    without a readable seq. A device deletes a batch named in ``stored``, ``rejected`` or ``unread``.
    """

    stored: tuple[int, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    readings: tuple[ReadingOutcome, ...] = ()
    retry: tuple[Retry, ...] = ()
    unread: tuple[Unread, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": VERSION,
            "stored": list(self.stored),
            "rejected": [{"seq": r.seq, "reason": r.reason} for r in self.rejected],
        }
        if self.readings:
            out["readings"] = [
                {"seq": o.seq, "rejected": [{"index": x.index, "reason": x.reason} for x in o.rejected]}
                for o in self.readings
            ]
        if self.retry:
            out["retry"] = [{"seq": r.seq, "reason": r.reason, "after_ms": r.after_ms} for r in self.retry]
        if self.unread:
            out["unread"] = [{"sha256": u.sha256, "reason": u.reason} for u in self.unread]
        return out

    def rejected_readings(self, seq: int) -> tuple[ReadingRejection, ...]:
        """The readings of batch ``seq`` this receipt names as not stored."""
        for o in self.readings:
            if o.seq == seq:
                return o.rejected
        return ()


def _list(obj: Mapping[str, Any], key: str) -> list[Any]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise DecodeError(f"receipt.{key} must be a list", reason="bad_schema")
    return value


def _objects(obj: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    items = _list(obj, key)
    for i, r in enumerate(items):
        if not isinstance(r, dict):
            raise DecodeError(f"receipt.{key}[{i}] must be an object", reason="bad_schema")
    return items


def decode_receipt(data: bytes) -> Receipt:
    obj = _loads(data, "receipt")
    stored = _list(obj, "stored")
    if not all(_is_int(s) for s in stored):
        raise DecodeError("receipt.stored must be a list of integers", reason="bad_schema")
    rejected = tuple(
        Rejection(_int(r, "seq", "receipt.rejected"), _str(r, "reason", "receipt.rejected"))
        for r in _objects(obj, "rejected")
    )
    readings = []
    for o in _objects(obj, "readings"):
        items = o.get("rejected")
        if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
            raise DecodeError("receipt.readings[].rejected must be a list of objects", reason="bad_schema")
        readings.append(
            ReadingOutcome(
                _int(o, "seq", "receipt.readings"),
                tuple(
                    ReadingRejection(_int(x, "index", "receipt.readings"), _str(x, "reason", "receipt.readings"))
                    for x in items
                ),
            )
        )
    retry = tuple(
        Retry(
            _int(r, "seq", "receipt.retry"),
            _str(r, "reason", "receipt.retry"),
            _int(r, "after_ms", "receipt.retry") if "after_ms" in r else 0,
        )
        for r in _objects(obj, "retry")
    )
    unread = tuple(
        Unread(_str(u, "sha256", "receipt.unread"), _str(u, "reason", "receipt.unread"))
        for u in _objects(obj, "unread")
    )
    return Receipt(tuple(stored), rejected, tuple(readings), retry, unread)


@dataclass(frozen=True, slots=True)
class Status:
    """Retained presence: ``online`` on connect, ``offline`` on clean stop or as the last will."""

    state: str  # "online" | "offline"
    at: int | None = None
    reason: str | None = None  # for offline: "clean" (said by the device) or "lost" (the last will)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": VERSION, "state": self.state}
        if self.at is not None:
            out["at"] = self.at
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def decode_status(data: bytes) -> Status:
    obj = _loads(data, "status")
    state = obj.get("state")
    if state not in ("online", "offline"):
        raise DecodeError("status.state must be 'online' or 'offline'", reason="bad_schema")
    at = obj.get("at")
    reason = obj.get("reason")
    if at is not None and (not isinstance(at, int) or isinstance(at, bool)):
        raise DecodeError("status.at must be an integer", reason="bad_schema")
    if reason is not None and not isinstance(reason, str):
        raise DecodeError("status.reason must be a string", reason="bad_schema")
    return Status(state, at, reason)


@dataclass(frozen=True, slots=True)
class Health:
    """Heartbeat. The counters let the cloud account for every reading (produced = stored +
    buffered + dropped + in flight)."""

    at: int
    uptime_s: float
    buffer_depth: int
    produced: int
    dropped: int
    firmware: str
    config_version: int
    clock_synced: bool
    battery: float | None = None
    signal: float | None = None
    last_seq: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)
    quarantined: int = 0  # readings in batches the cloud never verified, set aside after bounded resends

    def to_json(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "at": self.at,
            "uptime_s": self.uptime_s,
            "buffer_depth": self.buffer_depth,
            "produced": self.produced,
            "dropped": self.dropped,
            "firmware": self.firmware,
            "config_version": self.config_version,
            "clock_synced": self.clock_synced,
            "battery": self.battery,
            "signal": self.signal,
            "last_seq": self.last_seq,
            **({"quarantined": self.quarantined} if self.quarantined else {}),
            **({"extra": dict(self.extra)} if self.extra else {}),
        }


def decode_health(data: bytes) -> Health:
    obj = _loads(data, "health")
    for key in ("battery", "signal"):
        if obj.get(key) is not None and not _num(obj[key]):
            raise DecodeError(f"health.{key} must be a number or null", reason="bad_schema")
    uptime = obj.get("uptime_s")
    if not _num(uptime) or not math.isfinite(uptime):
        raise DecodeError("health.uptime_s must be a number", reason="bad_schema")
    extra = obj.get("extra", {})
    return Health(
        at=_int(obj, "at", "health"),
        uptime_s=float(uptime),
        buffer_depth=_int(obj, "buffer_depth", "health"),
        produced=_int(obj, "produced", "health"),
        dropped=_int(obj, "dropped", "health"),
        firmware=_str(obj, "firmware", "health"),
        config_version=_int(obj, "config_version", "health"),
        clock_synced=bool(obj.get("clock_synced")),
        battery=obj.get("battery"),
        signal=obj.get("signal"),
        last_seq=_int(obj, "last_seq", "health") if "last_seq" in obj else 0,
        extra=extra if isinstance(extra, dict) else {},
        quarantined=_int(obj, "quarantined", "health") if "quarantined" in obj else 0,
    )


@dataclass(frozen=True, slots=True)
class ConfigDocument:
    """Desired configuration for one device, signed by the cloud (JWS typ ``edu.config.v1``).

    ``version`` increases by one per change, per device; a device applies a document only if its
    version is greater than the one it has applied.
    """

    device_id: str
    version: int
    issued_at: int
    settings: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "device_id": self.device_id,
            "version": self.version,
            "issued_at": self.issued_at,
            "settings": dict(self.settings),
        }


def decode_config_document(data: bytes) -> ConfigDocument:
    obj = _loads(data, "config")
    settings = obj.get("settings")
    if not isinstance(settings, dict):
        raise DecodeError("config.settings must be an object", reason="bad_schema")
    return ConfigDocument(
        device_id=_str(obj, "device_id", "config"),
        version=_int(obj, "version", "config", minimum=1),
        issued_at=_int(obj, "issued_at", "config"),
        settings=settings,
    )


@dataclass(frozen=True, slots=True)
class ConfigReport:
    """Device -> cloud: the outcome of a desired config. ``status`` is ``applied`` or ``rejected``.
    ``firmware``, when present, is the progress of the firmware update that config asked for (a
    device sends one report per update step, with the same ``version`` and ``status``)."""

    version: int
    status: str
    at: int
    error: str | None = None
    firmware: FirmwareStatus | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"v": VERSION, "version": self.version, "status": self.status, "at": self.at, "error": self.error}
        if self.firmware is not None:
            out["firmware"] = self.firmware.to_json()
        return out


def decode_config_report(data: bytes) -> ConfigReport:
    obj = _loads(data, "config report")
    status = obj.get("status")
    if status not in ("applied", "rejected"):
        raise DecodeError("config report status must be 'applied' or 'rejected'", reason="bad_schema")
    error = obj.get("error")
    if error is not None and not isinstance(error, str):
        raise DecodeError("config report error must be a string or null", reason="bad_schema")
    firmware = None
    if obj.get("firmware") is not None:
        from .firmware import FirmwareStatus

        firmware = FirmwareStatus.from_json(obj["firmware"])
    return ConfigReport(
        version=_int(obj, "version", "config report"),
        status=status,
        at=_int(obj, "at", "config report"),
        error=error,
        firmware=firmware,
    )


@dataclass(frozen=True, slots=True)
class Alert:
    """Cloud -> subscribers on ``alerts``: one anomalous episode of one device's field, published
    when it opens (``state`` = ``open``) and again when it closes (``closed``)."""

    id: int | None
    device_id: str
    field: str
    sensor_type: str
    detector: str  # robust_z | jump | stuck | forest
    state: str  # open | closed
    start_ms: int
    end_ms: int
    peak_ms: int
    peak_score: float
    count: int
    values: tuple[float, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "id": self.id,
            "device_id": self.device_id,
            "field": self.field,
            "sensor_type": self.sensor_type,
            "detector": self.detector,
            "state": self.state,
            "status": self.state,  # the same as state (kept for earlier subscribers)
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "peak_ms": self.peak_ms,
            "peak_score": self.peak_score,
            "count": self.count,
            "values": list(self.values),
        }


def decode_alert(data: bytes) -> Alert:
    obj = _loads(data, "alert")
    state = obj.get("state")
    if state not in ("open", "closed"):
        raise DecodeError("alert.state must be 'open' or 'closed'", reason="bad_schema")
    ident = obj.get("id")
    if ident is not None and (not isinstance(ident, int) or isinstance(ident, bool)):
        raise DecodeError("alert.id must be an integer or null", reason="bad_schema")
    score = obj.get("peak_score")
    if not _num(score) or not math.isfinite(score):
        raise DecodeError("alert.peak_score must be a number", reason="bad_schema")
    values = obj.get("values", [])
    if not isinstance(values, list) or not all(_num(x) for x in values):
        raise DecodeError("alert.values must be a list of numbers", reason="bad_schema")
    sensor_type = obj.get("sensor_type", "")
    if not isinstance(sensor_type, str):
        raise DecodeError("alert.sensor_type must be a string", reason="bad_schema")
    return Alert(
        id=ident,
        device_id=validate_device_id(_str(obj, "device_id", "alert")),
        field=_str(obj, "field", "alert"),
        sensor_type=sensor_type,
        detector=_str(obj, "detector", "alert", max_len=32),
        state=state,
        start_ms=_int(obj, "start_ms", "alert"),
        end_ms=_int(obj, "end_ms", "alert"),
        peak_ms=_int(obj, "peak_ms", "alert"),
        peak_score=float(score),
        count=_int(obj, "count", "alert"),
        values=tuple(float(x) for x in values),
    )


def encode(message: Batch | Receipt | Status | Health | ConfigDocument | ConfigReport | Alert) -> bytes:
    """The exact bytes sent for ``message`` (compact JSON, keys in declaration order)."""
    return orjson.dumps(message.to_json())
