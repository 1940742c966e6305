"""A tiny validation layer for settings dataclasses: field rules and docs in ``setting(...)``
metadata, types from the annotations, errors naming the dotted path and what was expected.

It exists so that the agent needs no pydantic (about 11 MB of RSS on the device). It understands
exactly the types the agent's settings use: ``str``, ``int``, ``float``, ``bool``, ``Path``,
``Literal[...]``, ``X | None``, ``tuple[X, ...]``, nested settings dataclasses, and a union of
dataclasses told apart by their ``type`` field (the ``[[sensors]]`` tables).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["Invalid", "Rule", "build", "describe", "format_default", "rule_of", "setting"]

_REQUIRED: Any = dataclasses.MISSING


@dataclass(frozen=True, slots=True)
class Rule:
    """What a setting accepts beyond its type: numeric bounds, length bounds, and its meaning."""

    description: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    min_len: int | None = None
    max_len: int | None = None


_NO_RULE = Rule()


class Invalid(Exception):
    """A value is wrong. ``path`` is the dotted path of the setting (``sensors[1].timeout_s``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or 'settings'}: {message}")
        self.path = path
        self.message = message


def setting(
    default: Any = _REQUIRED,
    description: str = "",
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    min_len: int | None = None,
    max_len: int | None = None,
) -> Any:
    """A dataclass field with its rule; leave ``default`` out for a required setting."""
    meta = {"rule": Rule(description, ge, gt, le, min_len, max_len)}
    return dataclasses.field(default=default, metadata=meta)


def rule_of(f: dataclasses.Field[Any]) -> Rule:
    rule = f.metadata.get("rule", _NO_RULE)
    return rule if isinstance(rule, Rule) else _NO_RULE


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _tag_of(cls: type) -> str | None:
    """The value of a dataclass's ``type: Literal["x"]`` field, if it has one."""
    tp = _hints(cls).get("type")
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Literal else None


def build(cls: type[Any], data: Any, path: str = "") -> Any:
    """Validate ``data`` (a dict, as from TOML) into the settings dataclass ``cls``.

    Raises:
        Invalid: the first bad, unknown or missing setting, with its path.
    """
    if not isinstance(data, dict):
        raise Invalid(path, f"must be a table of settings, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise Invalid(_join(path, str(key)), "unknown setting (docs/agent.md lists them)")
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        sub = _join(path, name)
        if name in data:
            values[name] = convert(hints[name], data[name], sub, rule_of(f))
        elif f.default is _REQUIRED and f.default_factory is _REQUIRED:
            raise Invalid(sub, "required")
    return cls(**values)


def convert(tp: Any, value: Any, path: str, rule: Rule = _NO_RULE) -> Any:
    """``value`` as type ``tp`` under ``rule``, or :class:`Invalid` saying what was expected."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return None
        if len(options) == 1:
            return convert(options[0], value, path, rule)
        if all(dataclasses.is_dataclass(a) for a in options):
            return _tagged(options, value, path)
        raise TypeError(f"unsupported union {tp!r} at {path}")  # a bug in the schema, not the input
    if origin is Literal:
        if value not in args:
            raise Invalid(path, f"must be one of {', '.join(repr(a) for a in args)}, got {_show(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise Invalid(path, f"must be a list, got {_show(value)}")
        if rule.min_len is not None and len(value) < rule.min_len:
            raise Invalid(path, f"must have at least {rule.min_len} item{'s' if rule.min_len > 1 else ''}")
        return tuple(convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise Invalid(path, f"must be true or false, got {_show(value)}")
        return value
    if tp in (int, float):
        return _number(tp, value, path, rule)
    if tp is str:
        return _string(value, path, rule)
    if tp is Path:
        if isinstance(value, Path):
            return value
        if not isinstance(value, str) or not value:
            raise Invalid(path, f"must be a file path (a non-empty string), got {_show(value)}")
        return Path(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)  # type: ignore[arg-type]
    raise TypeError(f"unsupported type {tp!r} at {path}")


def _tagged(options: list[Any], value: Any, path: str) -> Any:
    kinds = {_tag_of(c): c for c in options}
    if not isinstance(value, dict):
        raise Invalid(path, f"must be a table with a type, got {_show(value)}")
    tag = value.get("type")
    if tag not in kinds:
        use = ", ".join(str(k) for k in kinds)
        what = "missing" if tag is None else f"unknown type {_show(tag)}"
        raise Invalid(_join(path, "type"), f"{what}: use one of {use}")
    return build(kinds[tag], value, path)


def _expected(kind: str, rule: Rule) -> str:
    bounds = []
    if rule.ge is not None:
        bounds.append(f">= {rule.ge:g}")
    if rule.gt is not None:
        bounds.append(f"> {rule.gt:g}")
    if rule.le is not None:
        bounds.append(f"<= {rule.le:g}")
    return " ".join([kind, " and ".join(bounds)]).strip()


def _number(tp: type, value: Any, path: str, rule: Rule) -> int | float:
    kind = "an integer" if tp is int else "a number"
    expected = _expected(kind, rule)
    raw = value
    if isinstance(value, str):  # environment variables (and quoted TOML numbers) arrive as strings
        try:
            value = _parse_int(value) if tp is int else float(value)
        except ValueError:
            raise Invalid(path, f"must be {expected}, got {_show(raw)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(path, f"must be {expected}, got {_show(raw)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(path, f"must be {expected}, got {_show(raw)}")
    if tp is int and isinstance(value, float) and not value.is_integer():
        raise Invalid(path, f"must be {expected}, got {_show(raw)}")
    number: int | float = int(value) if tp is int else float(value)
    if (
        (rule.ge is not None and number < rule.ge)
        or (rule.gt is not None and number <= rule.gt)
        or (rule.le is not None and number > rule.le)
    ):
        raise Invalid(path, f"must be {expected}, got {_show(raw)}")
    return number


def _parse_int(text: str) -> int:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return int(text, 0)  # 0x76, as an I2C address is usually written


def _string(value: Any, path: str, rule: Rule) -> str:
    if not isinstance(value, str):
        raise Invalid(path, f"must be a string, got {_show(value)}")
    if (rule.min_len is not None and len(value) < rule.min_len) or (
        rule.max_len is not None and len(value) > rule.max_len
    ):
        lo, hi = rule.min_len or 0, rule.max_len
        span = f"{lo} to {hi}" if hi is not None else f"at least {lo}"
        raise Invalid(path, f"must be a string of {span} characters, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return f"a {'table' if isinstance(value, dict) else 'list'}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def format_default(f: dataclasses.Field[Any]) -> str:
    """The default of a field as it would be written in TOML (``required`` / ``unset`` if none)."""
    if f.default is _REQUIRED:
        return "required"
    return _toml(f.default)


def _toml(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, Path)):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def describe(tp: Any, rule: Rule) -> str:
    """What a setting of type ``tp`` under ``rule`` accepts, in a few words (for the docs)."""
    if _is_union(tp):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return describe(options[0], rule) if len(options) == 1 else "table"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(f'"{a}"' for a in args)
    if origin is tuple:
        inner = describe(args[0], _NO_RULE)
        return f"list of {inner}s" + (f" (at least {rule.min_len})" if rule.min_len else "")
    if tp is bool:
        return "true / false"
    if tp in (int, float):
        return _expected("integer" if tp is int else "number", rule)
    if tp is str:
        if rule.min_len or rule.max_len:
            return f"string, {rule.min_len or 0}-{rule.max_len} chars" if rule.max_len else "non-empty string"
        return "string"
    if tp is Path:
        return "path"
    return getattr(tp, "__name__", str(tp))
