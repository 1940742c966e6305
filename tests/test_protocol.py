"""The wire contract: golden bytes from docs/protocol.md, RFC 8037 interop, and fuzzed decoders."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import iot_protocol as p
from iot_protocol import jws

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def vector(name: str) -> str:
    """A test vector from docs/protocol.md: the line after the marker ``<!-- vector:NAME -->``."""
    match = re.search(rf"<!-- vector:{name} -->\s*```\w*\n(.*?)\n```", DOC.read_text(), re.S)
    assert match, f"docs/protocol.md has no vector {name!r}"
    return match.group(1).strip()


DEVICE_KEY = p.private_key_from_seed(bytes.fromhex(vector("device_seed")))
CLOUD_KEY = p.private_key_from_seed(bytes.fromhex(vector("cloud_seed")))


def example_batch() -> p.Batch:
    return p.Batch(
        "greenhouse-01",
        "0f8a7c1e-3b5d-4f6a-9c2e-7d1b8a4e5f60",
        42,
        1764115200500,
        (
            p.Reading(1764115200000, "environment", {"temperature": 21.5, "humidity": 48.25, "pressure": 1013.2}),
            p.Reading(
                1764115260000,
                "environment",
                {"temperature": 21.625, "humidity": 48.0, "pressure": 1013.1},
                0.5,
                ("noisy",),
            ),
        ),
    )


def test_rfc8037_example_verifies_and_signs_identically() -> None:
    """Interop: RFC 8037 appendix A.4, so any JOSE library can check our tokens."""
    key = p.private_key_from_seed(jws.b64url_decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"))
    assert p.public_key_b64(key) == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    token = vector("rfc8037_a4").encode()
    assert jws.verify_token(token, p.public_key_raw(key)).payload == b"Example of Ed25519 signing"
    h64, p64, s64 = token.split(b".")
    assert jws.b64url_encode(key.sign(h64 + b"." + p64)) == s64


def test_device_public_key_vector() -> None:
    assert p.public_key_b64(DEVICE_KEY) == vector("device_public_key")
    assert p.public_key_b64(CLOUD_KEY) == vector("cloud_public_key")


def test_batch_payload_and_token_golden_bytes() -> None:
    assert p.encode(example_batch()).decode() == vector("batch_payload")
    assert p.seal_batch(example_batch(), DEVICE_KEY).decode() == vector("batch_token")


def test_batch_token_opens_to_the_same_batch() -> None:
    batch = p.open_batch(
        vector("batch_token").encode(), topic_device="greenhouse-01", public_key=p.public_key_raw(DEVICE_KEY)
    )
    assert batch == example_batch()


def test_config_golden_bytes_and_open() -> None:
    doc = p.ConfigDocument(
        "greenhouse-01", 3, 1764115300000, {"sampling_interval_s": 30.0, "calibration_offsets": {"temperature": -0.4}}
    )
    assert p.encode(doc).decode() == vector("config_payload")
    token = p.seal_config(doc, CLOUD_KEY)
    assert token.decode() == vector("config_token")
    opened = p.open_config(token, device_id="greenhouse-01", cloud_public_key=p.public_key_raw(CLOUD_KEY))
    assert opened == doc


def test_receipt_golden_bytes_round_trip() -> None:
    receipt = p.Receipt((41, 42), (p.Rejection(43, "bad_signature"),))
    assert p.encode(receipt).decode() == vector("receipt")
    assert p.decode_receipt(p.encode(receipt)) == receipt


def test_batch_signed_by_another_device_is_refused() -> None:
    token = p.seal_batch(example_batch(), DEVICE_KEY)
    with pytest.raises(p.SignatureError) as err:
        p.open_batch(token, topic_device="greenhouse-02", public_key=p.public_key_raw(DEVICE_KEY))
    assert err.value.reason == "device_mismatch"


def test_batch_verified_with_wrong_key_is_refused() -> None:
    token = p.seal_batch(example_batch(), DEVICE_KEY)
    with pytest.raises(p.SignatureError) as err:
        p.open_batch(token, topic_device="greenhouse-01", public_key=p.public_key_raw(CLOUD_KEY))
    assert err.value.reason == "bad_signature"


def test_config_signed_by_a_device_key_is_refused() -> None:
    doc = p.ConfigDocument("greenhouse-01", 9, 1764115300000, {"sampling_interval_s": 1.0})
    forged = p.seal_config(doc, DEVICE_KEY)
    with pytest.raises(p.SignatureError):
        p.open_config(forged, device_id="greenhouse-01", cloud_public_key=p.public_key_raw(CLOUD_KEY))


def test_unsupported_version_is_named() -> None:
    with pytest.raises(p.UnsupportedVersion) as err:
        p.decode_batch(b'{"v":2}')
    assert "version 2" in str(err.value)


def test_topics_round_trip_and_reject_wildcards() -> None:
    topics = p.Topics("school")
    assert topics.telemetry("dev-1") == "school/devices/dev-1/telemetry"
    assert topics.parse("school/devices/dev-1/config/desired") == ("dev-1", p.Kind.CONFIG_DESIRED)
    for bad in ("a/b", "+", "#", "", "x" * 65, "dev 1", "dev-1\n"):
        with pytest.raises(p.TopicError):
            topics.telemetry(bad)
    for bad_topic in ("school/devices/dev-1/nonsense", "school/devices/dev-1\n/telemetry", "other/devices/d/health"):
        for _ in range(2):  # parsed topics are cached: a bad one must fail every time
            with pytest.raises(p.TopicError):
                topics.parse(bad_topic)
    with pytest.raises(p.TopicError):
        p.Topics("school\n")
    with pytest.raises(p.TopicError):  # the same topic under another prefix is another answer
        p.Topics("lab").parse("school/devices/dev-1/telemetry")


def test_reading_checks_name_the_rule() -> None:
    now = 1764115200000
    ok = p.Reading(now, "environment", {"temperature": 20.0})
    assert p.check_reading(ok, 0, now_ms=now, max_skew_ms=60_000) is None
    cases = {
        "future_timestamp": p.Reading(now + 120_000, "environment", {"temperature": 20.0}),
        "stale_timestamp": p.Reading(1000, "environment", {"temperature": 20.0}),
        "non_finite": p.Reading(now, "environment", {"temperature": float("nan")}),
        "out_of_range": p.Reading(now, "environment", {"humidity": 130.0}),
        "bad_quality": p.Reading(now, "environment", {"temperature": 20.0}, quality=1.5),
    }
    for reason, reading in cases.items():
        problem = p.check_reading(reading, 3, now_ms=now, max_skew_ms=60_000)
        assert problem is not None and problem.reason == reason and problem.index == 3


def test_settings_errors_name_the_field() -> None:
    assert p.parse_settings({"sampling_interval_s": 5}).sampling_interval_s == 5
    with pytest.raises(p.ValidationError, match="sampling_interval_s"):
        p.parse_settings({"sampling_interval_s": -1})
    with pytest.raises(p.ValidationError, match="colour"):
        p.parse_settings({"colour": "red"})


# ---- properties ----------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e6, max_value=1e6)
names = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_"), min_size=1, max_size=12)
readings = st.builds(
    p.Reading,
    ts=st.integers(1_600_000_000_000, 2_000_000_000_000),
    sensor_type=names,
    values=st.dictionaries(names, finite, min_size=1, max_size=5),
    quality=st.floats(0, 1),
    flags=st.lists(names, max_size=2).map(tuple),
)
batches = st.builds(
    p.Batch,
    device_id=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    batch_id=st.uuids().map(str),
    seq=st.integers(0, p.MAX_SEQ),
    sent_at=st.integers(1_600_000_000_000, 2_000_000_000_000),
    readings=st.lists(readings, min_size=1, max_size=8).map(tuple),
)


@given(batches)
def test_any_batch_round_trips_through_seal_and_open(batch: p.Batch) -> None:
    token = p.seal_batch(batch, DEVICE_KEY)
    opened = p.open_batch(token, topic_device=batch.device_id, public_key=p.public_key_raw(DEVICE_KEY))
    assert opened.to_json() == batch.to_json()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(batches, st.data())
def test_any_single_bit_flip_fails(batch: p.Batch, data: st.DataObject) -> None:
    token = bytearray(p.seal_batch(batch, DEVICE_KEY))
    bit = data.draw(st.integers(0, len(token) * 8 - 1))
    token[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(p.ProtocolError):
        p.open_batch(bytes(token), topic_device=batch.device_id, public_key=p.public_key_raw(DEVICE_KEY))


@settings(max_examples=500)
@given(st.binary(max_size=2048))
def test_decoders_raise_only_contract_errors_on_garbage(data: bytes) -> None:
    for decode in (p.decode_batch, p.decode_receipt, p.decode_status, p.decode_health, p.decode_config_report):
        with contextlib.suppress(p.ProtocolError):
            decode(data)
    with contextlib.suppress(p.ProtocolError):
        p.open_batch(data, topic_device="dev-1", public_key=p.public_key_raw(DEVICE_KEY))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | finite | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500)
@given(st.dictionaries(st.sampled_from(["v", "device_id", "batch_id", "seq", "sent_at", "readings", "x"]), json_values))
def test_batch_decoder_raises_only_contract_errors_on_json_shapes(obj: dict[str, object]) -> None:
    obj.setdefault("v", 1)
    with contextlib.suppress(p.ProtocolError):
        p.decode_batch(orjson.dumps(obj))


# ---- fast paths agree with the reference decoders -----------------------------------------------
# decode_batch and b64url_decode take a fast path for well-formed input and fall back to the plain
# reference code otherwise; the two must never disagree on what is accepted or what it decodes to.

from iot_protocol import messages as _messages  # noqa: E402

reading_shapes = st.fixed_dictionaries(
    {"ts": st.one_of(st.integers(-2, 2**41), st.floats(), st.text(max_size=3)),
     "sensor_type": st.one_of(names, st.just(""), st.integers(), st.text(min_size=60, max_size=70)),
     "values": st.one_of(st.dictionaries(st.text(max_size=66), finite | st.booleans() | st.text(max_size=2),
                                         max_size=3), st.lists(finite, max_size=2))},
    optional={"quality": st.one_of(finite, st.booleans(), st.none()),
              "flags": st.one_of(st.lists(st.text(max_size=66), max_size=2), st.text(max_size=2))},
)  # fmt: skip
batch_shapes = st.fixed_dictionaries(
    {"v": st.just(1),
     "device_id": st.one_of(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True), st.text(max_size=66),
                            st.just("dev-1\n"), st.integers()),
     "batch_id": st.one_of(st.text(max_size=130), st.integers()),
     "seq": st.one_of(st.integers(-2, 2**53), st.booleans(), st.floats()),
     "sent_at": st.one_of(st.integers(-2, 2**41), st.none()),
     "readings": st.one_of(st.lists(reading_shapes, max_size=4), st.just([]), st.none())},
)  # fmt: skip


@settings(max_examples=1000)
@given(batch_shapes)
def test_fast_batch_decoder_agrees_with_the_reference(obj: dict[str, object]) -> None:
    fast = _messages._fast_batch(obj)
    try:
        reference = _messages._decode_batch_obj(obj)
    except p.ProtocolError:
        assert fast is None, "the fast path accepted what the reference rejects"
        return
    if fast is not None:
        assert fast == reference and fast.to_json() == reference.to_json()


b64ish = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=. ", max_size=24)


@pytest.mark.parametrize("simd", [True, False], ids=["pybase64", "binascii"])
@settings(max_examples=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=b64ish | st.binary(max_size=24).map(lambda b: b.decode("latin-1")))
def test_fast_base64url_agrees_with_the_reference(monkeypatch: pytest.MonkeyPatch, simd: bool, text: str) -> None:
    """Both fast decoders (pybase64 where installed, as on the bridge; binascii otherwise) decide
    exactly as the reference, on base64url-like text and on arbitrary bytes."""
    if simd and jws._simd_b64decode is None:
        pytest.skip("pybase64 is not installed")
    if not simd:
        monkeypatch.setattr(jws, "_simd_b64decode", None)
    raw = text.encode("latin-1")
    try:
        expected: bytes | str = jws._b64url_decode_strict(raw)
    except p.DecodeError as exc:
        expected = str(exc)
    try:
        got: bytes | str = jws.b64url_decode(raw)
    except p.DecodeError as exc:
        got = str(exc)
    assert got == expected


@given(batches)
def test_fast_batch_decoder_takes_every_well_formed_batch(batch: p.Batch) -> None:
    """The property above must not hold vacuously: well-formed batches do take the fast path."""
    assert _messages._fast_batch(orjson.loads(p.encode(batch))) == batch


# ---- the contract's rules for any implementer (issue 13) ---------------------------------------


def test_ed25519_alg_vector_opens_to_the_same_batch() -> None:
    """RFC 9864's fully-specified algorithm name is accepted next to EdDSA."""
    token = vector("batch_token_ed25519").encode()
    assert orjson.loads(jws.b64url_decode(token.split(b".")[0]))["alg"] == "Ed25519"
    batch = p.open_batch(token, topic_device="greenhouse-01", public_key=p.public_key_raw(DEVICE_KEY))
    assert batch == example_batch()
    with pytest.raises(p.DecodeError) as err:
        p.jws.decode(
            jws.sign(b"{}", DEVICE_KEY, kid="x", typ="t").replace(b"eyJhbGciOiJFZERTQSI", b"eyJhbGciOiJFUzI1NiI")
        )
    assert err.value.reason == "bad_envelope"


