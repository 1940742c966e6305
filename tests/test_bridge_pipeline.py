"""The pure pipeline: each rejection reason, partial batches, the replay rule, and fuzzing (nothing
but Accepted/Rejected comes out, whatever the bytes)."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker_bridge.ledger import missing_ranges
from broker_bridge.pipeline import Accepted, DeviceKey, Rejected, checked_points, key_id_of, process, replay_decision
from broker_bridge.ratelimit import RateLimiter
from broker_bridge.testing import make_batch, sealed
from iot_protocol import (
    Batch,
    Reading,
    ReadingProblem,
    Topics,
    check_reading,
    generate_private_key,
    jws,
    public_key_raw,
    seal_batch,
)
from iot_protocol.validation import FIELD_RANGES, MIN_TS_MS

TOPICS = Topics("t")
KEY = generate_private_key()
OTHER = generate_private_key()
DEVICES = {
    "d1": DeviceKey("d1", public_key_raw(KEY), True, "lab"),
    "d2": DeviceKey("d2", public_key_raw(OTHER), True, "hall"),
    "off": DeviceKey("off", public_key_raw(KEY), False, "lab"),
}
NOW = int(time.time() * 1000)


def run(payload: bytes, device: str = "d1", topic: str | None = None) -> Accepted | Rejected:
    return process(
        topic or TOPICS.telemetry(device), payload, topics=TOPICS, lookup=DEVICES.get, now_ms=NOW, max_skew_ms=60_000
    )


def reason(payload: bytes, device: str = "d1", topic: str | None = None) -> str:
    out = run(payload, device, topic)
    assert isinstance(out, Rejected), out
    return out.reason


def test_valid_batch_becomes_points_with_location_and_quality() -> None:
    out = run(sealed(make_batch("d1", 7, 3, ts0=NOW - 10_000), KEY))
    assert isinstance(out, Accepted)
    assert out.batch.seq == 7 and len(out.points) == 3 and not out.problems
    p = out.points[0]
    assert (p.device_id, p.location, p.sensor_type) == ("d1", "lab", "bme280")
    assert p.fields["temperature"] == 21.5 and p.fields["quality_score"] == 0.9


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", "bad_envelope"),
        (b"not a jws at all", "bad_envelope"),
        (b"a.b.c", "bad_envelope"),
        (b"x" * (300 * 1024), "too_large"),
    ],
)
def test_malformed_envelopes(payload: bytes, expected: str) -> None:
    assert reason(payload) == expected


def _signed_raw(body: bytes, key=KEY, kid: str = "d1") -> bytes:
    return jws.sign(body, key, kid=kid, typ="edu.batch.v1")


def test_every_whole_message_reason_is_distinct() -> None:
    good = make_batch("d1", 1, 1, ts0=NOW - 1000)
    assert reason(_signed_raw(b"{not json")) == "bad_json"
    assert reason(_signed_raw(b'{"v":1,"device_id":"d1"}')) == "bad_schema"
    assert reason(_signed_raw(b'{"v":2}')) == "unsupported_version"
    assert reason(sealed(good, KEY), device="nobody") == "unknown_device"
    assert reason(sealed(make_batch("off", 1, 1, ts0=NOW), KEY), device="off") == "inactive_device"
    assert reason(sealed(good, OTHER)) == "bad_signature"
    # d2 signs its own batch but publishes it on d1's topic
    assert reason(sealed(make_batch("d2", 1, 1, ts0=NOW), OTHER), topic=TOPICS.telemetry("d1")) == "device_mismatch"
    # signed as d1 (kid) but the payload names d2
    forged = _signed_raw(make_batch("d2", 1, 1, ts0=NOW).to_json().__repr__().encode())
    assert reason(forged) in ("bad_json", "device_mismatch")
    body = (
        b'{"v":1,"device_id":"d2","batch_id":"b","seq":1,"sent_at":1,"readings":[{"ts":%d,'
        b'"sensor_type":"x","values":{"temperature":1.0}}]}' % NOW
    )
    assert reason(_signed_raw(body)) == "device_mismatch"
    assert reason(sealed(good, KEY), topic="t/devices/d1/health") == "bad_topic"
    assert reason(sealed(good, KEY), topic="elsewhere/d1") == "bad_topic"


def test_invalid_readings_are_reported_by_index_and_the_rest_kept() -> None:
    readings = (
        Reading(NOW - 5, "bme280", {"temperature": 20.0}),
        Reading(NOW + 3_600_000, "bme280", {"temperature": 20.0}),  # future
        Reading(1_000, "bme280", {"temperature": 20.0}),  # clock never set
        Reading(NOW - 4, "bme280", {"pressure": 10.0}),
        Reading(NOW - 3, "bme280", {"humidity": 140.0}),
        Reading(NOW - 2, "bme280", {"temperature": 20.0}, quality=1.5),
        Reading(NOW - 1, "bme280", {"temperature": 20.5}),
    )
    out = run(seal_batch(Batch("d1", "b", 3, NOW, readings), KEY))
    assert isinstance(out, Accepted)
    assert [(p.index, p.reason) for p in out.problems] == [
        (1, "future_timestamp"),
        (2, "stale_timestamp"),
        (3, "out_of_range"),
        (4, "out_of_range"),
        (5, "bad_quality"),
    ]
    assert [p.ts_ms for p in out.points] == [NOW - 5, NOW - 1]


_edge_floats = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, 100.0, 100.0000001, -60.0, 1e308])
_values = st.dictionaries(
    st.sampled_from([*FIELD_RANGES, "custom", "x"]),
    _edge_floats | st.floats(-2000, 2000) | st.integers(-2000, 2000),
    min_size=1,
    max_size=4,
)
_readings = st.builds(
    Reading,
    ts=st.sampled_from([MIN_TS_MS - 1, MIN_TS_MS, NOW, NOW + 60_000, NOW + 60_001]) | st.integers(0, 2 * NOW),
    sensor_type=st.sampled_from(["bme280", "env"]),
    values=_values,
    quality=_edge_floats | st.floats(-1, 2),
)


@given(st.lists(_readings, min_size=1, max_size=20))
def test_checked_points_decides_exactly_as_check_reading(readings: list[Reading]) -> None:
    """The bridge's one-pass check keeps exactly the readings check_reading passes (and the first of
    each (sensor type, ts): a repeat is duplicate_timestamp), with the same problems, and builds their
    points (quality travelling as quality_score unless a value has it)."""
    batch = Batch("d1", "b", 1, NOW, tuple(readings))
    points, problems, indexes = checked_points(batch, "lab", now_ms=NOW, max_skew_ms=60_000)
    expected = [check_reading(r, i, now_ms=NOW, max_skew_ms=60_000) for i, r in enumerate(readings)]
    seen: set[tuple[str, int]] = set()
    kept: list[int] = []
    for i, (r, problem) in enumerate(zip(readings, expected, strict=True)):
        if problem is None and (r.sensor_type, r.ts) in seen:
            expected[i] = ReadingProblem(i, "duplicate_timestamp", f"{r.sensor_type} at ts {r.ts} twice in the batch")
        elif problem is None:
            seen.add((r.sensor_type, r.ts))
            kept.append(i)
    assert list(problems) == [p for p in expected if p is not None]
    assert (list(indexes) if indexes is not None else list(range(len(readings)))) == kept
    assert [(p.device_id, p.location, p.sensor_type, p.ts_ms) for p in points] == [
        ("d1", "lab", readings[i].sensor_type, readings[i].ts) for i in kept
    ]
    assert [p.fields for p in points] == [{"quality_score": readings[i].quality, **readings[i].values} for i in kept]


def test_non_finite_cannot_travel_in_json_but_is_checked() -> None:
    # JSON has no infinity (orjson writes null), so it arrives as a malformed reading; check_reading
    # still guards values that reach it by another route.
    out = run(seal_batch(Batch("d1", "b", 3, NOW, (Reading(NOW, "x", {"t": math.inf}),)), KEY))
    assert isinstance(out, Accepted) and not out.points
    assert [(p.index, p.reason) for p in out.problems] == [(0, "bad_reading")]


def test_replay_rule_is_scoped_to_the_signing_key() -> None:
    assert replay_decision("h1", "k1", None) == "new"
    assert replay_decision("h1", "k1", ("h1", "k1")) == "duplicate"
    assert replay_decision("h1", "k1", ("h2", "k1")) == "replayed"
    # another key signed the stored seq: the device re-enrolled or was rotated, a new seq epoch
    assert replay_decision("h1", "k2", ("h2", "k1")) == "new"
    # a row from before key epochs were recorded counts as an older epoch
    assert replay_decision("h1", "k2", ("h2", None)) == "new"
    assert replay_decision("h1", "k2", ("h1", None)) == "duplicate"


def test_accepted_batches_carry_the_signing_key_id() -> None:
    out = run(sealed(make_batch("d1", 7, 1, ts0=NOW - 10_000), KEY))
    assert isinstance(out, Accepted)
    assert out.key_id == key_id_of(public_key_raw(KEY)) and len(out.key_id) == 16
    other = run(sealed(make_batch("d2", 7, 1, ts0=NOW - 10_000), OTHER), device="d2")
    assert isinstance(other, Accepted) and other.key_id != out.key_id


def test_rate_limiter_token_bucket() -> None:
    lim = RateLimiter(rate=8, burst=3)  # times in binary fractions: exact arithmetic
    assert [lim.allow("a", 100.0) for _ in range(5)] == [True, True, True, False, False]
    assert lim.allow("b", 100.0)  # per device
    assert not lim.allow("a", 100.0625)  # half a token
    assert lim.allow("a", 100.125) and not lim.allow("a", 100.125)  # one token after 1/8 s
    assert [lim.allow("a", 200.0) for _ in range(4)] == [True, True, True, False]  # refilled to the burst only
    assert not lim.allow("a", 150.0)  # the clock stepped back: nothing added


def test_missing_ranges() -> None:
    assert missing_ranges([1, 2, 5, 9], first=1, last=10) == [(3, 4), (6, 8), (10, 10)]
    assert missing_ranges([], first=1, last=3) == [(1, 3)]
    assert missing_ranges([1, 2, 3], first=1, last=3) == []


VALID = sealed(make_batch("d1", 1, 2, ts0=NOW - 1000), KEY)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_never_escape(payload: bytes) -> None:
    assert isinstance(run(payload), Rejected)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(VALID) * 8 - 1))
def test_fuzz_single_bit_flips_are_rejected(bit: int) -> None:
    data = bytearray(VALID)
    data[bit // 8] ^= 1 << (bit % 8)
    assert isinstance(run(bytes(data)), Rejected)


def _json_nest(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return inner | st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)


# Two levels of nesting built explicitly, not with st.recursive: its check that ``extend`` uses its
# argument reads the function's source, and failed spuriously in full-suite runs (warnings are errors).
json_values = _json_nest(_json_nest(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)))


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["v", "device_id", "batch_id", "seq", "sent_at", "readings", "x"]), json_values, max_size=7
    ),
    st.lists(
        st.dictionaries(st.sampled_from(["ts", "sensor_type", "values", "quality", "flags"]), json_values, max_size=5),
        max_size=3,
    ),
)
def test_fuzz_signed_garbage_is_rejected_or_accepted_never_raises(obj: dict, readings: list) -> None:
    import orjson

    if readings:
        obj["readings"] = readings
    try:
        body = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return
    out = run(_signed_raw(body))
    assert isinstance(out, Accepted | Rejected)


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455])
def test_remaining_length_is_written_as_paho_writes_it_and_read_back(n: int) -> None:
    """publish_many builds its PUBLISH packets itself; their length prefix must be MQTT's variable
    byte integer exactly as paho writes it (the end-to-end receipt tests cover the rest), and the
    bridge's own packet reader must read it back."""
    import paho.mqtt.client as mqtt

    from broker_bridge.mqtt import _read_varint, _varint

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    encoded = _varint(n)
    assert encoded == bytes(client._pack_remaining_length(bytearray(), n))
    # ... and the reader of received packets reads it back, and sees when a read cut it short
    assert _read_varint(b"x" + encoded + b"y", 1, 1 + len(encoded)) == (n, 1 + len(encoded))
    assert _read_varint(encoded, 0, len(encoded) - 1) is None


