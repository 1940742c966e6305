"""InfluxDB line protocol for :class:`~cloud_core.tsdb.base.Point`: one bytes body per write.

Measurement ``sensor_readings``; tags ``device_id``, ``location``, ``sensor_type`` (sorted by key,
as InfluxDB recommends; an empty tag value is omitted, since InfluxDB does not store one); float
fields; integer millisecond timestamps (write with ``precision=ms``). Escaping follows the spec:
in tag keys, tag values and field keys, backslash-escape ``,`` ``=`` and space; newlines cannot be
escaped and are refused.

Hand-written for speed (about 1 us per point): the escaped tag-set prefix of each series and each
escaped field key are cached, and the body is built as one list of strings joined and encoded once.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import MEASUREMENT, Point, StoreRejected

__all__ = ["encode_points", "escape_key"]

_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_MAX_CACHE = 100_000

_series_cache: dict[tuple[str, str, str], str] = {}
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
