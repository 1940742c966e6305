"""Waves: which devices go in which wave of a rollout. Pure functions.

The devices are ordered by SHA-256 of ``"<seed>:<device id>"`` (the seed is the rollout's), so the
order is deterministic for a rollout yet unrelated to names or registration order; wave ``k`` takes
the devices up to ``ceil(percent_k x N)`` in that order. Wave 0 is the canary. The assignment is
stored with each device when the rollout is created, so a device's wave never changes afterwards.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

from .errors import RolloutInvalid

__all__ = ["assign", "order", "parse_percent", "plan_waves"]


def parse_percent(value: Any, what: str = "percent") -> float:
    """``"5%"``, ``"5"`` or ``5`` -> 5.0; must be > 0 and <= 100. Raises RolloutInvalid."""
    text = value.strip().removesuffix("%") if isinstance(value, str) else value
    try:
        number = float(text)
    except (TypeError, ValueError):
        raise RolloutInvalid(f"{what}: {value!r} is not a percentage like 5% or 25") from None
    if isinstance(value, bool) or not 0 < number <= 100 or not math.isfinite(number):
        raise RolloutInvalid(f"{what}: {value!r} must be more than 0% and at most 100%")
    return number


def plan_waves(canary: Any, waves: Sequence[Any]) -> list[float]:
    """The cumulative share of devices updated after each wave: ``[canary, *waves]``, strictly
    increasing and ending at 100. Raises RolloutInvalid naming what is wrong."""
    plan = [parse_percent(canary, "canary")]
    for i, w in enumerate(waves):
        plan.append(parse_percent(w, f"waves[{i}]"))
    for i in range(1, len(plan)):
        if plan[i] <= plan[i - 1]:
            raise RolloutInvalid(
                f"waves must grow: wave {i} ({plan[i]:g}%) is not more than the one before ({plan[i - 1]:g}%)"
            )
    if plan[-1] != 100:
        raise RolloutInvalid(f"the last wave must reach 100% (it reaches {plan[-1]:g}%): add 100% to --waves")
    if len(plan) > 20:
        raise RolloutInvalid("at most 20 waves")
    return plan


def order(seed: str, device_ids: Sequence[str]) -> list[str]:
    """``device_ids`` in the rollout's deterministic order."""
    return sorted(device_ids, key=lambda d: hashlib.sha256(f"{seed}:{d}".encode()).digest())


def assign(seed: str, device_ids: Sequence[str], plan: Sequence[float]) -> dict[str, tuple[int, int]]:
    """device id -> (wave, rank). A wave may be empty when there are few devices; the canary never is."""
    ordered = order(seed, device_ids)
    n = len(ordered)
    ends = [max(1, math.ceil(p * n / 100 - 1e-9)) for p in plan]
    out: dict[str, tuple[int, int]] = {}
    wave = 0
    for rank, device_id in enumerate(ordered):
        while rank >= ends[wave]:
            wave += 1
        out[device_id] = (wave, rank)
    return out
