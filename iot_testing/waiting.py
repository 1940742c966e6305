"""Waiting in tests: poll a condition with a deadline instead of sleeping and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["wait_for"]

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], what: str = "", timeout: float = 10.0, *, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy and return that.

    Raises:
        AssertionError: after ``timeout`` seconds, naming ``what`` and the last value seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            last: Any = value
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}: last {last!r}")
        time.sleep(interval)
