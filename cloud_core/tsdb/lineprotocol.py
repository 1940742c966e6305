"""InfluxDB line protocol for :class:`~cloud_core.tsdb.base.Point`: one bytes body per write.

Measurement ``sensor_readings``; tags ``device_id``, ``location``, ``sensor_type`` (sorted by key,
as InfluxDB recommends; an empty tag value is omitted, since InfluxDB does not store one); float
fields; integer millisecond timestamps (write with ``precision=ms``). Escaping follows the spec:
in tag keys, tag values and field keys, backslash-escape ``,`` ``=`` and space; newlines cannot be
escaped and are refused.

Hand-written for speed (about 1 us per point): the escaped tag-set prefix of each series and each
escaped field key are cached, and the body is built as one list of strings joined and encoded once.

:func:`encode_points_fast` (what InfluxStore writes with) writes the same lines faster: all field sets
are serialized by one ``orjson.dumps`` call and turned into line protocol by a few whole-body byte
operations. Only the spelling of numbers may differ from :func:`encode_points` (orjson's shortest
form: ``40`` for the integer 40, ``0.00001``, ``1e+20``; the same float is stored). Whenever the batch holds
anything it cannot prove plain (a field name needing escaping, a non-number, a non-finite value...)
it returns :func:`encode_points`'s body instead, which raises the same errors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import orjson

from .base import MEASUREMENT, Point, StoreRejected

__all__ = ["encode_points", "encode_points_fast", "escape_key"]

_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_MAX_CACHE = 100_000

_series_cache: dict[tuple[str, str, str], str] = {}
_series_bytes: dict[tuple[str, str, str], bytes] = {}
_field_cache: dict[str, str] = {}


def escape_key(text: str) -> str:
    """Escape a tag key, tag value or field key. Raises StoreRejected for a newline."""
    if "\n" in text or "\r" in text:
        raise StoreRejected(f"line protocol cannot carry a newline in a tag or field name: {text!r}")
    if text.endswith("\\"):
        # A trailing backslash would escape the separator that follows it.
        raise StoreRejected(f"a tag or field name cannot end with a backslash: {text!r}")
    return text.translate(_ESCAPES)


def _series(device_id: str, sensor_type: str, location: str) -> str:
    key = (device_id, sensor_type, location)
    prefix = _series_cache.get(key)
    if prefix is None:
        parts = [MEASUREMENT]
        for name, value in (("device_id", device_id), ("location", location), ("sensor_type", sensor_type)):
            if value:
                parts.append(f"{name}={escape_key(value)}")
        prefix = ",".join(parts) + " "
        if len(_series_cache) >= _MAX_CACHE:
            _series_cache.clear()
        _series_cache[key] = prefix
    return prefix


def _field(name: str) -> str:
    escaped = _field_cache.get(name)
    if escaped is None:
        if not name:
            raise StoreRejected("empty field name")
        escaped = escape_key(name) + "="
        if len(_field_cache) >= _MAX_CACHE:
            _field_cache.clear()
        _field_cache[name] = escaped
    return escaped


def encode_points(points: Sequence[Point]) -> bytes:
    """The line-protocol body for ``points`` (millisecond precision), newline-terminated lines.

    Values are written as floats (``repr`` is the shortest exact form, so they round-trip exactly).
    Raises StoreRejected for a point without fields, a non-finite value or an unescapable name.
    """
    out: list[str] = []
    append = out.append
    series_cache = _series_cache
    field_cache = _field_cache
    for i, p in enumerate(points):
        prefix = series_cache.get((p.device_id, p.sensor_type, p.location))
        if prefix is None:
            prefix = _series(p.device_id, p.sensor_type, p.location)
        parts: list[str] = []
        for name, value in p.fields.items():
            key = field_cache.get(name)
            if key is None:
                key = _field(name)
            if type(value) is not float:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise StoreRejected(
                        f"point {i} ({p.device_id}): field {name!r} is not a number: {value!r}"
                    )
                value = float(value)
            if value - value != 0.0:  # NaN or infinite: InfluxDB cannot store them
                raise StoreRejected(f"point {i} ({p.device_id}): field {name!r} is not finite: {value!r}")
            parts.append(key + repr(value))
        if not parts:
            raise StoreRejected(f"point {i} ({p.device_id}) has no fields")
        append(f"{prefix}{','.join(parts)} {p.ts_ms:d}\n")
    return "".join(out).encode()


_PLAIN = bytes(
    sorted({*range(0x80, 0x100), *b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.+"})
)


# In orjson's JSON of field sets that passed the shape check, a value that is not a number (null for NaN
# or infinities, true, false) starts with a letter, and an empty field name is "". One regex pass finds
# either (four `in` scans took twice as long; bytes searches run at about 1 GB/s here).
_NOT_A_NUMBER = re.compile(rb'":[^-0-9]|""')
_COLON_TO_EQUALS = bytes.maketrans(b":", b"=")


def encode_points_fast(points: Sequence[Point]) -> bytes:
    """The same lines as :func:`encode_points` (up to the spelling of numbers), about 2x faster.

    Falls back to :func:`encode_points` unless orjson's JSON of the field sets passes checks that
    together prove every field name is plain (no JSON escape, quote, space, ``=``, ``,``, brace or
    empty name) and every value a finite JSON number; the checks may refuse a plain batch (then the
    reference encoder writes it), never accept one the reference would write differently."""
    n = len(points)
    if not n:
        return b""
    try:
        j = orjson.dumps([p.fields for p in points])
    except TypeError:  # a non-str key, an int beyond 64 bits, an unknown type: the reference decides
        return encode_points(points)
    # What is left of j without letters, digits and "_-.+" (and UTF-8 bytes) must be exactly the
    # structure of a list of flat objects of plain names: [{"":,"":},{"":}]. Anything else (a space,
    # "=", ",", a JSON escape, a string/list/object value, an empty object) leaves something else.
    shape = j.translate(None, _PLAIN).replace(b',"":', b"")
    if shape != b"[" + b'{"":},' * (n - 1) + b'{"":}]':
        return encode_points(points)
    if _NOT_A_NUMBER.search(j) is not None:
        return encode_points(points)
    # j = [{"k":v,"k2":v2},{"k":v}] -> per point: k=v,k2=v2. No name holds a quote or a colon here (the
    # shape check), so deleting every quote and turning every colon into "=" is exact: one C pass.
    fields = j.translate(_COLON_TO_EQUALS, b'"')[2:-2].split(b"},{")
    out: list[bytes] = []
    append = out.append
    cache = _series_bytes
    for p, f in zip(points, fields, strict=True):
        key = (p.device_id, p.sensor_type, p.location)
        prefix = cache.get(key)
        if prefix is None:
            if len(cache) >= _MAX_CACHE:
                cache.clear()
            prefix = cache[key] = _series(*key).encode()
        append(b"%b%b %d\n" % (prefix, f, p.ts_ms))
    return b"".join(out)