def test_partial_batch_vector_and_its_receipt() -> None:
    payload = vector("partial_batch_payload").encode()
    token = vector("partial_batch_token").encode()
    h64, p64, s64 = token.split(b".")
    assert jws.b64url_decode(p64) == payload
    assert jws.b64url_encode(DEVICE_KEY.sign(h64 + b"." + p64)) == s64
    batch = p.open_batch(token, topic_device="greenhouse-01", public_key=p.public_key_raw(DEVICE_KEY))
    assert [r.index for r in batch.malformed] == [3] and len(batch.readings) == 5
    receipt = p.decode_receipt(vector("partial_receipt").encode())
    assert receipt.stored == (43,) and receipt.rejected == ()
    assert [(x.index, x.reason) for x in receipt.rejected_readings(43)] == [
        (1, "duplicate_timestamp"),
        (2, "out_of_range"),
        (3, "bad_reading"),
        (4, "bad_name"),
    ]
    assert p.encode(receipt).decode() == vector("partial_receipt")
    retry = p.decode_receipt(vector("retry_receipt").encode())
    assert retry.retry == (p.Retry(44, "rate_limited", 1500),) and not retry.stored
    assert p.encode(retry).decode() == vector("retry_receipt")
    unread = p.Receipt(unread=(p.Unread("ab" * 32, "bad_json"),))
    assert p.decode_receipt(p.encode(unread)) == unread


