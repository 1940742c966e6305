"""The bridge's fast decoder of telemetry batches: msgspec decodes and checks a batch in C.

:func:`iot_protocol.decode_batch` parses with orjson and then checks every field of every reading in
Python, about 2 us per reading on the project machine; msgspec does both in about 0.6 us. The types
below spell the contract's batch rules (docs/protocol.md) as msgspec constraints, narrowed so that
whatever msgspec accepts, the reference decoder accepts with the same values, of the same types:

* integers are bounded by the contract (seq 0..MAX_SEQ, times 0..MAX_TIMESTAMP) and values stay within
  int64 (orjson reads integers up to 2**64-1 as integers and longer ones as floats, msgspec would keep
  them all integers; its bounds cannot go past int64, so 2**63 .. 2**64-1 take the reference path);
* ``v`` must be the integer 1 (the reference also lets ``1.0`` and ``true`` through; those take the
  reference path, like every other input msgspec refuses);
* a payload that repeats a member name is refused (msgspec, like orjson, keeps the last one): the
  members decoded are counted and compared with the payload's ``:`` bytes, as
  :func:`iot_protocol._json.has_duplicates` does, which decides exactly when they differ. To count
  them, ``quality`` and ``flags`` default to values JSON cannot carry (NaN, UNSET) and are set to the
  contract's defaults afterwards;
* a batch with a malformed reading is refused as a whole; the reference decoder then sets the reading
  aside (``Batch.malformed``).

Anything msgspec refuses goes to :func:`iot_protocol.decode_batch`, which accepts it or raises the
error naming the rule it breaks: the fast path changes speed, never an outcome. The values decoded
here are msgspec Structs with the same fields as :class:`iot_protocol.Batch` and
:class:`iot_protocol.Reading` (not tracked by the garbage collector: they hold no cycles; readings are
not frozen only so the defaults can be set after decoding, and nothing changes them later), so the
bridge reads them exactly as it reads those. tests/test_bridge_pipeline.py checks the agreement on
generated and hand-written edge cases.
"""

from __future__ import annotations

from typing import Annotated, Literal, cast

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from iot_protocol import Batch, ReadingProblem
from iot_protocol._json import has_duplicates
from iot_protocol.messages import (
    MAX_BATCH_ID_LENGTH,
    MAX_FIELDS_PER_READING,
    MAX_FLAGS_PER_READING,
    MAX_NAME_LENGTH,
    MAX_READINGS_PER_BATCH,
    MAX_SEQ,
    MAX_TIMESTAMP,
    decode_batch,
)
from iot_protocol.topics import DEVICE_ID_RE

__all__ = ["WireBatch", "WireReading", "decode_batch_fast", "decode_wire"]

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
_Time = Annotated[int, Meta(ge=0, le=MAX_TIMESTAMP)]
_Number = Annotated[int, Meta(ge=_I64_MIN, le=_I64_MAX)] | float
_Flags = Annotated[
    tuple[Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LENGTH)], ...], Meta(max_length=MAX_FLAGS_PER_READING)
]
_NO_FLAGS: tuple[str, ...] = ()
_NO_PROBLEMS: tuple[ReadingProblem, ...] = ()


class WireReading(Struct, gc=False):
    ts: _Time
    sensor_type: _Name
    values: Annotated[dict[_Name, _Number], Meta(min_length=1, max_length=MAX_FIELDS_PER_READING)]
    quality: float = float("nan")  # absent; set to 1.0 (an integer quality becomes a float, as float(quality))
    flags: _Flags | UnsetType = UNSET  # absent; set to ()


class WireBatch(Struct, frozen=True, gc=False):
    v: Literal[1]
    device_id: Annotated[str, Meta(pattern=DEVICE_ID_RE.pattern)]
    batch_id: Annotated[str, Meta(min_length=1, max_length=MAX_BATCH_ID_LENGTH)]
    seq: Annotated[int, Meta(ge=0, le=MAX_SEQ)]
    sent_at: _Time
    readings: Annotated[tuple[WireReading, ...], Meta(min_length=1, max_length=MAX_READINGS_PER_BATCH)]

    @property
    def malformed(self) -> tuple[ReadingProblem, ...]:
        """Always empty: a batch with a malformed reading takes the reference path."""
        return _NO_PROBLEMS


_decoder = msgspec.json.Decoder(WireBatch)


def decode_wire(payload: bytes) -> WireBatch | None:
    """The batch in ``payload`` when msgspec accepts it and it repeats no member name, else None (the
    reference decides)."""
    try:
        batch = _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    # v, device_id, batch_id, seq, sent_at, readings (all required); per reading ts, sensor_type, values
    # (required), quality and flags (counted, then subtracted where absent), and the values
    members = 6
    unset, no_flags = UNSET, _NO_FLAGS
    for r in batch.readings:
        members += 5 + len(r.values)
        if r.quality != r.quality:  # NaN: absent
            r.quality = 1.0
            members -= 1
        if r.flags is unset:
            r.flags = no_flags
            members -= 1
    if payload.count(b":") != members and has_duplicates(payload, members):
        return None
    return batch


def decode_batch_fast(payload: bytes) -> Batch:
    """:func:`iot_protocol.decode_batch`, with the same outcome for every input, faster for valid ones.

    The result of the fast path is a :class:`WireBatch`: typed here as the Batch it stands for (same
    fields, same values), since everything downstream only reads those fields."""
    wire = decode_wire(payload)
    if wire is None:
        return decode_batch(payload)
    return cast(Batch, wire)
