"""Strict JSON for the contract: one meaning per document, so no object may repeat a member name.

orjson (like most parsers) keeps the last of two members with the same name, and another
implementation may keep the first: a signed payload must not mean two things. :func:`has_duplicates`
finds repeated names exactly. It is cheap for what the contract's messages look like: when the
document holds as many ``:`` bytes as the parser kept members, no member was dropped (a ``:`` inside a
string only adds to the count), so only documents with colons in their strings, unknown members or
real duplicates take the exact (slow) check.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["count_members", "has_duplicates"]


class _Duplicate(Exception):
    pass


def _no_repeats(pairs: list[tuple[str, Any]]) -> None:
    if len(pairs) > 1 and len({k for k, _ in pairs}) != len(pairs):
        raise _Duplicate
    return None


def count_members(obj: Any) -> int:
    """How many object members ``obj`` (a parsed document) holds, at every depth."""
    n = 0
    stack = [obj]
    pop, push = stack.pop, stack.extend
    while stack:
        o = pop()
        if type(o) is dict:
            n += len(o)
            push(o.values())
        elif type(o) is list:
            push(o)
    return n


def has_duplicates(data: bytes, members: int) -> bool:
    """True when some object in the JSON text ``data`` repeats a member name. ``members``: how many
    members the parser kept (:func:`count_members` of what it returned). ``data`` must already have
    parsed as JSON."""
    if data.count(b":") == members:
        return False
    try:
        json.loads(data, object_pairs_hook=_no_repeats)
    except _Duplicate:
        return True
    except (ValueError, RecursionError):  # deeper than Python's parser goes: cannot be shown unique
        return True
    return False