def _publish_packet(topic: bytes, mid: int, qos: int, payload: bytes, props: bytes) -> bytes:
    """A PUBLISH packet as the broker sends it (MQTT 5: ``props`` is the property block)."""
    from broker_bridge.mqtt import _varint

    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"") + props + payload
    return bytes([0x30 | qos << 1]) + _varint(len(body)) + body


_publishes = st.lists(
    st.tuples(
        st.binary(min_size=1, max_size=40),  # topic
        st.integers(1, 65535),  # packet id
        st.sampled_from([0, 1]),  # qos
        st.binary(max_size=300),  # payload
        st.booleans(),  # with MQTT 5 properties (a user property) or none
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=_publishes, cuts=st.lists(st.integers(0, 20_000), max_size=4), ping_at=st.integers(0, 30))
def test_bridge_client_reads_every_publish_however_the_stream_is_cut(
    msgs: list[tuple[bytes, int, int, bytes, bool]], cuts: list[int], ping_at: int
) -> None:
    """The bridge's MQTT client parses the PUBLISH packets of its receive buffer itself and leaves the
    rest (here a PINGRESP, and packets cut by the end of a read) to paho's reader. Whatever the packets
    and wherever the TCP stream is cut, every message arrives once, in order, with its topic, packet
    id, QoS and payload, and MQTT 5 properties never leak into the payload."""
    import socket

    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from broker_bridge.mqtt import _LeanClient

    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("source", "device")
    packed_props = bytes(props.pack())
    stream = [_publish_packet(t, mid, q, p, packed_props if has else b"\0") for t, mid, q, p, has in msgs]
    stream.insert(min(ping_at, len(stream)), b"\xd0\x00")  # PINGRESP: not a PUBLISH, paho handles it
    data = b"".join(stream)

    client = _LeanClient(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
    got: list[tuple[bytes, int, int, bytes]] = []
    client.on_raw_publish = lambda *m: got.append(m)
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours  # type: ignore[assignment]
    try:
        start = 0
        for cut in sorted({c % (len(data) + 1) for c in cuts} | {len(data)}):
            broker.sendall(data[start:cut])
            start = cut
            for _ in range(3):  # a read may stop mid-packet; the next one goes on from there
                assert client.loop_read() == 0
    finally:
        client._sock = None
        ours.close()
        broker.close()
    assert got == [(t, mid if q else 0, q, p) for t, mid, q, p, _ in msgs]


# ---- the bridge's msgspec decoder (broker_bridge.wire) agrees with the contract's reference decoder ----
def _assert_same_batch(wire: object, ref: Batch) -> None:
    """Same fields, same values, same types (an int stays an int, quality is always a float)."""

    def shape(b: object) -> list[object]:
        out: list[object] = [(getattr(b, k), type(getattr(b, k))) for k in ("device_id", "batch_id", "seq", "sent_at")]
        for r in b.readings:  # type: ignore[attr-defined]
            out.append((r.ts, type(r.ts), r.sensor_type, r.quality, type(r.quality), tuple(r.flags)))
            out.append([(k, v, type(v)) for k, v in r.values.items()])
        return out

    assert shape(wire) == shape(ref)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
)


def _mostly(valid: st.SearchStrategy[object], *invalid: object) -> st.SearchStrategy[object]:
    """``valid`` three times in four, else one of ``invalid`` or any JSON scalar: whole batches that
    are valid but for one field are common, which is where two decoders can disagree."""
    return st.one_of(valid, valid, valid, st.one_of(st.sampled_from(invalid), _scalars) if invalid else _scalars)


_names = _mostly(st.sampled_from(["temperature", "humidity", "µ" * 64, "x" * 64]), "µ" * 65, "x" * 65, "")
_numbers = _mostly(
    st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**63), 2**63 - 1)),
    2**63,
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    -(2**64),
)
_readings = st.fixed_dictionaries(
    {
        "ts": _mostly(st.integers(1_700_000_000_000, 1_800_000_000_000), 0, -1, 2**63, 2**64),
        "sensor_type": _mostly(st.sampled_from(["bme280", "x" * 64]), "x" * 65, ""),
        "values": _mostly(st.dictionaries(_names, _numbers, min_size=1, max_size=4), {}),
    },
    optional={
        "quality": _mostly(st.one_of(st.floats(0, 1), st.sampled_from([0, 1])), True),
        "flags": _mostly(st.lists(st.sampled_from(["stale", "x" * 64]), max_size=2), ["x" * 65], [1]),
        "extra": _scalars,
    },
)
_batches = st.fixed_dictionaries(
    {
        "v": _mostly(st.just(1), 1.0, True, 2, "1"),
        "device_id": _mostly(st.sampled_from(["dev-1", "x" * 64]), "dev-1\n", "", "x" * 65, "a b"),
        "batch_id": _mostly(st.sampled_from(["b-1", "x" * 128]), "", "x" * 129),
        "seq": _mostly(st.integers(0, 10), -1, 2**63, 2**64, 1.0, True),
        "sent_at": _mostly(st.integers(1_700_000_000_000, 1_800_000_000_000), -1, 2**64),
        "readings": _mostly(st.lists(_readings, min_size=1, max_size=3), []),
    },
    optional={"extra": _scalars},
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=_batches)
def test_wire_decoder_accepts_only_what_the_reference_accepts_with_the_same_values(obj: dict[str, object]) -> None:
    """The bridge decodes batches with msgspec and hands whatever msgspec refuses to decode_batch. For
    that to change no outcome, anything msgspec accepts must be accepted by the reference decoder with
    the same values and types; the reference then names the error of everything else."""
    import json

    from broker_bridge.wire import decode_batch_fast, decode_wire
    from iot_protocol import ProtocolError
    from iot_protocol.messages import decode_batch

    payload = json.dumps(obj).encode()  # the standard library writes integers of any size
    wire = decode_wire(payload)
    try:
        ref = decode_batch(payload)
    except ProtocolError as exc:
        assert wire is None
        with pytest.raises(ProtocolError) as fast_exc:
            decode_batch_fast(payload)
        assert (fast_exc.value.reason, str(fast_exc.value)) == (exc.reason, str(exc))
        return
    if wire is not None:
        assert not ref.malformed, "the fast decoder accepted a batch with a malformed reading"
        _assert_same_batch(wire, ref)
    fast = decode_batch_fast(payload)
    _assert_same_batch(fast, ref)
    assert fast.malformed == ref.malformed


