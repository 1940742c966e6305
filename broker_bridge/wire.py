"""The bridge's fast decoder of telemetry batches: msgspec decodes and checks a batch in C.

:func:`iot_protocol.decode_batch` parses with orjson and then checks every field of every reading in
Python, about 2 us per reading on the project machine; msgspec does both in about 0.6 us. The types
below spell the contract's batch rules (docs/protocol.md) as msgspec constraints, narrowed so that
whatever msgspec accepts, the reference decoder accepts with the same values, of the same types:

* integers stay within int64 (orjson reads integers up to 2**64-1 as integers and longer ones as
  floats, msgspec would keep them all integers; its bounds cannot go past int64, so 2**63 .. 2**64-1
  take the reference path);
* ``v`` must be the integer 1 (the reference also lets ``1.0`` and ``true`` through; those take the
  reference path, like every other input msgspec refuses).

Anything msgspec refuses goes to :func:`iot_protocol.decode_batch`, which accepts it or raises the
error naming the rule it breaks: the fast path changes speed, never an outcome. The values decoded
here are msgspec Structs with the same fields as :class:`iot_protocol.Batch` and
:class:`iot_protocol.Reading` (frozen, and not tracked by the garbage collector: they hold no
cycles), so the bridge reads them exactly as it reads those. tests/test_bridge_pipeline.py checks the
agreement on generated and hand-written edge cases.
"""

from __future__ import annotations

from typing import Annotated, Literal, cast

import msgspec
from msgspec import Meta, Struct

from iot_protocol import Batch
from iot_protocol.messages import MAX_BATCH_ID_LENGTH, MAX_NAME_LENGTH, MAX_READINGS_PER_BATCH, decode_batch
from iot_protocol.topics import DEVICE_ID_RE

__all__ = ["WireBatch", "WireReading", "decode_batch_fast", "decode_wire"]

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
_Count = Annotated[int, Meta(ge=0, le=_I64_MAX)]
_Number = Annotated[int, Meta(ge=_I64_MIN, le=_I64_MAX)] | float


class WireReading(Struct, frozen=True, gc=False):
    ts: _Count
    sensor_type: _Name
    values: Annotated[dict[_Name, _Number], Meta(min_length=1)]
    quality: float = 1.0  # an integer quality becomes a float, as the reference's float(quality)
    flags: tuple[Annotated[str, Meta(max_length=MAX_NAME_LENGTH)], ...] = ()


class WireBatch(Struct, frozen=True, gc=False):
    v: Literal[1]
    device_id: Annotated[str, Meta(pattern=DEVICE_ID_RE.pattern)]
    batch_id: Annotated[str, Meta(min_length=1, max_length=MAX_BATCH_ID_LENGTH)]
    seq: _Count
    sent_at: _Count
    readings: Annotated[tuple[WireReading, ...], Meta(min_length=1, max_length=MAX_READINGS_PER_BATCH)]


_decoder = msgspec.json.Decoder(WireBatch)


def decode_wire(payload: bytes) -> WireBatch | None:
    """The batch in ``payload`` when msgspec accepts it, else None (the reference decides)."""
    try:
        return _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def decode_batch_fast(payload: bytes) -> Batch:
    """:func:`iot_protocol.decode_batch`, with the same outcome for every input, faster for valid ones.

    The result of the fast path is a :class:`WireBatch`: typed here as the Batch it stands for (same
    fields, same values), since everything downstream only reads those fields."""
    wire = decode_wire(payload)
    if wire is None:
        return decode_batch(payload)
    return cast(Batch, wire)
