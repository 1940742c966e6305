"""Argument types the benchmarks share: a count or a duration that would make a phase empty or
meaningless is refused by argparse, naming the flag, before any server starts (``--single -5`` ran an
empty phase and printed a ratio of 0.0 as if measured; ``sim_scale.py --devices 0`` ended in a
traceback)."""

from __future__ import annotations

import argparse


def count(text: str) -> int:
    """An integer of at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def seconds(text: str) -> float:
    """A number of seconds more than 0."""
    s = _seconds(text)
    if not s > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return s


def pause(text: str) -> float:
    """A number of seconds of at least 0 (a pause that may be skipped)."""
    s = _seconds(text)
    if not s >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 seconds or more, not {text}")
    return s


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