_HEAD = b'{"v":1,"device_id":"d","batch_id":"b","seq":1,"sent_at":1,"readings":'


@pytest.mark.parametrize(
    "payload",
    [
        _HEAD + b'[{"ts":1,"sensor_type":"s","values":{"x":1,"x":2.5}}]}',
        b'{"v":1,"device_id":"d","batch_id":"b","seq":1,"seq":2,"sent_at":1,"readings":[{"ts":1,"sensor_type":"s","values":{"x":1}}]}',
        _HEAD + b'[{"ts":1,"sensor_type":"s","values":{"x":1e400}}]}',
        _HEAD + b'[{"ts":1,"sensor_type":"s","values":{"\\ud800":1}}]}',
        _HEAD + b'[{"ts":1,"sensor_type":"s","values":{"x":NaN}}]}',
        _HEAD + b'[{"ts":1,"sensor_type":"s","values":{"x":1}}]} x',
        b'\xef\xbb\xbf{"v":1,"device_id":"d","batch_id":"b","seq":1,"sent_at":1,"readings":[]}',
        _HEAD + b'[{"ts":1,"sensor_type":"s","values":{"x":1}}]}',
        _HEAD + b'[{"ts":1,"sensor_type":"s","values":{"x":-0.0},"quality":1}]}',
        b'{"v":1,"device_id":"d","batch_id":"b","seq":18446744073709551615,"sent_at":1,"readings":[{"ts":1,"sensor_type":"s","values":{"x":1}}]}',
        _HEAD + b'[{"ts":1,"sensor_type":"s","values":{"x":18446744073709551616}}]}',
        _HEAD + b'[{"ts":1,"sensor_type":"s","values":{"x":1}}],"readings":7}',
        b"[1]",
        b"\xff",
    ],
)
def test_wire_decoder_agrees_on_raw_json_edge_cases(payload: bytes) -> None:
    """Duplicate keys, numbers out of range, lone surrogates, NaN, trailing bytes, a BOM, integers past
    int64 and past uint64: where JSON parsers tend to differ."""
    from broker_bridge.wire import decode_wire
    from iot_protocol import ProtocolError
    from iot_protocol.messages import decode_batch

    wire = decode_wire(payload)
    try:
        ref = decode_batch(payload)
    except ProtocolError:
        assert wire is None
        return
    if wire is not None:
        _assert_same_batch(wire, ref)