def _batch_json(**over: object) -> dict[str, object]:
    obj = orjson.loads(vector("batch_payload"))
    obj.update(over)
    return obj


@pytest.mark.parametrize(
    ("seq", "ok"), [(0, True), (2**31 - 1, True), (2**31, False), (2**63, False), (-1, False), (1.0, False)]
)
def test_seq_is_bounded_to_a_signed_32_bit_integer(seq: object, ok: bool) -> None:
    data = orjson.dumps(_batch_json(seq=seq))
    if ok:
        assert p.decode_batch(data).seq == seq
        assert p.peek_seq(data) == (seq, 2)
    else:
        with pytest.raises(p.DecodeError) as err:
            p.decode_batch(data)
        assert err.value.reason == "bad_schema"
        assert p.peek_seq(data) == (None, 2)


def test_a_malformed_reading_is_set_aside_not_the_batch() -> None:
    good = {"ts": 1764115200000, "sensor_type": "environment", "values": {"temperature": 21.5}}
    odd = [
        {**good, "ts": -1},
        {**good, "ts": 1.5},
        {**good, "ts": "now"},
        {**good, "quality": "high"},
        {**good, "quality": True},
        {**good, "values": {}},
        {**good, "values": {f"f{i}": 1.0 for i in range(65)}},
        {**good, "values": {"x" * 65: 1.0}},
        {**good, "sensor_type": ""},
        {**good, "flags": ["ok"] * 65},
        {**good, "flags": [""]},
        {**good, "ts": 2**53},
        "not an object",
    ]
    batch = p.decode_batch(orjson.dumps(_batch_json(readings=[good, *odd, good])))
    assert len(batch.readings) == 2
    assert [(x.index, x.reason) for x in batch.malformed] == [
        (1, "bad_reading"), (2, "bad_reading"), (3, "bad_reading"), (4, "bad_reading"), (5, "bad_reading"),
        (6, "bad_reading"), (7, "bad_reading"), (8, "bad_name"), (9, "bad_name"), (10, "bad_reading"),
        (11, "bad_reading"), (12, "bad_reading"), (13, "bad_reading"),
    ]  # fmt: skip
    assert list(p.payload_indexes(batch)) == [0, 14]


@pytest.mark.parametrize(
    ("name", "ok"),
    [("temperature", True), ("soil.moisture-2_b", True), ("x" * 64, True), ("2nd", False), ("_x", False),
     ("a b", False), ("a=b", False), ("a,b", False), ("a\nb", False), ("µ", False), ("time", False),
     ("location", False)],
)  # fmt: skip
def test_one_name_rule_for_sensor_types_and_fields(name: str, ok: bool) -> None:
    now = 1764115200000
    as_field = p.check_reading(p.Reading(now, "env", {name: 1.0}), 0, now_ms=now, max_skew_ms=0)
    assert (as_field is None) == ok and (ok or as_field.reason == "bad_name")  # type: ignore[union-attr]
    as_type = p.check_reading(p.Reading(now, name, {"x": 1.0}), 0, now_ms=now, max_skew_ms=0)
    assert (as_type is None) == (ok or name in p.RESERVED_FIELD_NAMES)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"v":1,"v":1,"stored":[]}',
        b'{"v":1,"stored":[],"rejected":[{"seq":1,"seq":2,"reason":"x"}]}',
        b'{"v":1,"stored":[],"rejected":[{"seq":1,"reason":"a:b","reason":"x"}]}',
    ],
)
def test_repeated_member_names_are_refused(raw: bytes) -> None:
    with pytest.raises(p.DecodeError) as err:
        p.decode_receipt(raw)
    assert err.value.reason == "bad_json"
    assert p.decode_receipt(b'{"v":1,"stored":[],"rejected":[{"seq":1,"reason":"a:b"}]}').rejected[0].reason == "a:b"
    dup = _batch_json()
    body = orjson.dumps(dup).replace(b'"temperature":21.5', b'"temperature":21.5,"temperature":99.0')
    with pytest.raises(p.DecodeError) as err:
        p.decode_batch(body)
    assert err.value.reason == "bad_json"
    header = jws.b64url_encode(b'{"alg":"EdDSA","alg":"none","kid":"greenhouse-01","typ":"edu.batch.v1"}')
    forged = header + b"." + vector("batch_token").encode().split(b".", 1)[1]
    with pytest.raises(p.DecodeError) as err:
        jws.decode(forged)
    assert err.value.reason == "bad_envelope"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace(b".", b"=.", 1),  # padding
        lambda t: t[:40] + b" " + t[40:],  # whitespace
        lambda t: t[:40] + b"\n" + t[40:],
        lambda t: t.replace(b"-", b"+").replace(b"_", b"/"),  # the standard alphabet
    ],
)
def test_base64url_is_strict(mangle: object) -> None:
    token = vector("batch_token").encode()
    bad = mangle(token)  # type: ignore[operator]
    assert bad != token
    with pytest.raises(p.DecodeError) as err:
        p.open_batch(bad, topic_device="greenhouse-01", public_key=p.public_key_raw(DEVICE_KEY))
    assert err.value.reason == "bad_envelope"