_ODD_VALUES = [
    None, True, False, 0, 1, -1, 1.0, 0.5, "", "x", "x" * 64, "x" * 65, "µ" * 64, "µ" * 65, "x" * 128, "x" * 129,
    "dev-1\n", "a b",
    2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, [], [1], ["x" * 65], {}, {"x": 1}, {"": 1},
]  # fmt: skip
_FIELDS = [
    ("v",), ("device_id",), ("batch_id",), ("seq",), ("sent_at",), ("readings",),
    ("readings", 0, "ts"), ("readings", 0, "sensor_type"), ("readings", 0, "values"), ("readings", 0, "quality"),
    ("readings", 0, "flags"), ("readings", 0, "values", "temperature"), ("readings", 0, "values", "x" * 64),
    ("readings", 0, "values", "x" * 65), ("readings", 0, "values", ""),
]  # fmt: skip


@pytest.mark.parametrize("path", _FIELDS, ids=lambda p: "/".join(map(str, p))[:40])
def test_wire_decoder_agrees_when_any_one_field_is_odd(path: tuple[str | int, ...]) -> None:
    """A valid batch with one field replaced by each of a list of odd values (wrong types, bounds,
    int64 and uint64 limits, a device id ending in a newline...): both decoders decide alike."""
    import json

    from broker_bridge.wire import decode_wire
    from iot_protocol import ProtocolError
    from iot_protocol.messages import decode_batch

    for odd in _ODD_VALUES:
        obj = make_batch("dev-1", 3, 2).to_json()
        target: Any = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = odd
        payload = json.dumps(obj).encode()
        wire = decode_wire(payload)
        try:
            ref = decode_batch(payload)
        except ProtocolError:
            assert wire is None, f"{path}={odd!r}: the fast decoder accepts what the reference refuses"
            continue
        if wire is not None:
            _assert_same_batch(wire, ref)


def test_wire_decoder_takes_the_devices_batches() -> None:
    """The fast path is the one taken for what devices send (or the bridge would only be slower)."""
    from broker_bridge.wire import WireBatch, decode_wire
    from iot_protocol.messages import decode_batch, encode

    for n in (1, 50, 1000):
        payload = encode(make_batch("dev-1", 3, n))
        wire = decode_wire(payload)
        assert isinstance(wire, WireBatch)
        _assert_same_batch(wire, decode_batch(payload))