# The small-order points libsodium refuses (its blacklist), and what each is refused as.
_SMALL_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


def test_weak_public_keys_are_refused_each_with_its_reason() -> None:
    for raw in _SMALL_ORDER:
        with pytest.raises(p.ValidationError) as err:
            p.check_public_key(bytes.fromhex(raw))
        assert err.value.reason in ("key_small_order", "key_all_zero")
    for raw, reason in [
        ("00" * 32, "key_all_zero"),
        ("ed" + "ff" * 30 + "7f", "key_non_canonical"),
        ("01" + "00" * 30 + "80", "key_non_canonical"),  # x = 0 with the sign bit: a second encoding
        ("02" + "00" * 31, "key_not_on_curve"),
        ("00" * 31, "key_length"),
    ]:
        with pytest.raises(p.ValidationError) as err:
            p.check_public_key(bytes.fromhex(raw))
        assert err.value.reason == reason, raw
    for _ in range(20):
        p.check_public_key(p.public_key_raw(p.generate_private_key()))
    p.check_public_key(p.public_key_raw(DEVICE_KEY))


# ---- the agent's light key (PyNaCl) against cryptography's -------------------------------------------
@given(seed=st.binary(min_size=32, max_size=32), data=st.binary(max_size=300))
@settings(max_examples=50, deadline=None)
def test_the_light_key_signs_writes_and_reads_exactly_as_cryptography(seed: bytes, data: bytes) -> None:
    import tempfile

    from cryptography.hazmat.primitives import serialization

    from iot_protocol.keys import LightEd25519Key, load_signing_key

    ref = p.private_key_from_seed(seed)
    light = LightEd25519Key(seed)
    assert light.sign(data) == ref.sign(data)  # Ed25519 is deterministic: the same bytes
    assert p.public_key_raw(light) == p.public_key_raw(ref)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.pem"
        p.save_private_key(light, path)
        enc = serialization.Encoding.PEM
        pem = ref.private_bytes(enc, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        assert path.read_bytes() == pem  # what cryptography writes, byte for byte
        loaded = load_signing_key(path)
        assert isinstance(loaded, LightEd25519Key)
        assert loaded.private_bytes_raw() == seed
        assert p.load_private_key(path).private_bytes_raw() == seed


def test_load_signing_key_hands_other_pem_to_cryptography(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from iot_protocol.keys import LightEd25519Key, load_signing_key

    key = p.generate_private_key()
    path = tmp_path / "k.pem"
    # the same key in the traditional OpenSSH form: not the PKCS#8 enrollment writes, still readable
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    with pytest.raises(ValueError):  # load_pem_private_key does not read OpenSSH keys: one clear error
        load_signing_key(path)
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError):
        load_signing_key(path)
    p.save_private_key(key, path)
    assert isinstance(load_signing_key(path), LightEd25519Key)


def test_the_light_key_hands_out_cryptographys_public_key_when_asked() -> None:
    from iot_protocol.keys import LightEd25519Key

    seed = bytes(range(32))
    light, ref = LightEd25519Key(seed), p.private_key_from_seed(seed)
    light.public_key().verify(light.sign(b"m"), b"m")  # raises if it does not verify
    assert p.public_key_raw(ref) == light.public_bytes_raw()


# ---- verification that keeps the GIL (the bridge's) ---------------------------------------------------
def _verifies(token: jws.Jws, key: bytes) -> bool:
    try:
        jws.verify(token, key)
    except p.SignatureError:
        return False
    return True


@pytest.fixture
def gil_holding_verifier() -> Iterator[object]:
    saved = jws._verify_holding_gil
    assert jws.hold_gil_while_verifying(), "PyNaCl's libsodium exports crypto_sign_verify_detached"
    yield jws._verify_holding_gil
    jws._verify_holding_gil = saved


def test_gil_holding_verifier_takes_the_golden_vectors(gil_holding_verifier: object) -> None:
    key = p.private_key_from_seed(jws.b64url_decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"))
    assert jws.verify_token(vector("rfc8037_a4").encode(), p.public_key_raw(key)).payload
    token = p.seal_batch(example_batch(), DEVICE_KEY)
    assert p.open_batch(token, topic_device="greenhouse-01", public_key=p.public_key_raw(DEVICE_KEY))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.integers(0, 2**16), st.sampled_from(["signature", "message", "key", "none"]))
def test_gil_holding_verifier_agrees_with_pynacl(
    gil_holding_verifier: object, message: bytes, where: int, part: str
) -> None:
    """Differential: the same libsodium check as crypto_sign_open, so exactly the same tokens verify,
    for intact ones and for a flipped bit in the signature, the signed bytes or the key."""
    sig = bytearray(DEVICE_KEY.sign(message))
    msg = bytearray(message)
    key = bytearray(p.public_key_raw(DEVICE_KEY))
    target = {"signature": sig, "message": msg, "key": key, "none": None}[part]
    if target:
        target[where % len(target)] ^= 1 << (where % 8)
    token = jws.Jws({}, b"", bytes(msg), bytes(sig))
    held = _verifies(token, bytes(key))
    saved, jws._verify_holding_gil = jws._verify_holding_gil, None
    try:
        reference = _verifies(token, bytes(key))
    finally:
        jws._verify_holding_gil = saved
    assert held == reference == (part == "none" or not target)


def test_gil_holding_verifier_refuses_a_short_signature(gil_holding_verifier: object) -> None:
    token = jws.Jws({}, b"", b"m", DEVICE_KEY.sign(b"m")[:63])
    with pytest.raises(p.SignatureError, match="does not verify"):
        jws.verify(token, p.public_key_raw(DEVICE_KEY))
